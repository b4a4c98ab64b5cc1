"""ONNX Runtime backend. The only module that imports onnxruntime (lazily, on first load).

Models keep their int8 weights in an external-data file next to the ``.onnx`` graph; ONNX
Runtime maps such files into memory instead of copying them, so a cold load costs
milliseconds and the weights stay shared, file-backed pages. ``.ort`` files are loaded
memory-mapped too (``session.use_memory_mapped_ort_model``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import InferenceError, ModelLoadError

_ort = None
_import_lock = threading.Lock()


def _runtime():
    global _ort
    with _import_lock:
        if _ort is None:
            try:
                import onnxruntime
            except ImportError as exc:
                raise ModelLoadError("onnxruntime is not installed (pip install onnxruntime)") from exc
            onnxruntime.set_default_logger_severity(3)
            _ort = onnxruntime
    return _ort


class OrtSession:
    """One ONNX Runtime inference session; ``run`` is thread-safe (ORT sessions are)."""

    def __init__(self, path: Path, output: str, threads: int) -> None:
        ort = _runtime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        if path.suffix == ".ort":
            opts.add_session_config_entry("session.load_model_format", "ORT")
            opts.add_session_config_entry("session.use_memory_mapped_ort_model", "1")
            opts.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeError types
            raise ModelLoadError(f"onnxruntime refused {path.name}: {str(exc).strip()[:300]}") from exc
        names = [o.name for o in self._sess.get_outputs()]
        if output not in names:
            raise ModelLoadError(f"{path.name}: no output named {output!r} (outputs: {names})")
        self._output = [output]
        self.inputs = {i.name: i for i in self._sess.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self._sess.run(self._output, feeds)[0]
        except Exception as exc:
            raise InferenceError(f"onnxruntime run failed: {str(exc).strip()[:300]}") from exc

    def close(self) -> None:
        self._sess = None


def open(path: Path, *, output: str = "logits", threads: int = 1) -> OrtSession:  # noqa: A001
    """Load an ONNX (or ORT-format) model from ``path``; raises ModelLoadError."""
    return OrtSession(path, output, threads)

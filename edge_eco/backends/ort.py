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
# Loading modes (tools/bench_backends.py measures them per model size; README "Figures"):
#   plain            the .onnx as it is (embedded or external-data weights), prepacking on
#   external-noprepack  external-data weights with session.disable_prepacking=1: weights stay
#                    shared file pages, but int8 MatMul runs slower
#   ort-mmap         an .ort file mapped with session.use_memory_mapped_ort_model=1
# Never: model bytes + use_ort_model_bytes_directly + use_ort_model_bytes_for_initializers (a wrong
# prediction on one model and a segfault on another, MEASURED.md).
MODES = ("plain", "external-noprepack", "ort-mmap")
_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
           "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(double)": np.float64}


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

    def __init__(self, path: Path, output: str, threads: int, optimize: bool, mode: str | None = None) -> None:
        ort = _runtime()
        mode = mode or ("ort-mmap" if path.suffix == ".ort" else "plain")
        if mode not in MODES:
            raise ModelLoadError(f"unknown ONNX Runtime loading mode {mode!r} (known: {list(MODES)})")
        if (mode == "ort-mmap") != (path.suffix == ".ort"):
            raise ModelLoadError(f"{path.name}: mode {mode!r} needs {'an .ort' if mode == 'ort-mmap' else 'an .onnx'} file")
        opts = ort.SessionOptions()
        if not optimize:
            # Graphs written by tools/ are already minimal: skipping the optimizer makes a cold
            # load of a specialist ~0.4 ms instead of ~2.3 ms (measured), same outputs.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_mem_pattern = False
        # No per-session CPU arena: with it, 1,000 load/unload cycles of a specialist left a one-off
        # ~0.8 MiB RSS step near cycle 900 (bare onnxruntime 1.32 too); without it +136 KiB over
        # 2,100 cycles, and run p50 unchanged (specialist 8.1-8.5 us, MiniLM 5.0-5.8 ms, both ways).
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        if mode == "external-noprepack":
            opts.add_session_config_entry("session.disable_prepacking", "1")
        if mode == "ort-mmap":
            opts.add_session_config_entry("session.load_model_format", "ORT")
            opts.add_session_config_entry("session.use_memory_mapped_ort_model", "1")
            opts.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in self._sess.get_outputs()]
            inputs = [(i.name, i.type, list(i.shape)) for i in self._sess.get_inputs()]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeError types
            raise ModelLoadError(f"onnxruntime refused {path.name}: {str(exc).strip()[:300]}") from exc
        if output not in names:
            raise ModelLoadError(f"{path.name}: no output named {output!r} (outputs: {names})")
        self._output = [output]
        self._contract = [(name, _DTYPES.get(kind), shape) for name, kind, shape in inputs]

    def warm(self) -> None:
        """Run once on zeros of the declared input shapes (symbolic dims as 1), so that the pages
        and buffers a first request touches are resident when the footprint is measured."""
        feeds = {name: np.zeros([d if isinstance(d, int) else 1 for d in shape], dtype or np.float32)
                 for name, dtype, shape in self._contract}
        self.run(feeds)

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse feeds that do not fit the graph's declared inputs (names, dtypes, ranks, and
        symbolic dims such as ``nnz`` that must agree across inputs): ONNX broadcasting would
        otherwise turn some mismatches into silent wrong answers."""
        dims: dict[str, int] = {}
        for name, dtype, shape in self._contract:
            a = feeds.get(name)
            if a is None:
                raise InferenceError(f"missing input {name!r} (model inputs: {[c[0] for c in self._contract]})")
            if dtype is not None and a.dtype != dtype:
                raise InferenceError(f"input {name!r}: dtype {a.dtype} where the model expects {np.dtype(dtype)}")
            if a.ndim != len(shape):
                raise InferenceError(f"input {name!r}: shape {a.shape} where the model expects rank {len(shape)}")
            for size, want in zip(a.shape, shape):
                if isinstance(want, int) and size != want:
                    raise InferenceError(f"input {name!r}: shape {a.shape} where the model expects {shape}")
                if isinstance(want, str) and dims.setdefault(want, size) != size:
                    raise InferenceError(f"input {name!r}: dimension {want!r} is {size} here but "
                                         f"{dims[want]} in another input")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._check(feeds)
        try:
            return self._sess.run(self._output, feeds)[0]
        except Exception as exc:
            raise InferenceError(f"onnxruntime run failed: {str(exc).strip()[:300]}") from exc

    def close(self) -> None:
        self._sess = None


def open(path: Path, *, output: str = "logits", threads: int = 1, optimize: bool = True,  # noqa: A001
         mode: str | None = None) -> OrtSession:
    """Load an ONNX (or ORT-format) model from ``path``.

    Args:
        mode: one of MODES; None picks ``ort-mmap`` for .ort files and ``plain`` otherwise.

    Raises:
        ModelLoadError: the runtime refused the file, or the mode does not fit it.
    """
    return OrtSession(path, output, threads, optimize, mode)

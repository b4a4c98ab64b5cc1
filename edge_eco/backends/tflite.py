"""LiteRT (TFLite) backend via ``ai-edge-litert``. The only module that imports it (lazily).

``Interpreter(model_path=...)`` memory-maps the file, so the flatbuffer (weights included) is
shared, file-backed pages. Before the path reaches the interpreter the file's structure is
checked here (identifier, root table, every vector and buffer inside the file, every index in
range): LiteRT trusts the flatbuffer and a truncated file can crash the process.

An interpreter is not thread-safe; a session serialises ``run`` with a lock (measured: an
uncontended lock adds ~0.1 us to a ~5 us run, where one interpreter per thread would multiply
the weights XNNPACK packs into private memory).

Int8 models take float inputs: the session quantizes them with the input tensor's scale and
zero point and returns dequantized float logits, so callers see the same contract as ORT.
"""

from __future__ import annotations

import mmap
import struct
import threading
from pathlib import Path

import numpy as np

from ..errors import InferenceError, ModelLoadError
from . import brief, check_feed_names, check_threads

_lit = None
_import_lock = threading.Lock()
# The operator inputs that may be -1 (no tensor), by builtin code: the bias of the layers with
# weights. LiteRT's kernels read the others without checking, and a -1 there is a segfault at
# load (measured: FULLY_CONNECTED's weights, every input of CONCATENATION and SPLIT, the first or
# second input of SLICE, BATCH_MATMUL and the SPACE/BATCH_ND ops).
_OPTIONAL_INPUTS = {9: {2}, 3: {2}, 4: {2}, 67: {3}}  # FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV
# Measured in tools/bench_backends.py (README figures): the default XNNPACK delegate packs the
# weights into private memory but runs int8 layers faster; BUILTIN_WITHOUT_DEFAULT_DELEGATES
# keeps them in the mapped file. optimize=True (the default) picks XNNPACK.


def _runtime():
    global _lit
    with _import_lock:
        if _lit is None:
            try:
                from ai_edge_litert import interpreter
            except ImportError as exc:
                raise ModelLoadError("ai-edge-litert is not installed (pip install 'edge_eco[litert]')") from exc
            _lit = interpreter
    return _lit


def validate_tflite(path: Path) -> None:
    """Check that ``path`` is a structurally sound .tflite flatbuffer before LiteRT reads it.

    Raises:
        ModelLoadError: not a TFLite file, truncated, or an offset/index out of range.
    """
    try:
        with Path(path).open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _walk(buf, len(buf), path.name)
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise ModelLoadError(f"{path.name}: cannot read as a TFLite file ({exc})") from exc


def _walk(buf, size: int, name: str) -> None:
    from ai_edge_litert import schema_py_generated as s

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{name}: not a valid .tflite file ({why}); truncated or corrupt?")

    if size < 16 or buf[4:8] != b"TFL3":
        raise bad("no TFL3 identifier")
    try:
        root = struct.unpack_from("<I", buf, 0)[0]
        if root + 4 > size:
            raise bad("root table beyond the end of the file")
        model = s.Model.GetRootAs(buf, 0)

        def vec_ok(table, field_offset: int, elem_bytes: int) -> None:
            o = table._tab.Offset(field_offset)
            if o:
                start = table._tab.Vector(o)
                n = table._tab.VectorLen(o)
                if start + n * elem_bytes > size:
                    raise bad("a vector runs past the end of the file")

        vec_ok(model, 12, 4)  # buffers
        n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
        for i in range(n_buffers):
            b = model.Buffers(i)
            vec_ok(b, 4, 1)
            if b.Offset() > 1 and b.Offset() + b.Size() > size:
                raise bad(f"buffer {i} lies outside the file")
        if model.SubgraphsLength() < 1:
            raise bad("no subgraph")
        for g in range(model.SubgraphsLength()):
            sg = model.Subgraphs(g)
            n_t = sg.TensorsLength()
            for i in range(n_t):
                t = sg.Tensors(i)
                vec_ok(t, 4, 4)
                if not 0 <= t.Buffer() < max(n_buffers, 1):
                    raise bad(f"tensor {i} names buffer {t.Buffer()} of {n_buffers}")
            for i in range(sg.OperatorsLength()):
                op = sg.Operators(i)
                vec_ok(op, 6, 4)
                vec_ok(op, 8, 4)
                if not 0 <= op.OpcodeIndex() < n_codes:
                    raise bad(f"operator {i} names opcode {op.OpcodeIndex()} of {n_codes}")
                idx = list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()) if op.InputsLength() else []
                if any(not -1 <= j < n_t for j in idx):
                    raise bad(f"operator {i} names a tensor out of range")
                oc = model.OperatorCodes(op.OpcodeIndex())
                optional = _OPTIONAL_INPUTS.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), set())
                missing = [k for k in range(op.InputsLength()) if op.Inputs(k) == -1 and k not in optional]
                if missing or -1 in idx[op.InputsLength():]:
                    raise bad(f"operator {i} has no tensor at input {missing[0]}" if missing
                              else f"operator {i} has no tensor at an output")
            ios = (list(sg.InputsAsNumpy()) if sg.InputsLength() else []) + \
                  (list(sg.OutputsAsNumpy()) if sg.OutputsLength() else [])
            if any(not 0 <= j < n_t for j in ios):
                raise bad("a subgraph input/output names a tensor out of range")
    except ModelLoadError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from exc


class TfliteSession:
    """One LiteRT interpreter over a memory-mapped .tflite file; ``run`` is thread-safe."""

    def __init__(self, path: Path, output: str, threads: int, optimize: bool) -> None:
        lit = _runtime()
        validate_tflite(path)
        resolver = lit.OpResolverType.AUTO if optimize else lit.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:  # any exception from the interpreter (a corrupt name raises UnicodeDecodeError)
            self._it = lit.Interpreter(model_path=str(path), num_threads=threads,
                                       experimental_op_resolver_type=resolver)
            self._it.allocate_tensors()
            outs = {d["name"]: d for d in self._it.get_output_details()}
            self._inputs = self._it.get_input_details()
            self._specs = [self._prepare(d) for d in self._inputs]
            self._names = [spec[1] for spec in self._specs]
        except Exception as exc:  # noqa: BLE001 - the runtime's errors are not a documented set
            raise ModelLoadError(f"LiteRT refused {path.name}: {type(exc).__name__}: {brief(exc)}") from exc
        self._lock = threading.Lock()
        if output not in outs:
            raise ModelLoadError(f"{path.name}: no output named {output!r} (outputs: {sorted(outs)})")
        out = outs[output]
        self._out_index = out["index"]
        scale, zero = out["quantization"]
        quant = out["dtype"] in (np.int8, np.uint8) and scale
        self._out_scale, self._out_zero = (np.float32(scale), np.float32(zero)) if quant else (None, None)

    def _prepare(self, d: dict) -> tuple:
        """Per input, computed once: index, name, shape, and the float -> int quantization."""
        shape = tuple(int(x) for x in d["shape"])
        quant = d["dtype"] in (np.int8, np.uint8)
        scale, zero = d["quantization"] if quant else (1.0, 0)
        info = np.iinfo(d["dtype"]) if quant else None
        return (d["index"], d["name"], shape, int(np.prod(shape)), d["dtype"], quant,
                np.float32(1.0 / scale) if quant else None, zero, info.min if quant else 0, info.max if quant else 0)

    def _quantized(self, a: np.ndarray, spec: tuple) -> np.ndarray:
        _, name, shape, size, dtype, quant, inv_scale, zero, lo, hi = spec
        if a.size != size or (a.ndim != len(shape) and a.shape != shape[1:]):
            raise InferenceError(f"input {name!r}: shape {a.shape} where the model expects {list(shape)}")
        if not quant:
            if a.dtype != dtype:
                raise InferenceError(f"input {name!r}: dtype {a.dtype} where the model expects {np.dtype(dtype)}")
            return a.reshape(shape)
        if a.dtype != np.float32:
            raise InferenceError(f"input {name!r}: dtype {a.dtype} where the model expects float32")
        q = np.rint(a * inv_scale)
        q += zero
        if not np.isfinite(q).all():  # NaN/inf inputs (checked after scaling: one pass fewer)
            raise InferenceError(f"input {name!r}: holds NaN or infinity")
        return np.clip(q, lo, hi, out=q).astype(dtype).reshape(shape)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        check_feed_names(feeds, self._names)
        prepared = []
        for spec in self._specs:
            a = feeds.get(spec[1])
            if a is None:
                raise InferenceError(f"missing input {spec[1]!r} (model inputs: {[x[1] for x in self._specs]})")
            prepared.append((spec[0], self._quantized(np.asarray(a), spec)))
        with self._lock:
            if self._it is None:
                raise InferenceError("the model was closed")
            try:
                for index, a in prepared:
                    self._it.set_tensor(index, a)
                self._it.invoke()
                out = self._it.get_tensor(self._out_index)
            except Exception as exc:  # noqa: BLE001 - the runtime's errors are not a documented set
                raise InferenceError(f"LiteRT run failed: {type(exc).__name__}: {brief(exc)}") from exc
        if self._out_scale is not None:
            return (out.reshape(-1).astype(np.float32) - self._out_zero) * self._out_scale
        return np.array(out, dtype=np.float32).reshape(-1)

    def warm(self) -> None:
        """Run once on zeros, so that the pages a first request touches are resident."""
        self.run({d["name"]: np.zeros(d["shape"], np.float32 if d["dtype"] in (np.int8, np.uint8) else d["dtype"])
                  for d in self._inputs})

    def close(self) -> None:
        with self._lock:
            self._it = None


def open(path: Path, *, output: str = "logits", threads: int = 1, optimize: bool = True,  # noqa: A001
         max_run_ms: float | None = None) -> TfliteSession:
    """Load a .tflite model from ``path`` (memory-mapped); raises ModelLoadError. ``max_run_ms`` is
    accepted and not enforced: LiteRT's Python interpreter offers no way to stop a run (a
    high-risk model runs in a sandboxed worker, which is killed past its run timeout)."""
    check_threads(threads)
    return TfliteSession(path, output, threads, optimize)

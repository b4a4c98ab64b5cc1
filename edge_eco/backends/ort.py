"""ONNX Runtime backend. The only module that imports onnxruntime (lazily, on first load; its
C API binding, ``_ort_capi``, loads the wheel's shared library instead and is the default).

Models keep their int8 weights in an external-data file next to the ``.onnx`` graph; ONNX
Runtime maps such files into memory instead of copying them, so a cold load costs
milliseconds and the weights stay shared, file-backed pages. ``.ort`` files are loaded
memory-mapped too (``session.use_memory_mapped_ort_model``).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from ..errors import InferenceError, ModelLoadError
from . import brief, check_feed_names, check_threads, run_deadline
from .runlimit import LimitedRuns

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


def _config(path: Path, mode: str | None) -> tuple[str, dict[str, str]]:
    """The loading mode for ``path`` and the session config entries it sets."""
    mode = mode or ("ort-mmap" if path.suffix == ".ort" else "plain")
    if mode not in MODES:
        raise ModelLoadError(f"unknown ONNX Runtime loading mode {mode!r} (known: {list(MODES)})")
    if (mode == "ort-mmap") != (path.suffix == ".ort"):
        raise ModelLoadError(f"{path.name}: mode {mode!r} needs {'an .ort' if mode == 'ort-mmap' else 'an .onnx'} file")
    if mode == "external-noprepack":
        return mode, {"session.disable_prepacking": "1"}
    if mode == "ort-mmap":
        return mode, {"session.load_model_format": "ORT", "session.use_memory_mapped_ort_model": "1",
                      "session.use_ort_model_bytes_for_initializers": "1"}
    return mode, {}


class _Session(LimitedRuns):
    """What both bindings share: the input contract check, the warm-up run and the run limit
    (:class:`~.runlimit.LimitedRuns`)."""

    _contract: list[tuple[str, type | None, list]]
    _names: list[str]

    def warm(self) -> None:
        """Run once on zeros of the declared input shapes (symbolic dims as 1), so that the pages
        and buffers a first request touches are resident when the footprint is measured."""
        feeds = {name: np.zeros([d if isinstance(d, int) else 1 for d in shape], dtype or np.float32)
                 for name, dtype, shape in self._contract}
        self.run(feeds)

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse feeds that do not fit the graph's declared inputs (names, unknown names, arrays,
        dtypes, ranks, and symbolic dims such as ``nnz`` that must agree across inputs): ONNX broadcasting would
        otherwise turn some mismatches into silent wrong answers."""
        check_feed_names(feeds, self._names)
        dims: dict[str, int] = {}
        for name, dtype, shape in self._contract:
            a = feeds.get(name)
            if a is None:
                raise InferenceError(f"missing input {name!r} (model inputs: {[c[0] for c in self._contract]})")
            if not isinstance(a, np.ndarray):
                raise InferenceError(f"input {name!r}: a {type(a).__name__}, not a numpy array")
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

    def _check_output(self, path: Path, output: str, names: list[str]) -> None:
        if output not in names:
            raise ModelLoadError(f"{path.name}: no output named {output!r} (outputs: {names})")


class OrtSession(_Session):
    """One session through ONNX Runtime's Python binding; ``run`` is thread-safe (ORT sessions are).
    The binding holds the interpreter lock while it builds the session (see ``CSession``)."""

    def __init__(self, path: Path, output: str, threads: int, optimize: bool, mode: str | None = None,
                 max_run_ms: float | None = None) -> None:
        self._limit(max_run_ms)
        ort = _runtime()
        mode, config = _config(path, mode)
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
        for key, value in config.items():
            opts.add_session_config_entry(key, value)
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            names = [o.name for o in self._sess.get_outputs()]
            inputs = [(i.name, i.type, list(i.shape)) for i in self._sess.get_inputs()]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeError types
            raise ModelLoadError(f"onnxruntime refused {path.name}: {brief(exc)}") from exc
        self._check_output(path, output, names)
        self._output = [output]
        self._contract = [(name, _DTYPES.get(kind), shape) for name, kind, shape in inputs]
        self._names = [c[0] for c in self._contract]
        self._state = threading.Lock()
        self._watch()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._check(feeds)
        sess = self._sess
        if sess is None:
            raise InferenceError("the session was closed")
        if self.max_run_ms is None:
            return self._run(sess, feeds, None)
        options = _ort.RunOptions()
        options.log_severity_level = 4  # a stopped run is reported by the InferenceError, not logged
        return self._run_watched(lambda: self._run(sess, feeds, options),
                                 lambda: setattr(options, "terminate", True))

    def _run(self, sess, feeds: dict[str, np.ndarray], options) -> np.ndarray:
        try:
            return sess.run(self._output, feeds, options)[0]
        except Exception as exc:
            raise InferenceError(f"onnxruntime run failed: {brief(exc)}") from exc

    def close(self) -> None:
        self._sess = None
        self._unlimit()


class CSession(_Session):
    """One session through ONNX Runtime's C API (``_ort_capi``): built and run with the
    interpreter lock released, the same options as :class:`OrtSession`. ``run`` is thread-safe;
    ``close`` waits for no one but frees the session only once no run is in flight."""

    def __init__(self, path: Path, output: str, threads: int, optimize: bool, mode: str | None = None,
                 max_run_ms: float | None = None) -> None:
        from . import _ort_capi
        self._limit(max_run_ms)
        _, config = _config(path, mode)
        self._rt = _ort_capi.runtime()
        self._handle, inputs, outputs = self._rt.create_session(path, threads, optimize, config)
        try:
            self._check_output(path, output, list(outputs))
        except ModelLoadError:
            self._rt.release_session(self._handle)
            raise
        ffi = self._rt.ffi
        self._contract = [(name, dtype.type if dtype is not None else None, shape) for name, dtype, shape in inputs]
        self._names = [c[0] for c in self._contract]
        self._keep = [ffi.new("char[]", n.encode()) for n in [c[0] for c in self._contract] + [output]]
        self._in_names = ffi.new("const char*[]", self._keep[:-1])
        self._out_name = ffi.new("const char*[1]", [self._keep[-1]])
        # One kernel call per run when the output's shape is fixed (it is preallocated) and every
        # input is a tensor of a known type; otherwise the run goes call by call.
        out_dtype, out_shape = outputs[output]
        types = [_ort_capi.onnx_type(dtype) for _, dtype, _ in inputs]
        fixed = out_dtype is not None and all(isinstance(d, int) for d in out_shape) and None not in types
        calls = self._calls = self._rt.calls
        self._all_jobs: list = []  # every job made: for the watchdog, and their run options go with the session
        if fixed and calls is not None and len(inputs) <= calls.MAX_INPUTS:
            names, ranks = [c[0] for c in self._contract], [len(c[2]) for c in self._contract]
            address = self._rt.address(self._handle)

            def new_job():
                job = calls.job(address, names, types, ranks, output, tuple(out_shape),
                                _ort_capi.onnx_type(out_dtype), stoppable=self.max_run_ms is not None)
                self._all_jobs.append(job)
                return job
            self._fast = (new_job, tuple(out_shape), out_dtype)
        else:
            self._fast = None
        self._jobs: list = []  # bound kernel jobs not in use (one per thread running at once)
        self._state = threading.Lock()
        self._running, self._closed = 0, False
        self._watch()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._check(feeds)
        arrays = [np.ascontiguousarray(feeds[name]) for name, _, _ in self._contract]
        with self._state:
            if self._closed:
                raise InferenceError("the session was closed")
            self._running += 1
        try:
            if self._fast is not None:
                new_job, shape, dtype = self._fast
                out = np.empty(shape, dtype)
                jobs = self._jobs
                try:
                    job = jobs.pop()  # list.pop/append are atomic: no lock
                except IndexError:  # every job is in use by another thread (or none made yet)
                    job = new_job()
                deadline = job.deadline = run_deadline() if self.max_run_ms is not None else None
                try:
                    status = job.run(arrays, out)
                    stopped = status and job.stopped
                finally:
                    jobs.append(job)
                if stopped:
                    self._rt.release_status(status)
                    raise self._stopped_error(deadline)
                if status:
                    self._rt.check(status, InferenceError, "onnxruntime run failed")
                return out
            if self.max_run_ms is None:
                return self._rt.run(self._handle, self._in_names, arrays, self._out_name)
            return self._run_limited(arrays)
        finally:
            with self._state:
                self._running -= 1
                handle = self._take_if_idle()
            if handle is not None:  # closed while this run was in flight: the last run frees it
                self._release(handle)

    def _run_limited(self, arrays: list[np.ndarray]) -> np.ndarray:
        """A read-back run (an output without a fixed shape) that the watchdog can stop."""
        options = self._rt.new_run_options()
        try:
            return self._run_watched(lambda: self._rt.run(self._handle, self._in_names, arrays, self._out_name, options),
                                     lambda: self._rt.terminate(options))
        finally:  # after _run_watched unregistered it: the watchdog no longer touches the options
            self._rt.release_run_options(options)

    def _stop_overdue(self, now: int) -> None:
        for job in list(self._all_jobs):  # bound jobs: the kernel checks the run is still the one
            started = job.started()
            if started and self._overdue(now, started, job.deadline):
                job.stop(started)
        super()._stop_overdue(now)

    def close(self) -> None:
        with self._state:
            self._closed = True
            handle = self._take_if_idle()
        if handle is not None:
            self._release(handle)

    def _release(self, handle) -> None:
        self._unlimit()
        if self._all_jobs:  # one kernel call: the session and its jobs' run options
            self._calls.release_session(self._rt.address(handle), self._all_jobs)
        else:
            self._rt.release_session(handle)

    def _take_if_idle(self):
        """The handle to free (once) when closed and no run is in flight; the caller holds _state."""
        if self._closed and self._running == 0 and self._handle is not None:
            handle, self._handle = self._handle, None
            return handle
        return None

    def __del__(self) -> None:  # a leak guard only: the residency manager closes explicitly
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


BINDINGS = {"c": CSession, "python": OrtSession}
_binding = {"default": "c", "warned": False}


def set_default_binding(binding: str) -> str:
    """Choose the binding later loads use (``c`` unless changed); returns the previous one.
    For benchmarks and tests that compare the two; an app has no reason to change it.

    Raises:
        ModelLoadError: an unknown binding.
    """
    if binding not in BINDINGS:
        raise ModelLoadError(f"unknown ONNX Runtime binding {binding!r} (known: {list(BINDINGS)})")
    with _import_lock:
        previous, _binding["default"] = _binding["default"], binding
    return previous


def _c_available() -> bool:
    """Whether the C API can be used; warns once (and the Python binding is used) when not."""
    from . import _ort_capi
    try:
        _ort_capi.runtime()
        return True
    except ModelLoadError as exc:
        with _import_lock:
            if not _binding["warned"]:
                _binding["warned"] = True
                warnings.warn(f"edge_eco: ONNX Runtime's C API is unavailable ({exc}); using its Python "
                              "binding, whose loads hold the interpreter lock", RuntimeWarning, stacklevel=4)
        return False


def open(path: Path, *, output: str = "logits", threads: int = 1, optimize: bool = True,  # noqa: A001
         mode: str | None = None, binding: str | None = None, max_run_ms: float | None = None) -> _Session:
    """Load an ONNX (or ORT-format) model from ``path``.

    Args:
        mode: one of MODES; None picks ``ort-mmap`` for .ort files and ``plain`` otherwise.
        binding: ``c`` (ONNX Runtime's C API through cffi: a load leaves the interpreter lock to
            other threads), ``python`` (onnxruntime's Python binding, which holds it while it
            builds the session), or None for the default (``c``, or ``python`` with a warning
            when the wheel's shared library cannot be loaded). Both give identical outputs.
        max_run_ms: a run that lasts longer is stopped (ONNX Runtime's terminate flag, set by
            a watchdog thread between the graph's nodes) and raises InferenceError; None: no limit.

    Raises:
        ModelLoadError: the runtime refused the file, the mode does not fit it, the binding
            is unknown (or ``c`` was asked for and is unavailable), or ``threads`` is not a
            whole number from 1 to MAX_THREADS.
    """
    if binding is None:
        binding = _binding["default"]
        if binding == "c" and not _c_available():
            binding = "python"
    if binding not in BINDINGS:
        raise ModelLoadError(f"unknown ONNX Runtime binding {binding!r} (known: {list(BINDINGS)})")
    check_threads(threads)
    return BINDINGS[binding](path, output, threads, optimize, mode, max_run_ms)

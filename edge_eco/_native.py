"""The only importer of the compiled kernel ``edge_eco._edge_eco_native``.

Turns the kernel's status codes into :class:`~edge_eco.errors.NativeError` and falls back,
with one warning, to the numpy reference when the extension is missing.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from .errors import NativeError
from .featurizer import FeaturizerSpec, featurize_reference

try:  # pragma: no cover - which branch runs depends on the install
    from ._edge_eco_native import ffi as _ffi
    from ._edge_eco_native import lib as _lib
except ImportError as exc:  # pragma: no cover
    _ffi = _lib = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None
    _run_job = _lib.ee_route_job_run

_STATUS = {-1: "a required pointer was NULL", -2: "featurizer config out of range",
           -3: "output buffers too small"}
_warned = False
_warn_lock = threading.Lock()


def available() -> bool:
    """True when the compiled kernel is importable."""
    return _lib is not None


def _warn_once() -> None:
    global _warned
    with _warn_lock:
        if not _warned:
            _warned = True
            warnings.warn(f"edge_eco: compiled kernel unavailable ({_IMPORT_ERROR}); "
                          "using the numpy reference featurizer (slower, same output)",
                          RuntimeWarning, stacklevel=3)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise NativeError(f"{what}: {_STATUS.get(status, 'unknown status')} (status {status})")


def _feature_buffers(cap: int) -> tuple:
    """(cap, scratch, idx, val, and their C pointers, nnz out-pointer) for texts up to ``cap`` n-grams."""
    cap = max(cap, 1024)
    scratch = np.empty(2 * cap, np.uint64)
    idx = np.empty(cap, np.int32)
    val = np.empty(cap, np.float32)
    return (cap, scratch, idx, val, _ffi.from_buffer("unsigned long long *", scratch),
            _ffi.from_buffer("int *", idx), _ffi.from_buffer("float *", val), _ffi.new("unsigned long *"))


class Featurizer:
    """Featurizes texts with the C kernel, or the numpy reference when it is missing.

    Thread-safe: buffers are per thread and grow on demand.
    """

    def __init__(self, spec: FeaturizerSpec, *, use_native: bool | None = None) -> None:
        self.spec = spec
        if use_native is None:
            use_native = available()
            if not use_native:
                _warn_once()
        elif use_native and not available():
            raise NativeError(f"compiled kernel requested but unavailable: {_IMPORT_ERROR}")
        self.native = use_native
        self._local = threading.local()
        if use_native:
            self._cfg = _ffi.new("ee_featurizer_t *", {
                "seed": spec.seed, "dim": spec.dim, "word_ngram_max": spec.word_ngram_max,
                "char_ngram_min": spec.char_ngram_min, "char_ngram_max": spec.char_ngram_max,
                "word_weight": spec.word_weight, "char_weight": spec.char_weight})

    def _buffers(self, cap: int):
        buf = getattr(self._local, "buf", None)
        if buf is None or buf[0] < cap:
            buf = self._local.buf = _feature_buffers(cap)
        return buf

    def __call__(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Featurize UTF-8 bytes; returns fresh (indices int32 [nnz], values float32 [nnz])."""
        if not self.native:
            return featurize_reference(self.spec, data)
        cap, _, idx, val, p_scratch, p_idx, p_val, p_nnz = self._buffers(self.spec.capacity(len(data)))
        _check(_lib.ee_featurizer_run(self._cfg, data, len(data), p_scratch, p_idx, p_val, cap, p_nnz),
               "ee_featurizer_run")
        nnz = p_nnz[0]
        return idx[:nnz].copy(), val[:nnz].copy()


class RouterKernel:
    """The C deferral router over weights prepared once (pointers into the mapped arrays).

    Thread-safe: output buffers are per thread.
    """

    def __init__(self, weights) -> None:
        if not available():
            raise NativeError(f"compiled kernel unavailable: {_IMPORT_ERROR}")
        self.weights = weights  # keeps the mapped arrays alive as long as the pointers
        self._cfg = _ffi.new("ee_router_t *")
        cost = getattr(weights, "cost", None)
        cost = np.zeros(weights.weight.shape[1], np.float32) if cost is None else cost
        self._keep = [np.ascontiguousarray(a) for a in (weights.weight, weights.scale, weights.bias, cost)]
        self._cfg.weight = _ffi.from_buffer("signed char *", self._keep[0])
        self._cfg.scale = _ffi.from_buffer("float *", self._keep[1])
        self._cfg.bias = _ffi.from_buffer("float *", self._keep[2])
        self._cfg.cost = _ffi.from_buffer("float *", self._keep[3])
        self._cfg.dim, self._cfg.k = weights.weight.shape
        self._local = threading.local()
        self._all = None

    def _buffers(self):
        buf = getattr(self._local, "buf", None)
        if buf is None:
            k = self._cfg.k
            logit, order, prob = np.empty(k, np.float32), np.empty(k, np.int32), np.empty(k, np.float64)
            buf = (logit, order, prob, _ffi.from_buffer("float *", logit), _ffi.from_buffer("int *", order),
                   _ffi.from_buffer("double *", prob), _ffi.new("unsigned int *"))
            self._local.buf = buf
        return buf

    def route_text(self, featurizer: "Featurizer", data: bytes, mask: np.ndarray, param: float,
                   mode: int = 0):
        """Featurize and route in one C call: (indices, values, order, probs).

        ``mask`` is a uint8 [K] array. ``mode`` 0 (softmax, ``param`` = temperature) ranks eligible
        candidates by logit (ties by index) with ``probs`` their softmax, as ``router.softmax_route``;
        mode 1 (utility, ``param`` = lambda) ranks by predicted correctness - lambda x cost with
        ``probs`` the predicted correctness, as ``router.route_reference``.

        ``indices``/``values`` are views of this thread's buffers, valid until the thread's next
        call: the request path uses them before it featurizes again (copy to keep them longer).
        """
        job = getattr(self._local, "job", None)
        if job is None or job[0] is not featurizer or len(data) > job[1]:
            job = self._local.job = self._new_job(featurizer, len(data), job)
        c = job[2]
        if job[3] is not mask:  # the default mask is reused; per-deadline ones are not
            c.mask = _ffi.from_buffer("unsigned char *", mask)
            job[3] = mask
        if job[4] != (mode, param):
            c.mode, c.param = mode, param
            job[4] = (mode, param)
        status = _run_job(c, data, len(data))
        if status:
            _check(status, "ee_route_text")
        nnz, n = c.nnz, c.n
        # ffi.unpack reads the n ranked entries straight into lists (numpy slice + tolist: ~1 us more).
        return job[5][:nnz], job[6][:nnz], _ffi.unpack(job[7], n), _ffi.unpack(job[8], n)

    def _new_job(self, featurizer: "Featurizer", n_bytes: int, old: list | None) -> list:
        """This thread's ee_route_job_t for ``featurizer`` and texts up to ``n_bytes`` (grown by doubling):
        [featurizer, max bytes, the job, its mask array, (mode, param), idx, val, order and prob
        pointers, keep-alive]."""
        if not featurizer.native:
            raise NativeError("route_text needs the compiled featurizer")
        n_max = max(n_bytes, 256 if old is None or old[0] is not featurizer else 2 * old[1])
        cap, scratch, idx, val, p_scratch, p_idx, p_val, _ = _feature_buffers(featurizer.spec.capacity(n_max))
        logit, order, prob, p_logit, p_order, p_prob, _ = self._buffers()
        c = _ffi.new("ee_route_job_t *", {
            "featurizer": featurizer._cfg, "router": self._cfg, "scratch": p_scratch, "idx": p_idx, "val": p_val,
            "cap": cap, "logit": p_logit, "order": p_order, "prob": p_prob, "mode": -1})
        return [featurizer, n_max, c, None, None, idx, val, p_order, p_prob, (scratch, logit, order, prob)]

    def logits(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float32 [K] logits of every candidate (bit-identical to ``router.linear_logits``)."""
        if self._all is None:
            self._all = np.ones(self._cfg.k, np.uint8)
        return self.route(indices, values, self._all, 0.0)[2]

    def route(self, indices: np.ndarray, values: np.ndarray, mask: np.ndarray, lam: float):
        """(order, probs, logits) of one request; arrays are int32/float32/uint8 views."""
        logit, order, prob, p_logit, p_order, p_prob, p_n = self._buffers()
        _check(_lib.ee_router_route(self._cfg, _ffi.from_buffer("int *", indices),
                                    _ffi.from_buffer("float *", values), len(indices),
                                    _ffi.from_buffer("unsigned char *", mask), lam,
                                    p_logit, p_order, p_prob, p_n), "ee_router_route")
        n = p_n[0]
        return order[:n].copy(), prob[:n].copy(), logit.copy()


class OrtCalls:
    """ONNX Runtime loads and runs in one kernel call each (``ee_ort_session_open``, ``ee_ort_run``):
    each call crosses the interpreter lock once where the same work through cffi's ABI mode crosses
    it once per OrtApi call (see ``backends/_ort_capi.py``). Handles and statuses are plain ints
    (addresses), so that the two cffi worlds never share a cdata.
    """

    FUNCTIONS = ("create_session_options", "release_session_options", "set_session_graph_optimization_level",
                 "set_intra_op_num_threads", "set_inter_op_num_threads", "set_session_execution_mode",
                 "disable_mem_pattern", "disable_cpu_mem_arena", "set_session_log_severity_level",
                 "add_session_config_entry", "create_session", "create_tensor_with_data_as_ort_value",
                 "run", "release_value", "run_options_set_terminate", "run_options_unset_terminate",
                 "release_status", "create_run_options", "run_options_set_run_log_severity_level",
                 "release_run_options", "release_session")
    MAX_INPUTS = 16

    def __init__(self, env: int, cpu: int, functions: dict[str, int]) -> None:
        if not available():
            raise NativeError(f"compiled kernel unavailable: {_IMPORT_ERROR}")
        self._o = _ffi.new("ee_ort_t *")
        self._o.env, self._o.cpu = _ffi.cast("void *", env), _ffi.cast("void *", cpu)
        for name in self.FUNCTIONS:
            setattr(self._o, name, _ffi.cast("void *", functions[name]))

    def open_session(self, path: bytes, threads: int, level: int, config: dict[str, str]) -> tuple[int, int]:
        """(session address, 0) on success, (0, OrtStatus address) when ONNX Runtime refused."""
        keys = [_ffi.new("char[]", k.encode()) for k in config]
        values = [_ffi.new("char[]", v.encode()) for v in config.values()]
        session, status = _ffi.new("void **"), _ffi.new("void **")
        rc = _lib.ee_ort_session_open(self._o, path, threads, level, _ffi.new("char *[]", keys),
                                      _ffi.new("char *[]", values), len(keys), session, status)
        if rc == -4:
            return 0, int(_ffi.cast("uintptr_t", status[0]))
        _check(rc, "ee_ort_session_open")
        return int(_ffi.cast("uintptr_t", session[0])), 0

    def job(self, session: int, names: list[str], types: list[int], ranks: list[int], out_name: str,
            out_shape: tuple, out_type: int, stoppable: bool = False) -> "OrtJob":
        """One session's run bound for one thread (``ee_ort_job_t``): inputs ``names`` of ONNX
        element ``types`` and ``ranks``; one output of fixed ``out_shape``. A ``stoppable`` job
        makes run options at its first run so that :meth:`OrtJob.stop` can stop a run; they are
        released with the session (:meth:`release_session`).

        Raises:
            NativeError: more than MAX_INPUTS inputs.
        """
        if len(names) > self.MAX_INPUTS:
            raise NativeError(f"ee_ort_job_run: {len(names)} inputs; the kernel takes at most {self.MAX_INPUTS}")
        return OrtJob(self._o, session, names, types, ranks, out_name, out_shape, out_type, stoppable)

    def release_session(self, session: int, jobs: list["OrtJob"]) -> None:
        """Release ``session`` and its ``jobs``' run options in one kernel call (no run in flight)."""
        handles = _ffi.new("ee_ort_job_t *[]", [j._job for j in jobs]) if jobs else _ffi.NULL
        _check(_lib.ee_ort_session_release(self._o, _ffi.cast("void *", session), handles, len(jobs)),
               "ee_ort_session_release")


class OrtJob:
    """A bound ``ee_ort_job_t``; not shared between threads (:meth:`run` writes into it)."""

    __slots__ = ("_job", "_data", "_dims", "_keep", "deadline")

    def __init__(self, o, session: int, names: list[str], types: list[int], ranks: list[int], out_name: str,
                 out_shape: tuple, out_type: int, stoppable: bool = False) -> None:
        c_names = [_ffi.new("char[]", n.encode()) for n in names]
        self._keep = [c_names, _ffi.new("char *[]", c_names), _ffi.new("int[]", types),
                      _ffi.new("unsigned long[]", ranks), _ffi.new("char[]", out_name.encode()),
                      _ffi.new("long long[]", list(out_shape))]
        self._data = _ffi.new("void *[]", max(len(names), 1))
        self._dims = _ffi.new("long long[]", max(sum(ranks), 1))
        self._job = _ffi.new("ee_ort_job_t *", {
            "ort": o, "session": _ffi.cast("void *", session), "n_in": len(names), "names": self._keep[1],
            "types": self._keep[2], "ranks": self._keep[3], "data": self._data, "dims": self._dims,
            "out_name": self._keep[4], "out_type": out_type, "out_rank": len(out_shape), "out_dims": self._keep[5],
            "stoppable": int(bool(stoppable))})
        self.deadline: int | None = None  # the run's request deadline (CLOCK_MONOTONIC ns), for a watchdog

    def started(self) -> int:
        """CLOCK_MONOTONIC ns (as ``time.monotonic_ns``) at which the run in flight started; 0 if none."""
        return self._job.started_ns

    def stop(self, started: int) -> None:
        """Stop the run in flight if it is still the one that began at ``started`` (from another
        thread); its :meth:`run` then returns ONNX Runtime's status and :attr:`stopped` is set."""
        _check(_lib.ee_ort_job_stop(self._job, started), "ee_ort_job_stop")

    @property
    def stopped(self) -> bool:
        """Whether the last :meth:`run` was stopped by :meth:`stop`."""
        return bool(self._job.stopped)

    def run(self, arrays: list[np.ndarray], out: np.ndarray) -> int:
        """Run on C-contiguous ``arrays`` (the bound types and ranks) into ``out`` (the bound
        shape and type): 0, or the address of the OrtStatus ONNX Runtime returned."""
        data, dims, k = self._data, self._dims, 0
        for i, a in enumerate(arrays):
            data[i] = _ffi.from_buffer(a)
            for d in a.shape:
                dims[k] = d
                k += 1
        job = self._job
        job.out_data = _ffi.from_buffer(out, require_writable=True)
        rc = _lib.ee_ort_job_run(job)
        if rc == -4:
            return int(_ffi.cast("uintptr_t", job.status))
        if rc == -2:
            raise NativeError("ee_ort_job_run: a tensor element type without a fixed size (strings are not "
                              "supported) or a negative dimension")
        if rc:
            _check(rc, "ee_ort_job_run")
        return 0

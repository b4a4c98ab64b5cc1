"""ONNX Runtime's C API through cffi (ABI mode, no compiler): the binding under ``backends/ort.py``.

Why: ONNX Runtime's Python binding holds the interpreter lock while it builds a session (~0.4 ms
of a specialist's ~0.5 ms load, measured by a thread that counts its own stalls), so every warm
request that needs the lock waits behind a load. cffi releases the lock around each C call: a
session built here leaves the other threads running (``edge-eco bench residency``: warm p99).

The library is the one the ``onnxruntime`` wheel ships next to its Python extension
(``onnxruntime/capi/libonnxruntime.so.*``); it is found without importing the Python package.

``OrtApi`` is a table of function pointers that ONNX Runtime only ever appends to (its ABI
promise): a slot's index is fixed from the version that added it. ``_SLOTS`` names the slots used
here by index (from ``onnxruntime_c_api.h``, API version 13); the rest are declared as plain
pointers so the struct's layout is the library's. Every slot used is at most version 13, and
``GetApi(13)`` is asked for, so a library that lacks one refuses at open, not at a call.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np

from .. import _native
from ..artifacts import file_identity
from ..errors import InferenceError, ModelLoadError
from . import brief

API_VERSION = 13
# index -> declaration of the OrtApi slots this binding calls (enums are passed as int).
_SLOTS = {
    1: "int (*GetErrorCode)(const OrtStatus*)",
    2: "const char* (*GetErrorMessage)(const OrtStatus*)",
    3: "OrtStatus* (*CreateEnv)(int, const char*, OrtEnv**)",
    7: "OrtStatus* (*CreateSession)(const OrtEnv*, const char*, const OrtSessionOptions*, OrtSession**)",
    9: ("OrtStatus* (*Run)(OrtSession*, const void*, const char* const*, const OrtValue* const*, size_t, "
        "const char* const*, size_t, OrtValue**)"),
    10: "OrtStatus* (*CreateSessionOptions)(OrtSessionOptions**)",
    13: "OrtStatus* (*SetSessionExecutionMode)(OrtSessionOptions*, int)",
    17: "OrtStatus* (*DisableMemPattern)(OrtSessionOptions*)",
    19: "OrtStatus* (*DisableCpuMemArena)(OrtSessionOptions*)",
    22: "OrtStatus* (*SetSessionLogSeverityLevel)(OrtSessionOptions*, int)",
    23: "OrtStatus* (*SetSessionGraphOptimizationLevel)(OrtSessionOptions*, int)",
    24: "OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions*, int)",
    25: "OrtStatus* (*SetInterOpNumThreads)(OrtSessionOptions*, int)",
    30: "OrtStatus* (*SessionGetInputCount)(const OrtSession*, size_t*)",
    31: "OrtStatus* (*SessionGetOutputCount)(const OrtSession*, size_t*)",
    33: "OrtStatus* (*SessionGetInputTypeInfo)(const OrtSession*, size_t, OrtTypeInfo**)",
    34: "OrtStatus* (*SessionGetOutputTypeInfo)(const OrtSession*, size_t, OrtTypeInfo**)",
    36: "OrtStatus* (*SessionGetInputName)(const OrtSession*, size_t, OrtAllocator*, char**)",
    37: "OrtStatus* (*SessionGetOutputName)(const OrtSession*, size_t, OrtAllocator*, char**)",
    39: "OrtStatus* (*CreateRunOptions)(OrtRunOptions**)",
    41: "OrtStatus* (*RunOptionsSetRunLogSeverityLevel)(OrtRunOptions*, int)",
    46: "OrtStatus* (*RunOptionsSetTerminate)(OrtRunOptions*)",
    47: "OrtStatus* (*RunOptionsUnsetTerminate)(OrtRunOptions*)",
    49: ("OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo*, void*, size_t, const int64_t*, "
         "size_t, int, OrtValue**)"),
    51: "OrtStatus* (*GetTensorMutableData)(OrtValue*, void**)",
    55: "OrtStatus* (*CastTypeInfoToTensorInfo)(const OrtTypeInfo*, const OrtTensorTypeAndShapeInfo**)",
    60: "OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo*, int*)",
    61: "OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo*, size_t*)",
    62: "OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)",
    63: "OrtStatus* (*GetSymbolicDimensions)(const OrtTensorTypeAndShapeInfo*, const char**, size_t)",
    65: "OrtStatus* (*GetTensorTypeAndShape)(const OrtValue*, OrtTensorTypeAndShapeInfo**)",
    69: "OrtStatus* (*CreateCpuMemoryInfo)(int, int, OrtMemoryInfo**)",
    76: "OrtStatus* (*AllocatorFree)(OrtAllocator*, void*)",
    78: "OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator**)",
    93: "void (*ReleaseStatus)(OrtStatus*)",
    95: "void (*ReleaseSession)(OrtSession*)",
    96: "void (*ReleaseValue)(OrtValue*)",
    97: "void (*ReleaseRunOptions)(OrtRunOptions*)",
    98: "void (*ReleaseTypeInfo)(OrtTypeInfo*)",
    99: "void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo*)",
    100: "void (*ReleaseSessionOptions)(OrtSessionOptions*)",
    130: "OrtStatus* (*AddSessionConfigEntry)(OrtSessionOptions*, const char*, const char*)",
}
_OPAQUE = ("OrtEnv", "OrtStatus", "OrtSession", "OrtSessionOptions", "OrtValue", "OrtTypeInfo", "OrtRunOptions",
           "OrtTensorTypeAndShapeInfo", "OrtMemoryInfo", "OrtAllocator")


def _cdef() -> str:
    types = "".join(f"typedef struct {t} {t};\n" for t in _OPAQUE)
    slots = "\n".join(f"    {_SLOTS[i]};" if i in _SLOTS else f"    void* _slot{i};" for i in range(max(_SLOTS) + 1))
    return (types + "typedef struct OrtApi {\n" + slots + "\n} OrtApi;\n"
            "typedef struct OrtApiBase { const OrtApi* (*GetApi)(uint32_t); const char* (*GetVersionString)(void); }"
            " OrtApiBase;\nconst OrtApiBase* OrtGetApiBase(void);\n")


def library_path() -> Path:
    """The ONNX Runtime shared library the installed ``onnxruntime`` wheel ships.

    Raises:
        ModelLoadError: onnxruntime is not installed, or its wheel has no shared library.
    """
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("onnxruntime is not installed (pip install onnxruntime)")
    capi = Path(list(spec.submodule_search_locations)[0]) / "capi"
    pattern = {"darwin": "libonnxruntime.*dylib", "win32": "onnxruntime.dll"}.get(sys.platform, "libonnxruntime.so*")
    found = sorted(capi.glob(pattern))
    if not found:
        raise ModelLoadError(f"onnxruntime's shared library ({pattern}) is not in {capi}")
    return found[-1]


class Runtime:
    """The loaded library, its API table, one environment and the CPU memory description."""

    def __init__(self) -> None:
        import cffi  # a runtime dependency already (the router kernel)
        self.ffi = cffi.FFI()
        self.ffi.cdef(_cdef())
        path = library_path()
        try:
            self._lib = self.ffi.dlopen(str(path))
        except OSError as exc:
            raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
        base = self._lib.OrtGetApiBase()
        self.version = self.ffi.string(base.GetVersionString()).decode()
        api = base.GetApi(API_VERSION)
        if api == self.ffi.NULL:
            raise ModelLoadError(f"{path.name} (ONNX Runtime {self.version}) does not offer C API version "
                                 f"{API_VERSION}")
        self.api = api
        env = self.ffi.new("OrtEnv**")
        self.check(api.CreateEnv(3, b"edge_eco", env), ModelLoadError, "creating the environment")  # 3 = ERROR
        self.env = env[0]  # one per process, for its lifetime (ONNX Runtime's own advice)
        info = self.ffi.new("OrtMemoryInfo**")
        self.check(api.CreateCpuMemoryInfo(0, 0, info), ModelLoadError, "describing CPU memory")  # device, default
        self.cpu = info[0]
        alloc = self.ffi.new("OrtAllocator**")
        self.check(api.GetAllocatorWithDefaultOptions(alloc), ModelLoadError, "getting the default allocator")
        self.allocator = alloc[0]
        # One kernel call per load and per run when the compiled kernel is there (edge_eco.h,
        # ee_ort_t); without it every OrtApi call below crosses the interpreter lock on its own.
        self.calls = _native.OrtCalls(self.address(self.env), self.address(self.cpu), {
            name: self.address(getattr(api, "".join(w.title() for w in name.split("_"))))
            for name in _native.OrtCalls.FUNCTIONS}) if _native.available() else None
        self._metadata: dict[tuple, tuple] = {}

    def address(self, cdata) -> int:
        """The address of a handle, as the kernel's calls take it."""
        return int(self.ffi.cast("uintptr_t", cdata))

    def new_run_options(self):
        """A new OrtRunOptions (the caller releases it with :meth:`release_run_options`); its
        runs log nothing below FATAL (a stopped run is reported by the InferenceError)."""
        out = self.ffi.new("OrtRunOptions**")
        self.check(self.api.CreateRunOptions(out), InferenceError, "creating run options")
        try:
            self.check(self.api.RunOptionsSetRunLogSeverityLevel(out[0], 4), InferenceError, "setting run logging")
        except InferenceError:
            self.api.ReleaseRunOptions(out[0])
            raise
        return out[0]

    def release_run_options(self, options) -> None:
        self.api.ReleaseRunOptions(options)

    def terminate(self, options) -> None:
        """Set ``options``' terminate flag: a run using them returns with an error soon."""
        self.check(self.api.RunOptionsSetTerminate(options), InferenceError, "stopping a run")

    def release_status(self, status) -> None:
        """Release an OrtStatus (or its address) without reading it."""
        if isinstance(status, int):
            status = self.ffi.cast("OrtStatus*", status)
        self.api.ReleaseStatus(status)

    def check(self, status, error: type, doing: str) -> None:
        """Raise ``error`` naming ``doing`` when ``status`` (an OrtStatus*, or its address) is not
        NULL (and release it)."""
        if isinstance(status, int):
            status = self.ffi.cast("OrtStatus*", status)
        if status == self.ffi.NULL:
            return
        try:
            message = self.ffi.string(self.api.GetErrorMessage(status)).decode("utf-8", "replace")
        finally:
            self.api.ReleaseStatus(status)
        prefix = doing if doing.startswith("onnxruntime") else f"onnxruntime ({doing})"
        raise error(f"{prefix}: {brief(message)}")

    def take_string(self, ptr) -> str:
        """A string ONNX Runtime allocated with the default allocator, freed after reading."""
        try:
            return self.ffi.string(ptr).decode()
        finally:
            self.check(self.api.AllocatorFree(self.allocator, ptr), InferenceError, "freeing a name")


    def create_session(self, path: Path, threads: int, optimize: bool, config: dict[str, str]):
        """Build a session on ``path`` (the interpreter lock is released during the build).

        Returns:
            (session handle, inputs as [(name, numpy dtype or None, shape)], outputs as
            {name: (numpy dtype or None, shape)}); a shape lists ints for fixed dimensions, names
            for symbolic ones, None for unnamed ones.
        Raises:
            ModelLoadError: the runtime refused the file or an option.
        """
        level = 99 if optimize else 0
        if self.calls is not None:
            address, status = self.calls.open_session(str(path).encode(), threads, level, config)
            self.check(status, ModelLoadError, f"onnxruntime refused {path.name}")
            sess = self.ffi.cast("OrtSession*", address)
        else:
            sess = self._create_by_calls(path, threads, level, config)
        try:
            # The graph's inputs and outputs are read once per file version (a reload of an
            # unchanged file would otherwise cross the interpreter lock ~20 more times).
            key = (str(path), file_identity(path.stat()))
            if key not in self._metadata:
                if len(self._metadata) > 256:
                    self._metadata.clear()
                self._metadata[key] = (self._inputs(sess), self._outputs(sess))
            return (sess, *self._metadata[key])
        except BaseException:
            self.api.ReleaseSession(sess)
            raise

    def _create_by_calls(self, path: Path, threads: int, level: int, config: dict[str, str]):
        """``ee_ort_session_open`` (edge_eco.h) through the API table, one call at a time."""
        ffi, api = self.ffi, self.api
        opts_p = ffi.new("OrtSessionOptions**")
        self.check(api.CreateSessionOptions(opts_p), ModelLoadError, "creating session options")
        opts = opts_p[0]
        try:
            for status in (api.SetSessionGraphOptimizationLevel(opts, level),
                           api.SetIntraOpNumThreads(opts, threads), api.SetInterOpNumThreads(opts, 1),
                           api.SetSessionExecutionMode(opts, 0), api.DisableMemPattern(opts),
                           api.DisableCpuMemArena(opts), api.SetSessionLogSeverityLevel(opts, 3)):
                self.check(status, ModelLoadError, "setting session options")
            for key, value in config.items():
                self.check(api.AddSessionConfigEntry(opts, key.encode(), value.encode()), ModelLoadError,
                           f"setting {key}")
            sess_p = ffi.new("OrtSession**")
            self.check(api.CreateSession(self.env, str(path).encode(), opts, sess_p), ModelLoadError,
                       f"onnxruntime refused {path.name}")
        finally:
            api.ReleaseSessionOptions(opts)
        return sess_p[0]

    def _outputs(self, sess) -> dict[str, tuple]:
        api = self.api
        return {name: self._tensor_type(sess, i, name, api.SessionGetOutputTypeInfo)
                for i, name in enumerate(self._names(sess, api.SessionGetOutputCount, api.SessionGetOutputName))}

    def _names(self, sess, count_fn, name_fn) -> list[str]:
        n = self.ffi.new("size_t*")
        self.check(count_fn(sess, n), ModelLoadError, "counting inputs/outputs")
        out = []
        for i in range(n[0]):
            p = self.ffi.new("char**")
            self.check(name_fn(sess, i, self.allocator, p), ModelLoadError, "reading a name")
            out.append(self.take_string(p[0]))
        return out

    def _inputs(self, sess) -> list[tuple]:
        api = self.api
        return [(name, *self._tensor_type(sess, i, name, api.SessionGetInputTypeInfo))
                for i, name in enumerate(self._names(sess, api.SessionGetInputCount, api.SessionGetInputName))]

    def _tensor_type(self, sess, i: int, name: str, type_info_fn) -> tuple:
        """(numpy dtype or None, shape) of input or output ``i``; (None, []) for a non-tensor."""
        ffi, api = self.ffi, self.api
        tinfo_p = ffi.new("OrtTypeInfo**")
        self.check(type_info_fn(sess, i, tinfo_p), ModelLoadError, f"reading the type of {name!r}")
        try:
            info_p = ffi.new("OrtTensorTypeAndShapeInfo**")
            self.check(api.CastTypeInfoToTensorInfo(tinfo_p[0], info_p), ModelLoadError, f"the type of {name!r}")
            if info_p[0] == ffi.NULL:  # a sequence or map: no dtype or shape to check
                return None, []
            return self._type_and_shape(info_p[0], symbolic=True)
        finally:
            api.ReleaseTypeInfo(tinfo_p[0])

    def _type_and_shape(self, info, symbolic: bool) -> tuple:
        ffi, api = self.ffi, self.api
        kind, n = ffi.new("int*"), ffi.new("size_t*")
        self.check(api.GetTensorElementType(info, kind), InferenceError, "reading a tensor type")
        self.check(api.GetDimensionsCount(info, n), InferenceError, "reading a tensor rank")
        dims = ffi.new("int64_t[]", n[0])
        self.check(api.GetDimensions(info, dims, n[0]), InferenceError, "reading a tensor shape")
        shape: list = list(dims)
        if symbolic:
            names = ffi.new("const char*[]", n[0])
            self.check(api.GetSymbolicDimensions(info, names, n[0]), ModelLoadError, "reading dimension names")
            shape = [d if d >= 0 else (ffi.string(names[k]).decode() or None if names[k] != ffi.NULL else None)
                     for k, d in enumerate(shape)]
        return _NUMPY.get(kind[0]), shape

    def run(self, sess, in_names, arrays: list[np.ndarray], out_name, run_options=None) -> np.ndarray:
        """Run ``sess`` on ``arrays`` (C-contiguous, in ``in_names`` order), with ``run_options``
        (an OrtRunOptions, or None); the one output as a numpy array of its own (the runtime's
        buffer is released).

        Raises:
            InferenceError: the runtime refused the inputs or failed.
        """
        ffi, api = self.ffi, self.api
        n = len(arrays)
        values = ffi.new("OrtValue*[]", n)
        out = ffi.new("OrtValue*[1]")
        try:
            for i, a in enumerate(arrays):
                kind = _ONNX.get(a.dtype)
                if kind is None:
                    name = ffi.string(in_names[i]).decode()
                    raise InferenceError(f"input {name!r}: dtype {a.dtype} is not supported")
                shape = ffi.new("int64_t[]", a.shape)
                self.check(api.CreateTensorWithDataAsOrtValue(self.cpu, ffi.from_buffer(a), a.nbytes, shape, a.ndim,
                                                              kind, values + i), InferenceError, "wrapping an input")
            self.check(api.Run(sess, ffi.NULL if run_options is None else run_options, in_names, values, n,
                               out_name, 1, out), InferenceError,
                       "onnxruntime run failed")
            info_p = ffi.new("OrtTensorTypeAndShapeInfo**")
            self.check(api.GetTensorTypeAndShape(out[0], info_p), InferenceError, "reading the output")
            try:
                dtype, shape = self._type_and_shape(info_p[0], symbolic=False)
            finally:
                api.ReleaseTensorTypeAndShapeInfo(info_p[0])
            if dtype is None:
                raise InferenceError("the model's output is not a numeric tensor")
            data = ffi.new("void**")
            self.check(api.GetTensorMutableData(out[0], data), InferenceError, "reading the output")
            count = int(np.prod(shape)) if shape else 1
            return np.frombuffer(ffi.buffer(data[0], count * dtype.itemsize), dtype).reshape(shape).copy()
        finally:
            for i in range(n):
                if values[i] != ffi.NULL:
                    api.ReleaseValue(values[i])
            if out[0] != ffi.NULL:
                api.ReleaseValue(out[0])

    def release_session(self, sess) -> None:
        self.api.ReleaseSession(sess)


# ONNX tensor element types (TensorProto.DataType) <-> numpy
_NUMPY = {1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8), 4: np.dtype(np.uint16),
          5: np.dtype(np.int16), 6: np.dtype(np.int32), 7: np.dtype(np.int64), 9: np.dtype(np.bool_),
          10: np.dtype(np.float16), 11: np.dtype(np.float64), 12: np.dtype(np.uint32), 13: np.dtype(np.uint64)}
_ONNX = {v: k for k, v in _NUMPY.items()}



def onnx_type(dtype: np.dtype | None) -> int | None:
    """The ONNX element type of a numpy dtype (None for None or an unsupported one)."""
    return None if dtype is None else _ONNX.get(np.dtype(dtype))


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's one :class:`Runtime`, made at first use.

    Raises:
        ModelLoadError: the library is missing, cannot be loaded, or is too old.
    """
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime()
    return _runtime

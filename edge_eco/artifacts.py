"""Cheap structural checks of a model file before its bytes reach a model runtime.

A runtime handed a corrupt file may crash the process instead of raising (public reports show
truncated ``.tflite`` files segfaulting the TFLite interpreter), so every backend calls
:func:`preflight` first. The checks read only the file's first bytes and its size, plus, for an
ONNX graph, its protobuf structure (a graph file of a few kB): they cost microseconds.

- every model: not empty, not a Git LFS pointer (a clone without ``git lfs pull``), no NUL-only
  file;
- ONNX (``.onnx``): a well-formed ``ModelProto`` wire structure (every tag, varint and length
  inside the file), an ``ir_version``, an opset and a graph; every initializer stored as external
  data names a plain file beside the model, and its ``offset + length`` lies inside that file and
  matches the tensor's ``dims`` x element size;
- ORT format (``.ort``) and TFLite (``.tflite``): the flatbuffer file identifier (``ORTM``,
  ``TFL3``) and a root table offset inside the file.

A file that passed is remembered by its identity (:func:`file_identity`; for ONNX also that of its
external data files): a reload of an unchanged file costs a few ``stat`` calls instead of the
structure walk (~0.14 ms of a ~0.77 ms specialist reload, cProfile over 200 reloads), which holds
the interpreter lock that warm requests on other threads need. Any change of a file's
identity (a rewrite, a restore, a truncation) walks it again. As in git's "racy clean" rule, a
file modified less than ``_SETTLED_NS`` before it was checked is not remembered: file timestamps
come from a coarse kernel clock, and a same-size rewrite within one tick would keep its identity.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .errors import ModelLoadError

LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_IR_VERSIONS = range(3, 16)
# TensorProto.DataType -> bytes per element (0: variable-size or not allowed as external data).
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
               16: 2, 17: 1, 18: 1, 19: 1, 20: 1}
_FLATBUFFER_IDS = {".ort": b"ORTM", ".tflite": b"TFL3"}
_PASSED_MAX = 512  # files remembered as passed (a population is tens of models)
_passed: OrderedDict[str, tuple] = OrderedDict()  # abs path -> (identity, external names, their identities)
_passed_lock = threading.Lock()
_SETTLED_NS = 2_000_000_000


class _Corrupt(Exception):
    """Internal: the wire structure is broken; turned into ModelLoadError with the file name."""


def preflight(path: Path) -> list[str]:
    """Refuse a model file whose structure cannot be right, before any runtime sees it.

    Args:
        path: the model file (``.onnx``, ``.ort`` or ``.tflite``; other suffixes get the generic
            checks only).

    Raises:
        ModelLoadError: the file is missing, empty, a Git LFS pointer, has the wrong magic
            number, or (ONNX) a broken protobuf structure or external data that does not fit.

    Returns:
        The external data files an ONNX graph uses (names beside it); [] for other formats.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelLoadError(f"{path.name}: cannot read the model file ({exc.strerror})") from exc
    key, ident = os.path.abspath(path), file_identity(st)
    with _passed_lock:
        known = _passed.get(key)
    if known is not None and known[0] == ident and _identities(path, known[1]) == known[2]:
        return list(known[1])
    checked_ns = time.time_ns()
    external = _preflight(path, st.st_size)
    idents = _identities(path, external)
    newest = max([st.st_mtime_ns, st.st_ctime_ns] + [max(i[3:]) if i else checked_ns for i in idents])
    if newest < checked_ns - _SETTLED_NS:
        with _passed_lock:
            _passed[key] = (ident, tuple(external), idents)
            _passed.move_to_end(key)
            while len(_passed) > _PASSED_MAX:
                _passed.popitem(last=False)
    return external


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime ns, ctime ns): what changes when a file's bytes may have.

    The ctime is there because a rewrite in place can set the mtime back (``os.utime``,
    ``touch -d``) but not the ctime: a trial rewrote a model's weights with the same size,
    restored the mtime, and the model answered from the damaged weights (git's index keeps it too).
    """
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _identities(path: Path, names) -> tuple:
    """Identities of the external data files ``names`` beside ``path`` (None: unreadable)."""
    out, folder = [], os.path.dirname(path)
    for name in names:
        try:
            out.append(file_identity(os.stat(os.path.join(folder, name))))
        except OSError:
            out.append(None)
    return tuple(out)


def _preflight(path: Path, size: int) -> list[str]:
    """The checks themselves (see :func:`preflight`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelLoadError(f"{path.name}: cannot read the model file ({exc.strerror})") from exc
    if size == 0:
        raise ModelLoadError(f"{path.name}: the model file is empty (0 bytes)")
    if head.startswith(LFS_POINTER):
        raise ModelLoadError(f"{path.name}: is a Git LFS pointer ({size} bytes), not the model; "
                             "fetch the real file (git lfs pull)")
    if not head.strip(b"\0"):
        raise ModelLoadError(f"{path.name}: starts with only zero bytes (a pre-allocated or unwritten file)")
    suffix = path.suffix.lower()
    if suffix in _FLATBUFFER_IDS:
        _check_flatbuffer(path, head, size, _FLATBUFFER_IDS[suffix])
    elif suffix == ".onnx":
        if size > 64 << 20:
            return []  # a big single-file graph: its structure walk would cost a read of it all
        try:
            data = path.read_bytes()
            return _check_onnx(path, data)
        except _Corrupt as exc:
            raise ModelLoadError(f"{path.name}: not a valid ONNX model ({exc})") from None
        except OSError as exc:
            raise ModelLoadError(f"{path.name}: cannot read the model file ({exc.strerror})") from exc
    return []


def _check_flatbuffer(path: Path, head: bytes, size: int, ident: bytes) -> None:
    if size < 8 or head[4:8] != ident:
        raise ModelLoadError(f"{path.name}: wrong magic number: bytes 4-8 are {head[4:8]!r}, "
                             f"a {path.suffix} file has {ident!r}")
    (root,) = struct.unpack_from("<I", head, 0)
    if not 8 <= root < size:
        raise ModelLoadError(f"{path.name}: flatbuffer root offset {root} lies outside the file ({size} bytes): "
                             "truncated or corrupt")


# -- protobuf wire format (just enough of onnx.proto to walk ModelProto -> GraphProto) ----------

def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt(f"varint runs past its field at byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int):
    """Yield (field number, wire type, value) of one message; length-delimited values are
    (start, stop) pairs. Raises _Corrupt when anything runs past ``end``."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _Corrupt(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + n), pos + n
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise _Corrupt(f"wire type {wire} (field {num}) is not valid here")
        if pos > end:
            raise _Corrupt(f"field {num} runs past the end of its message (truncated?)")
        yield num, wire, value


def _check_onnx(path: Path, buf: bytes) -> list[str]:
    """Walk the graph; returns the external data files it uses."""
    ir = graph = None
    opsets = 0
    for num, wire, value in _fields(buf, 0, len(buf)):
        if num == 1 and wire == 0:
            ir = value
        elif num == 8 and wire == 2:
            opsets += 1
        elif num == 7 and wire == 2:
            graph = value
    if ir is None or ir not in _IR_VERSIONS:
        raise _Corrupt(f"ir_version {ir} is missing or not one this runtime reads ({_IR_VERSIONS.start}-"
                       f"{_IR_VERSIONS.stop - 1})")
    if not opsets:
        raise _Corrupt("no opset_import")
    if graph is None:
        raise _Corrupt("no graph")
    nodes, external = 0, []
    for num, wire, value in _fields(buf, *graph):
        if num == 1 and wire == 2:
            nodes += 1
            for _ in _fields(buf, *value):  # NodeProto structure
                pass
        elif num == 5 and wire == 2:
            location = _check_initializer(path, buf, *value)
            if location and location not in external:
                external.append(location)
    if not nodes:
        raise _Corrupt("the graph has no nodes")
    return external


def _check_initializer(path: Path, buf: bytes, start: int, stop: int) -> str | None:
    dims: list[int] = []
    dtype = location_kind = 0
    external: dict[str, str] = {}
    for num, wire, value in _fields(buf, start, stop):
        if num == 1 and wire == 0:
            dims.append(value)
        elif num == 1 and wire == 2:  # packed dims
            pos, end = value
            while pos < end:
                d, pos = _varint(buf, pos, end)
                dims.append(d)
        elif num == 2 and wire == 0:
            dtype = value
        elif num == 14 and wire == 0:
            location_kind = value
        elif num == 13 and wire == 2:
            kv = {n: bytes(buf[v[0]:v[1]]) for n, w, v in _fields(buf, *value) if w == 2}
            try:
                external[kv.get(1, b"").decode()] = kv.get(2, b"").decode()
            except UnicodeDecodeError:
                raise _Corrupt("external_data entry is not UTF-8") from None
    if location_kind != 1:
        return None
    _check_external(path, dims, dtype, external)
    return external.get("location")


def _check_external(path: Path, dims: list[int], dtype: int, external: dict[str, str]) -> None:
    location = external.get("location", "")
    if not location or os.path.isabs(location) or "/" in location or "\\" in location or location in (".", ".."):
        raise _Corrupt(f"external data location {location!r} must name a file beside the model")
    target = path.parent / location
    try:
        data_size = target.stat().st_size
    except OSError:
        raise _Corrupt(f"external data file {location!r} is missing") from None
    try:
        offset = int(external.get("offset", "0"))
        length = int(external["length"]) if "length" in external else data_size - offset
    except ValueError:
        raise _Corrupt(f"external data of {location!r}: offset/length are not integers") from None
    elem = _ELEM_BYTES.get(dtype, 0)
    if not elem:
        raise _Corrupt(f"tensor data type {dtype} cannot be stored as external data")
    want = elem
    for d in dims:
        want *= d
    if offset < 0 or length != want:
        raise _Corrupt(f"external data of {location!r}: {length} bytes at offset {offset}, but the tensor "
                       f"{dims} needs {want}")
    if offset + length > data_size:
        raise _Corrupt(f"external data file {location!r} holds {data_size} bytes; the tensor needs bytes "
                       f"{offset}-{offset + length} (truncated?)")


def probe(session, feeds: dict, n_labels: int, name: str) -> None:
    """Run a freshly loaded model once on ``feeds`` (inputs of its manifest contract) and check
    that it answers ``n_labels`` finite scores, before the model is marked ready.

    Catches damage that a runtime accepts at load: a graph whose declared inputs or outputs no
    longer fit the manifest's contract (one run of a small model: ~20 µs).

    Raises:
        ModelLoadError: the probe run fails or answers the wrong shape or non-finite values.
    """
    import numpy as np

    from .errors import EdgeEcoError

    try:
        out = np.asarray(session.run(feeds))
    except EdgeEcoError as exc:
        raise ModelLoadError(f"{name}: the model loads but fails a probe run with its manifest's input "
                             f"contract: {exc}") from exc
    if out.size != n_labels or out.dtype.kind != "f" or not np.isfinite(out).all():
        raise ModelLoadError(f"{name}: a probe run answered shape {out.shape} {out.dtype} (finite: "
                             f"{bool(np.isfinite(out).all()) if out.dtype.kind == 'f' else False}); the manifest "
                             f"declares {n_labels} labels")

"""Router weights file: a msgpack header plus raw little-endian arrays, memory-mapped on read.

Layout::

    b"EEROUTE1" | u32 header_len (LE) | msgpack header | zero padding | arrays, each 64-byte aligned

The header holds ``kind``, ``dim``, ``n_out`` and, per array, ``dtype``, ``shape``, ``offset``
(from the start of the file) and ``nbytes``.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import msgpack
import numpy as np

from .errors import IntegrityError

MAGIC = b"EEROUTE1"
_ALIGN = 64
_DTYPES = {"int8": np.int8, "float32": np.float32}


def write_router(path: Path, kind: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write ``arrays`` (int8/float32) under a msgpack header; deterministic bytes for equal input."""
    specs, blobs, offset = {}, [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        dtype = a.dtype.name
        if dtype not in _DTYPES:
            raise TypeError(f"array {name!r}: dtype {dtype} not supported")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": dtype, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)}
        blobs.append(raw + b"\0" * (-len(raw) % _ALIGN))
        offset += len(blobs[-1])
    header = {"kind": kind, "arrays": specs, **(meta or {})}
    # Offsets are made absolute once the header size is known; the size does not depend on them
    # as long as the packed integers keep their width, so pack twice with a fixed base.
    packed = msgpack.packb(header, use_bin_type=True)
    base = len(MAGIC) + 4 + len(packed) + 64
    base += -base % _ALIGN
    for s in specs.values():
        s["offset"] += base
    packed = msgpack.packb(header, use_bin_type=True)
    head = MAGIC + struct.pack("<I", len(packed)) + packed
    if len(head) > base:
        raise AssertionError("router header grew past its reserved space")
    from .swap import write_atomic  # a new file renamed into place: a running process may map the old one

    write_atomic(Path(path), head + b"\0" * (base - len(head)) + b"".join(blobs))


def read_router(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Map a router file; returns (header, arrays viewing the mapping read-only).

    Raises:
        IntegrityError: wrong magic, a truncated file, or a header that does not describe it.
    """
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # empty file
            raise IntegrityError(f"{path}: router file is empty") from exc
    if mm[:len(MAGIC)] != MAGIC or len(mm) < len(MAGIC) + 4:
        raise IntegrityError(f"{path}: not a router file (bad magic)")
    (n,) = struct.unpack_from("<I", mm, len(MAGIC))
    try:
        header = msgpack.unpackb(mm[len(MAGIC) + 4:len(MAGIC) + 4 + n], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{path}: router header is not valid msgpack") from exc
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise IntegrityError(f"{path}: router header is not a map with an 'arrays' table")
    arrays = {}
    for name, s in header["arrays"].items():
        try:
            dtype = _DTYPES[s["dtype"]]
            shape = [int(x) for x in s["shape"]]
            offset, nbytes = int(s["offset"]), int(s["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{path}: array {name!r} has a malformed description") from exc
        count = int(np.prod(shape)) if shape else 1
        if offset < 0 or offset + nbytes > len(mm) or count * np.dtype(dtype).itemsize != nbytes:
            raise IntegrityError(f"{path}: array {name!r} is truncated or malformed")
        arrays[name] = np.frombuffer(mm, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                     offset=offset).reshape(shape)
    return header, arrays

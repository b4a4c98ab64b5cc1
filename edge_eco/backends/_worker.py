"""The sandboxed worker process of ``backends/isolated.py``: one model, msgpack over a pipe.

Started as ``python -I -c ... ROOT AS_BYTES CPU_S`` with a clean environment and only stdin,
stdout and stderr open (inside a fresh network namespace where ``unshare`` allows). It applies
its memory and CPU limits before importing any runtime, then serves frames: a 4-byte
little-endian length and a msgpack map. Requests: ``{"op": "open", backend, path, output,
threads, optimize}``, ``{"op": "run", "feeds": {name: [dtype, shape, bytes]}}``,
``{"op": "close"}``; replies ``{"ok": true, ...}`` or ``{"ok": false, "error": type name,
"message": text}``. Nothing here prints: stdout carries frames only.
"""

from __future__ import annotations

import os
import resource
import struct
import sys
from typing import Any, BinaryIO

MAX_FRAME_BYTES = 256 << 20
_LEN = struct.Struct("<I")


def write_frame(fh: BinaryIO, obj: Any) -> None:
    """Write one length-prefixed msgpack frame and flush."""
    import msgpack

    body = msgpack.packb(obj, use_bin_type=True)
    fh.write(_LEN.pack(len(body)) + body)
    fh.flush()


def read_exact(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``; fewer only at end of file."""
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def encode_array(a) -> list:
    return [a.dtype.str, list(a.shape), a.tobytes()]


def decode_array(v: list):
    import numpy as np

    dtype, shape, data = v
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _limit(kind: int, value: int) -> None:
    if value > 0:
        soft, hard = resource.getrlimit(kind)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (cap, cap))  # the hard limit too: the worker cannot raise it


def main(argv: list[str]) -> None:
    """Serve one model until ``close`` or end of input."""
    as_bytes, cpu_s = int(argv[0]), int(argv[1])
    _limit(resource.RLIMIT_AS, as_bytes)
    _limit(resource.RLIMIT_CPU, cpu_s)
    _limit(resource.RLIMIT_CORE, 0) if hasattr(resource, "RLIMIT_CORE") else None
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # a runtime that prints cannot corrupt the frames
    import msgpack

    from edge_eco.backends import open_model
    from edge_eco.errors import EdgeEcoError

    session = None
    while True:
        head = read_exact(0, 4)
        if len(head) < 4:
            return
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME_BYTES:
            return
        msg = msgpack.unpackb(read_exact(0, n), raw=False)
        try:
            if msg["op"] == "open":
                session = open_model(msg["backend"], msg["path"], output=msg["output"], threads=msg["threads"],
                                     optimize=msg["optimize"])
                write_frame(out, {"ok": True, "pid": os.getpid()})
            elif msg["op"] == "run":
                feeds = {k: decode_array(v) for k, v in msg["feeds"].items()}
                write_frame(out, {"ok": True, "out": encode_array(session.run(feeds))})
            elif msg["op"] == "close":
                write_frame(out, {"ok": True})
                return
            else:
                write_frame(out, {"ok": False, "error": "InferenceError", "message": f"unknown op {msg['op']!r}"})
        except EdgeEcoError as exc:
            write_frame(out, {"ok": False, "error": type(exc).__name__, "message": str(exc)})
        except MemoryError:
            write_frame(out, {"ok": False, "error": "InferenceError", "message": "the worker hit its memory limit"})
        except Exception as exc:  # noqa: BLE001 - reported to the host as an error, never a crash
            write_frame(out, {"ok": False, "error": "InferenceError", "message": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main(sys.argv[1:])

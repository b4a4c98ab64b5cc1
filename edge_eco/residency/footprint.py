"""Measured memory footprints: anonymous and file-backed resident bytes of this process.

Linux only; elsewhere every reading is ``None`` and the residency manager keeps its predictions.
The footprint comes from the kernel's RSS counters in ``/proc/self/status`` (``RssAnon``,
``RssFile`` + ``RssShmem``): ~20 us to read, against ~0.6 ms for ``/proc/self/smaps_rollup``,
which walks the page tables of every mapping (with ONNX Runtime loaded, three such reads were
~2.4 ms of a specialist's ~3.8 ms miss). Both read the same deltas here (kernel 6.18, around loads of
five clinc150 models: equal, or within one page); before Linux 6.2 the counters were cached per thread
and lagged by up to 64 pages each, so there ``smaps_rollup`` is read instead. Also the two OS hints the
manager uses: dropping a model's file pages from this process (the *cold* state: the mapping
stays, the pages come back from the page cache on the next touch) and returning freed heap to the
OS after an unload (``malloc_trim``). Hints that fail are reported to the caller, never raised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path

ROLLUP = Path("/proc/self/smaps_rollup")
MAPS = Path("/proc/self/maps")
STATUS = Path("/proc/self/status")
_MADV_DONTNEED = 4


@dataclass(frozen=True)
class Footprint:
    """Resident bytes split by backing: anonymous (heap, packed weights) and file-backed (mapped files)."""

    anon_bytes: int
    file_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.anon_bytes + self.file_bytes

    def __sub__(self, other: "Footprint") -> "Footprint":
        return Footprint(self.anon_bytes - other.anon_bytes, self.file_bytes - other.file_bytes)


def parse_rollup(text: str) -> Footprint:
    """Footprint from the text of ``smaps_rollup``: Anonymous, and Rss minus Anonymous."""
    fields = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return Footprint(anon, max(rss - anon, 0))


def parse_status(data: bytes) -> Footprint | None:
    """Footprint from ``/proc/self/status``: RssAnon, and RssFile + RssShmem (None: fields missing)."""
    fields = {}
    for line in data.split(b"\n"):
        if line.startswith(b"Rss"):
            name, _, value = line.partition(b":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == b"kB" and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
    if not {b"RssAnon", b"RssFile", b"RssShmem"} <= fields.keys():
        return None
    return Footprint(fields[b"RssAnon"], fields[b"RssFile"] + fields[b"RssShmem"])


def _exact_counters(release: str) -> bool:
    """Whether this kernel's RSS counters are exact (Linux 6.2 and later)."""
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 2)


_USE_STATUS = hasattr(os, "uname") and _exact_counters(os.uname().release)


def read_footprint() -> Footprint | None:
    """This process's footprint now, or None where /proc is unavailable (~20 us from the RSS
    counters, ~0.6 ms from smaps_rollup on kernels whose counters lag)."""
    try:
        if _USE_STATUS:
            with open(STATUS, "rb") as fh:
                got = parse_status(fh.read())
            if got is not None:
                return got
        return parse_rollup(ROLLUP.read_text())
    except OSError:
        return None


def _file_maps(data: bytes, paths: set[str]):
    """(start, end, perms) of each mapping of ``paths`` in the text of /proc/self/maps: the paths
    are searched for in the whole text (C speed) rather than each of its ~1,000 lines split."""
    for path in paths:
        needle = os.fsencode(path)
        at = data.find(needle)
        while at >= 0:
            end = at + len(needle)
            if end == len(data) or data[end] == 0x0A:  # the path ends its line (not "... (deleted)")
                start = data.rfind(b"\n", 0, at) + 1
                fields = data[start:at].split()
                if len(fields) == 5 and b"-" in fields[0]:
                    lo, hi = (int(x, 16) for x in fields[0].split(b"-"))
                    yield lo, hi, fields[1]
            at = data.find(needle, end)


def mapped_bytes(paths: set[str]) -> int:
    """Bytes of this process's address space mapped from the files ``paths`` (absolute): the most
    their file-backed pages can grow to as requests touch them. 0 where /proc is unavailable."""
    try:
        data = MAPS.read_bytes()
    except OSError:
        return 0
    return sum(hi - lo for lo, hi, _ in _file_maps(data, paths))


def drop_file_pages(paths: set[str]) -> int:
    """Advise the kernel to drop this process's resident pages of the files ``paths``.

    The mappings stay valid: the next access faults the pages back in from the page cache (the
    *cold* state). Returns how many mappings were advised; 0 where it is not supported.
    """
    libc = _libc()
    if libc is None:
        return 0
    try:
        data = MAPS.read_bytes()
    except OSError:
        return 0
    done = 0
    for lo, hi, perms in _file_maps(data, paths):
        if b"w" not in perms:  # read-only file maps only
            if libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) == 0:
                done += 1
    return done


def release_heap() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); False where unsupported."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


_LIBC: list = []


def _libc():
    if not _LIBC:
        name = ctypes.util.find_library("c") if os.name == "posix" else None
        try:
            lib = ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            lib = None
        if lib is not None:
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC.append(lib)
    return _LIBC[0]

"""Measured memory footprints: anonymous and file-backed resident bytes of this process.

Linux only (``/proc/self/smaps_rollup``, per-mapping ``/proc/self/smaps``); elsewhere every
reading is ``None`` and the residency manager keeps its predictions. Also the two OS hints the
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
SMAPS = Path("/proc/self/smaps")
MAPS = Path("/proc/self/maps")
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


def read_footprint() -> Footprint | None:
    """This process's footprint now, or None where /proc is unavailable (~60 us to read)."""
    try:
        return parse_rollup(ROLLUP.read_text())
    except OSError:
        return None


def mapped_file_bytes(paths: set[str]) -> int | None:
    """Resident bytes of this process's mappings of ``paths`` (absolute), from /proc/self/smaps."""
    try:
        text = SMAPS.read_text()
    except OSError:
        return None
    total, current = 0, False
    for line in text.splitlines():
        first = line.split(maxsplit=5)
        if first and "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
            current = len(first) == 6 and first[5] in paths
        elif current and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def mapped_bytes(paths: set[str]) -> int:
    """Bytes of this process's address space mapped from the files ``paths`` (absolute): the most
    their file-backed pages can grow to as requests touch them. 0 where /proc is unavailable."""
    try:
        text = MAPS.read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in paths:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            total += hi - lo
    return total


def drop_file_pages(paths: set[str]) -> int:
    """Advise the kernel to drop this process's resident pages of the files ``paths``.

    The mappings stay valid: the next access faults the pages back in from the page cache (the
    *cold* state). Returns how many mappings were advised; 0 where it is not supported.
    """
    libc = _libc()
    if libc is None:
        return 0
    try:
        text = MAPS.read_text()
    except OSError:
        return 0
    done = 0
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in paths and "w" not in parts[1]:  # read-only file maps only
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
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

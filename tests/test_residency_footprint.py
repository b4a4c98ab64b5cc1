"""Footprint readings (residency/footprint.py): the RSS counters of /proc/self/status against
smaps_rollup's page walk, and the search of /proc/self/maps for a model's mappings."""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from edge_eco.residency import footprint as fp

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")


def test_parse_status_takes_anon_and_file_plus_shmem():
    text = b"Name:\tpython\nVmRSS:\t  9000 kB\nRssAnon:\t  5000 kB\nRssFile:\t  3000 kB\nRssShmem:\t  1000 kB\n"
    assert fp.parse_status(text) == fp.Footprint(5000 * 1024, 4000 * 1024)
    assert fp.parse_status(b"Name:\tpython\nVmRSS:\t 9000 kB\n") is None  # an old kernel: no split


def test_kernels_before_6_2_read_smaps_rollup():
    assert fp._exact_counters("6.18.44-fc-v1272") and fp._exact_counters("6.2.0")
    assert not fp._exact_counters("6.1.90") and not fp._exact_counters("5.15.0-91-generic")
    assert not fp._exact_counters("weird")


@linux
def test_status_and_rollup_agree_around_an_allocation():
    before = (fp.parse_status(fp.STATUS.read_bytes()), fp.parse_rollup(fp.ROLLUP.read_text()))
    block = np.ones(16 << 20, np.uint8)  # 16 MiB of touched anonymous pages
    after = (fp.parse_status(fp.STATUS.read_bytes()), fp.parse_rollup(fp.ROLLUP.read_text()))
    grown = [a.anon_bytes - b.anon_bytes for a, b in zip(after, before)]
    assert all(abs(g - (16 << 20)) <= 1 << 20 for g in grown), grown
    if fp._USE_STATUS:
        assert abs(grown[0] - grown[1]) <= 256 << 10
    del block


def test_file_maps_finds_whole_lines_only():
    maps = (b"7f00-7f10 r--p 00000000 08:01 12 /m/a.onnx.data\n"
            b"7f10-7f30 r--p 00001000 08:01 12 /m/a.onnx.data\n"
            b"7f30-7f40 rw-p 00000000 08:01 13 /m/a.onnx.data.old\n"
            b"7f40-7f50 r--p 00000000 08:01 14 /m/b.onnx (deleted)\n"
            b"7f50-7f60 r--p 00000000 08:01 14 /m/b.onnx")
    assert list(fp._file_maps(maps, {"/m/a.onnx.data"})) == [(0x7F00, 0x7F10, b"r--p"), (0x7F10, 0x7F30, b"r--p")]
    assert list(fp._file_maps(maps, {"/m/b.onnx"})) == [(0x7F50, 0x7F60, b"r--p")]


@linux
def test_mapped_bytes_of_a_real_mapping(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * mmap.PAGESIZE))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[0] is not None
        assert fp.mapped_bytes({str(path)}) == 3 * mmap.PAGESIZE
    assert fp.mapped_bytes({str(path)}) == 0

"""Per-model attribution (residency.meter): file bytes from the model's own mappings only, anon
growth clamped at the model's cap (other threads' growth during the load), a runtime's one-time
start-up paid by a probe and kept out of the model's footprint, and one outlier that stops
counting after a few loads."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from edge_eco.residency.footprint import Footprint, read_footprint
from edge_eco.residency.meter import WINDOW, Meter

MiB = 1 << 20


class MappedSession:
    """Maps a file and touches its pages, like a runtime mapping a model."""

    def __init__(self, path: Path) -> None:
        self._fh = path.open("rb")
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)

    def warm(self) -> None:
        sum(self._map[i] for i in range(0, len(self._map), 4096))

    def close(self) -> None:
        self._map.close()
        self._fh.close()


def test_file_bytes_are_the_models_own_mappings_and_foreign_growth_is_capped(tmp_path):
    model, other = tmp_path / "model.bin", tmp_path / "other.bin"
    model.write_bytes(np.random.default_rng(0).bytes(2 * MiB))
    other.write_bytes(np.random.default_rng(1).bytes(8 * MiB))
    keep = []

    def loader(_):
        stranger = MappedSession(other)   # another thread's file pages, touched during the load
        stranger.warm()
        keep.append(stranger)
        # Another thread's 16 MiB of new anonymous memory. An anonymous mapping, touched: a numpy array
        # could reuse heap that malloc freed earlier in this process and show no growth at all.
        heap = mmap.mmap(-1, 16 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        heap.write(b"\1" * (16 * MiB))
        keep.append(heap)
        return MappedSession(model)

    meter = Meter(read_footprint, paths=lambda m: {str(model.resolve())}, anon_cap=lambda m: 1 * MiB)
    session, _, fp, paths = meter.load("m", loader)
    try:
        assert paths == {str(model.resolve())}
        assert 2 * MiB <= fp.file_bytes < 2 * MiB + 64 * 1024   # not the 8 MiB of the other file
        assert fp.anon_bytes == 1 * MiB                         # clamped, not 16 MiB
        assert meter.capped and meter.capped[0][0] == "m" and meter.capped[0][1] > 1 * MiB  # the raw reading, over the cap
    finally:
        session.close()
        [k.close() for k in keep]


def _fake_runtime(heap: list, probes: list | None = None):
    """A loader whose first load starts a runtime (5 MB anonymous + 12 MB of libraries that stay)
    and whose every session holds 1,000 bytes; ``probes`` records the models it loads."""
    started = []

    class Sess:
        def warm(self):
            pass

        def close(self):
            heap[0] -= Footprint(1000, 0)

    def loader(m):
        if probes is not None:
            probes.append(m)
        if not started:            # the runtime's one-time start-up: 5 MB that stays
            started.append(1)
            heap[0] = Footprint(heap[0].anon_bytes + 5_000_000, heap[0].file_bytes + 12_000_000)
        heap[0] = Footprint(heap[0].anon_bytes + 1000, heap[0].file_bytes)
        return Sess()
    return loader


def test_the_runtime_start_up_goes_to_a_probe_not_to_the_first_model():
    heap = [Footprint(0, 0)]
    loader = _fake_runtime(heap)
    meter = Meter(lambda: heap[0], runtime_of=lambda m: "rt")
    _, _, fp, _ = meter.load("a", loader)
    assert fp == Footprint(1000, 0)
    assert meter.runtime_bytes["rt"] == Footprint(5_000_000, 12_000_000)
    _, _, fp, _ = meter.load("b", loader)      # no second probe
    assert fp == Footprint(1000, 0) and list(meter.runtime_bytes) == ["rt"]


def test_meters_sharing_a_record_probe_a_runtime_once_and_report_its_first_figure():
    heap, probes = [Footprint(50_000_000, 0)], []
    loader = _fake_runtime(heap, probes)
    record: dict[str, Footprint] = {}
    first = Meter(lambda: heap[0], runtime_of=lambda m: "rt", runtime_bytes=record)
    first.load("a", loader)
    heap[0] -= Footprint(400_000, 0)     # the first ecology closes; its freed heap is trimmed later
    second = Meter(lambda: heap[0], runtime_of=lambda m: "rt", runtime_bytes=record)
    _, _, fp, _ = second.load("b", loader)
    assert probes == ["a", "a", "b"]      # one probe in the process, not one per meter
    assert second.runtime_bytes == first.runtime_bytes == {"rt": Footprint(5_000_000, 12_000_000)}
    assert fp == Footprint(1000, 0)


def test_a_runtime_started_outside_the_meter_reads_zero_not_below():
    heap = [Footprint(50_000_000, 20_000_000)]

    class Sess:
        def close(self):
            heap[0] -= Footprint(300_000, 4096)   # a close that returns more than its load took

    def loader(m):
        return Sess()

    meter = Meter(lambda: heap[0], runtime_of=lambda m: "rt")
    meter.load("a", loader)
    assert meter.runtime_bytes == {"rt": Footprint(0, 0)}


def test_one_outlier_never_locks_a_model_out_and_stops_counting():
    meter = Meter(None)
    assert meter.reservation("a", 500, 1000) == 500            # the prediction until measured
    meter.record("a", 400)
    meter.record("a", 5000)                                     # an outlier over the budget
    assert meter.reservation("a", 500, 1000) == 1000            # it fitted before: the budget, not 5000
    for _ in range(WINDOW):
        meter.record("a", 400)
    assert meter.reservation("a", 500, 1000) == 400 + 7         # the outlier left the window (+1/64)
    meter.record("b", 5000)
    assert meter.reservation("b", 500, 1000) > 1000             # never fitted: BudgetError upstream


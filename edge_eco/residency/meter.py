"""Attributing memory to one model: what a load and its first run cost, and nothing else.

Method (the README's "Residency" section states the same, with its error):

- **File-backed bytes** come from the mappings of the model's own files (``/proc/self/maps``
  entries whose path is one of the model's), never from the whole-process file RSS, which also
  moves with the runtime's shared libraries and with other threads' files. Where no mapping of
  the model's files is found (a runtime that copies the file, or no /proc), the rollup delta is
  used instead.
- **Anonymous bytes** are the growth of the process's anonymous RSS across a load and its first
  run, taken under the manager's load lock (loads are serialised, so another load's growth is
  not in it). Two things besides the model can still land in that window, and both are bounded:
  a runtime's one-time start-up (LiteRT: ~4-6 MB anonymous + ~12 MB of libraries; ONNX Runtime:
  ~10 MB + ~20 MB), which is paid once per process by an unmeasured *probe* load of the first
  model of each runtime and reported as that runtime's entry (``runtime_bytes``), not charged to
  any model (meters sharing a record, as every ecology's does, :data:`PROCESS_RUNTIME_BYTES`, do
  not probe a runtime an earlier one started: they report the figure first measured, where a
  second probe would read only a started runtime's noise, often below zero); and other threads'
  allocations while the load runs, which are clamped at the model's *anonymous cap* (its file
  bytes x ``ANON_PER_FILE_BYTE`` + ``session_overhead``: a runtime may copy or pre-pack the
  weights once, plus a session's own buffers). A clamped reading is counted in ``stats.capped``.
- The reservation for the next load is the largest of the model's last ``WINDOW`` measurements
  (plus 1/64), so one outlier stops counting after ``WINDOW`` loads, and it is never more than
  the budget when the model once fitted it.

Error: a reading can still include up to one cap's worth of another thread's growth (it is then
charged to the model, which over-reserves: safe for the budget); it cannot under-count the
model's own anonymous growth unless that exceeds the cap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from .footprint import Footprint, mapped_bytes, release_heap

WINDOW = 5
ANON_PER_FILE_BYTE = 1  # weights copied or pre-packed once (LiteRT XNNPACK, ORT prepacking)

# A runtime starts up once per process, whichever ecology loads it first: its figure is shared.
PROCESS_RUNTIME_BYTES: dict[str, Footprint] = {}
_PROBE_LOCK = threading.Lock()  # one probe at a time, so two meters cannot both pay a start-up


class Meter:
    """Measures loads (serialised by the caller) and keeps each model's recent footprints.

    Args:
        read: the process footprint now (Footprint, total bytes, or None where unknown).
        paths: model id -> absolute paths of its files; None: no per-mapping attribution.
        runtime_of: model id -> the name of its runtime; the first load of each runtime is
            preceded by an unmeasured probe load; None: no probe.
        anon_cap: model id -> the most anonymous bytes a load of it is charged; None: no cap.
        file_bytes: paths -> bytes of this process's mappings of them (default: /proc/self/maps).
        warm: run each loaded session once (``session.warm()``) inside the measurement; False
            when the loader already runs it (an ecology's load probe is its first run).
        runtime_bytes: the record of runtimes already started (name -> one-time footprint),
            shared with other meters of the process (:data:`PROCESS_RUNTIME_BYTES`); None: this
            meter's own.
    """

    def __init__(self, read: Callable[[], Footprint | int | None] | None,
                 paths: Callable[[str], set[str]] | None = None,
                 runtime_of: Callable[[str], str] | None = None,
                 anon_cap: Callable[[str], int] | None = None,
                 file_bytes: Callable[[set[str]], int] = mapped_bytes,
                 runtime_bytes: dict[str, Footprint] | None = None, warm: bool = True) -> None:
        self._read_fn, self._paths, self._runtime_of, self._warm = read, paths, runtime_of, warm
        self._anon_cap, self._file_bytes = anon_cap, file_bytes
        self._recent: dict[str, deque[int]] = {}
        self._started: dict[str, Footprint] = {} if runtime_bytes is None else runtime_bytes
        self.runtime_bytes: dict[str, Footprint] = {}  # the runtimes this meter's loads use
        self.capped: list[tuple[str, int, int]] = []  # (model, anon read, anon charged)

    def read(self) -> Footprint | None:
        """The process footprint now, or None."""
        if self._read_fn is None:
            return None
        v = self._read_fn()
        return Footprint(v, 0) if isinstance(v, int) else v

    def measured_need(self, model_id: str) -> int | None:
        """Its recent worst measurement plus 1/64, or None before the first."""
        recent = self._recent.get(model_id)
        return max(recent) + -(-max(recent) // 64) if recent else None

    def reservation(self, model_id: str, predicted: int, budget_bytes: int) -> int:
        """Bytes to reserve before loading ``model_id``: its recent worst, or ``predicted``."""
        need = self.measured_need(model_id)
        if need is None:
            return predicted
        if budget_bytes and need > budget_bytes and min(self._recent[model_id]) <= budget_bytes:
            return budget_bytes  # it has fitted before: one outlier must not lock it out
        return need

    def load(self, model_id: str, loader: Callable[[str], object]) -> tuple[object, float, Footprint | None, frozenset]:
        """Load and warm ``model_id`` (caller serialises loads); returns (session, load ms,
        the footprint attributed to it or None, its paths)."""
        self._probe(model_id, loader)
        before = self.read()
        t0 = time.perf_counter()
        session = loader(model_id)
        load_ms = (time.perf_counter() - t0) * 1e3
        try:
            if self._warm and hasattr(session, "warm"):
                session.warm()  # the first run's pages and buffers belong to the footprint
        except BaseException:
            session.close()
            raise
        after = self.read()
        paths = frozenset(self._paths(model_id)) if self._paths else frozenset()
        if before is None or after is None:
            return session, load_ms, None, paths
        grown = after - before
        file_b = self._file_bytes(set(paths)) if paths else 0
        file_b = file_b if file_b > 0 else max(grown.file_bytes, 0)
        anon = max(grown.anon_bytes, 0)
        if self._anon_cap is not None:
            cap = self._anon_cap(model_id)
            if anon > cap:
                self.capped.append((model_id, anon, cap))
                anon = cap
        return session, load_ms, Footprint(anon, file_b), paths

    def record(self, model_id: str, total_bytes: int) -> None:
        """Remember a measured footprint for the next reservation."""
        self._recent.setdefault(model_id, deque(maxlen=WINDOW)).append(total_bytes)

    def _probe(self, model_id: str, loader: Callable[[str], object]) -> None:
        """Pay a runtime's one-time start-up once, on a load that is not charged to any model."""
        if self._runtime_of is None:
            return
        name = self._runtime_of(model_id)
        if name in self.runtime_bytes:
            return
        with _PROBE_LOCK:
            if name not in self._started:  # else an earlier meter sharing the record paid it
                self._started[name] = self._start_up(model_id, loader)
            self.runtime_bytes[name] = self._started[name]

    def _start_up(self, model_id: str, loader: Callable[[str], object]) -> Footprint:
        """The footprint a probe load (and run) of ``model_id`` leaves behind once closed."""
        before = self.read()
        session = loader(model_id)
        try:
            if self._warm and hasattr(session, "warm"):
                session.warm()
        finally:
            session.close()
        release_heap()
        after = self.read()
        # Clamped: a runtime started outside any meter reads as noise around zero, not a cost.
        grown = after - before if before is not None and after is not None else Footprint(0, 0)
        return Footprint(max(grown.anon_bytes, 0), max(grown.file_bytes, 0))

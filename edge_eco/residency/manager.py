"""Residency: which models are loaded, within a byte budget. Shell (owns sessions and threads).

Policy here is LRU by bytes: reserve the predicted footprint before a load, evict the least
recently used idle models until it fits, and (when a ``measure`` is given) replace the
prediction by the measured footprint growth across the load afterwards. Whole-process RSS is
too noisy to attribute on its own (the first load also pays the runtime's start-up), so the
runtime uses predictions from file sizes until per-mapping accounting replaces them. A model in use is never evicted; concurrent misses
on one model trigger one load (single-flight).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..backends import Session
from ..errors import BudgetError

SESSION_OVERHEAD_BYTES = 350_000  # measured per live ORT session of a small model (MEASURED.md)


class _Busy(BudgetError):
    """The model fits the budget, but the models that would make room are in use right now."""


@dataclass
class _Slot:
    session: Session | None = None
    bytes: int = 0
    users: int = 0
    loading: threading.Event | None = None
    error: BaseException | None = None


@dataclass
class ResidencyStats:
    """Counters of loads and evictions, with their times in ms."""

    loads: int = 0
    evictions: int = 0
    load_ms: list[float] = field(default_factory=list)
    evict_ms: list[float] = field(default_factory=list)


class Residency:
    """Loads models on demand and keeps the resident footprint within ``budget_bytes``.

    Args:
        loader: model id -> a loaded Session (does the actual I/O).
        predict_bytes: model id -> footprint to reserve before its first load.
        budget_bytes: limit on the sum of resident footprints (0 = unlimited).
        measure: current footprint in bytes, read around each load (None: keep predictions).
        wait_s: how long a miss waits for models in use to be released before BudgetError.
    """

    def __init__(self, loader: Callable[[str], Session], predict_bytes: Callable[[str], int],
                 budget_bytes: int = 0, measure: Callable[[], int] | None = None,
                 wait_s: float = 30.0) -> None:
        self._loader, self._predict, self._measure = loader, predict_bytes, measure
        self.budget_bytes = budget_bytes
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a model in use was released
        self.wait_s = wait_s
        self._load_lock = threading.Lock()  # loads one at a time, so RSS deltas are attributable
        self._measured: dict[str, int] = {}
        self.stats = ResidencyStats()

    @property
    def resident_bytes(self) -> int:
        """Sum of the footprints of loaded (and loading) models."""
        with self._lock:
            return sum(s.bytes for s in self._slots.values())

    def resident(self) -> list[str]:
        """Ids of loaded models, least recently used first."""
        with self._lock:
            return [k for k, s in self._slots.items() if s.session is not None]

    def is_resident(self, model_id: str) -> bool:
        with self._lock:
            slot = self._slots.get(model_id)
            return slot is not None and slot.session is not None

    @contextmanager
    def use(self, model_id: str) -> Iterator[Session]:
        """Hold ``model_id`` loaded (and unevictable) for the duration of the block."""
        session = self._acquire(model_id)
        try:
            yield session
        finally:
            with self._lock:
                slot = self._slots.get(model_id)
                if slot is not None:  # None when close() ran while the model was in use
                    slot.users -= 1
                self._released.notify_all()

    def _acquire(self, model_id: str) -> Session:
        give_up = time.monotonic() + self.wait_s
        while True:
            with self._lock:
                slot = self._slots.get(model_id)
                if slot is not None and slot.session is not None:
                    slot.users += 1
                    self._slots.move_to_end(model_id)
                    return slot.session
                if slot is None or slot.loading is None:
                    need = self._measured.get(model_id) or self._predict(model_id)
                    try:
                        victims = self._make_room(model_id, need)
                    except _Busy:
                        # It fits the budget, but the models that would make room are in use:
                        # wait for one to be released (a waiting thread holds no model, so
                        # this cannot deadlock), then look again.
                        left = give_up - time.monotonic()
                        if left <= 0:
                            raise
                        self._released.wait(min(left, 0.5))
                        continue
                    slot = self._slots.setdefault(model_id, _Slot())
                    slot.bytes, slot.loading, slot.error = need, threading.Event(), None
                    leader = True
                else:
                    event, leader = slot.loading, False
            if leader:
                self._close(victims)
                return self._load(model_id, slot)
            event.wait()
            with self._lock:
                if slot.error is not None and slot.session is None:
                    raise slot.error

    def _make_room(self, model_id: str, need: int) -> list[tuple[str, _Slot]]:
        """Pick LRU idle victims so that ``need`` fits; caller holds the lock."""
        if not self.budget_bytes:
            return []
        if need > self.budget_bytes:
            raise BudgetError(f"model {model_id!r} needs {need} bytes; the budget is {self.budget_bytes}")
        used = sum(s.bytes for s in self._slots.values())
        chosen = []
        for key, slot in self._slots.items():  # least recently used first
            if used + need <= self.budget_bytes:
                break
            if key != model_id and slot.session is not None and slot.users == 0:
                chosen.append(key)
                used -= slot.bytes
        if used + need > self.budget_bytes:  # nothing was popped: the LRU order is unchanged
            raise _Busy(f"model {model_id!r} needs {need} bytes but only {self.budget_bytes - used} "
                              "can be freed now (other models are in use)")
        return [(key, self._slots.pop(key)) for key in chosen]

    def _close(self, victims: list[tuple[str, _Slot]]) -> None:
        for _, slot in victims:
            t0 = time.perf_counter()
            slot.session.close()
            with self._lock:
                self.stats.evictions += 1
                self.stats.evict_ms.append((time.perf_counter() - t0) * 1e3)

    def _load(self, model_id: str, slot: _Slot) -> Session:
        try:
            with self._load_lock:
                before = self._measure() if self._measure else 0
                t0 = time.perf_counter()
                session = self._loader(model_id)
                load_ms = (time.perf_counter() - t0) * 1e3
                grown = self._measure() - before if self._measure else 0
        except BaseException as exc:
            with self._lock:
                slot.error = exc
                self._slots.pop(model_id, None)
                slot.loading.set()
                slot.loading = None
                self._released.notify_all()
            raise
        with self._lock:
            if grown > 0:  # the prediction self-corrects from the first measured load
                slot.bytes = self._measured[model_id] = grown
            slot.session, slot.users = session, 1
            self.stats.loads += 1
            self.stats.load_ms.append(load_ms)
            slot.loading.set()
            slot.loading = None
            over = self._over_budget_victims(model_id)
        self._close(over)
        return session

    def _over_budget_victims(self, model_id: str) -> list[tuple[str, _Slot]]:
        """When a measured footprint beat its prediction, evict idle LRU models to get back
        under the budget; caller holds the lock."""
        if not self.budget_bytes:
            return []
        used = sum(s.bytes for s in self._slots.values())
        chosen = []
        for key, slot in self._slots.items():
            if used <= self.budget_bytes:
                break
            if key != model_id and slot.session is not None and slot.users == 0:
                chosen.append(key)
                used -= slot.bytes
        return [(key, self._slots.pop(key)) for key in chosen]

    def close(self) -> None:
        """Close every loaded model."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
        for slot in slots:
            if slot.session is not None:
                slot.session.close()

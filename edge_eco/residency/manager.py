"""The residency manager: loads models on demand and keeps their footprint within a byte budget.

Shell (owns sessions, threads and locks). The ledger — bytes charged to resident, loading and
unloading models — never exceeds the budget: a miss picks its victims and reserves the rest of
its need at once, under the lock; the victims' bytes stay charged (as *unloading*) until their
``close()`` has returned, and only then pass to the model being loaded. A model in use is never
evicted; concurrent misses on one model cause one load (single-flight).

Footprints are measured (``measure`` -> :class:`~.footprint.Footprint`) around each load and its
first run (``session.warm()``), split into anonymous and file-backed bytes, and replace the
prediction from then on. A resident model can be *demoted* to cold: its file pages are dropped
from the process (the session stays; they fault back in from the page cache), which frees its
file-backed bytes; room is made by demoting first, evicting second. Victims are chosen by the
cost-aware policy (:mod:`.policy`: the least expected loss, or LRU while LRU's virtual cache has
lost less lately — :class:`~.policy.Experts`) or by LRU.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

from ..backends import Session, set_run_deadline
from ..errors import BudgetError
from . import policy as pol
from .state import ResidencyStats, _Busy, _Slot
from .footprint import Footprint
from .backoff import LoadBackoff
from .meter import Meter

SESSION_OVERHEAD_BYTES = 350_000  # measured per live ORT session of a small model (MEASURED.md)


class Residency:
    """Loads models on demand and keeps the charged footprint within ``budget_bytes``.

    Args:
        loader: model id -> a loaded Session (does the actual I/O).
        predict_bytes: model id -> footprint to reserve before its first measured load.
        budget_bytes: limit on the ledger (0 = unlimited).
        measure: this process's footprint now (a Footprint, or total bytes), read around each
            load and first run; None keeps predictions.
        wait_s: how long a miss waits for models in use to be released before BudgetError.
        policy: ``"lru"`` or ``"cost_aware"`` (decayed demand x (reload + fallback ms) / bytes).
        cost: model id -> (load_ms, fallback_ms) for the cost-aware policy.
        paths: model id -> absolute paths of its files (for demotion to cold); None: no demotion.
        demote: drop a model's file pages (footprint.drop_file_pages).
        runtime_of: model id -> its runtime's name; the first load per runtime is preceded by
            an unmeasured probe (its one-time start-up is not charged to a model; see .meter).
        anon_cap: model id -> the most anonymous bytes one load of it is charged.
        check: called with a model id before each load, outside its measurement (e.g. hash its
            files again), and before a cold model's pages are faulted back in; what it allocates
            is not charged to the model. Its errors fail the load (a cold model is unloaded).
        runtime_bytes: record of runtimes already started, shared across managers (see .meter);
            None: this manager's own.
        backoff: (first, most) seconds for which a model whose load failed is not tried again
            while its files (``paths``) are unchanged: the next misses get the same error at once,
            without a load, an eviction or a wait; the pause doubles with each failed retry up to
            ``most``. A model whose probe run hangs until ``max_run_ms`` would otherwise cost
            every request routed to it that long. None: every miss tries again.
        warm: run a loaded session once (``warm()``) inside its measurement; False when
            ``loader`` runs it already (one run fewer per miss).
    """

    def __init__(self, loader: Callable[[str], Session], predict_bytes: Callable[[str], int],
                 budget_bytes: int = 0, measure: Callable[[], Footprint | int | None] | None = None,
                 wait_s: float = 30.0, policy: str = "lru",
                 cost: Callable[[str], tuple[float, float]] | None = None,
                 paths: Callable[[str], set[str]] | None = None,
                 demote: Callable[[set[str]], object] | None = None,
                 runtime_of: Callable[[str], str] | None = None,
                 anon_cap: Callable[[str], int] | None = None,
                 check: Callable[[str], None] | None = None,
                 runtime_bytes: dict[str, Footprint] | None = None,
                 backoff: tuple[float, float] | None = None, warm: bool = True) -> None:
        if policy not in ("lru", "cost_aware"):
            raise ValueError(f"policy must be 'lru' or 'cost_aware', got {policy!r}")
        self._loader, self._predict, self._measure = loader, predict_bytes, measure
        self.budget_bytes, self.wait_s, self.policy = budget_bytes, wait_s, policy
        self._cost, self._paths, self._demote, self._check = cost, paths, demote, check
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._unloading = 0
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._load_lock = threading.Lock()  # loads one at a time, so footprint deltas are attributable
        self.meter = Meter(measure, paths, runtime_of, anon_cap, runtime_bytes=runtime_bytes, warm=warm)
        self._entries: dict[str, pol.Entry] = {}
        self._ghost: dict[str, tuple[float, int]] = {}
        self._requests = 0
        self._experts = pol.Experts(budget_bytes) if policy == "cost_aware" and budget_bytes else None
        self.stats = ResidencyStats()
        self._backoff = LoadBackoff(*backoff, paths) if backoff else None
        self._sizes: dict[str, int] = {}  # last predicted size per model (its files may go missing)

    # -- views -----------------------------------------------------------------------------------
    @property
    def resident_bytes(self) -> int:
        """The ledger: bytes charged to loaded, loading and unloading models."""
        with self._lock:
            return self._ledger()

    def _ledger(self) -> int:
        return sum(s.bytes for s in self._slots.values()) + self._unloading

    def resident(self) -> list[str]:
        """Ids of loaded models (hot or cold), least recently used first."""
        with self._lock:
            return [k for k, s in self._slots.items() if s.session is not None]

    def cold(self) -> list[str]:
        """Ids of loaded models whose file pages were dropped."""
        with self._lock:
            return [k for k, s in self._slots.items() if s.session is not None and s.cold]

    def resident_set(self) -> frozenset[str]:
        """Ids of loaded models (hot or cold), as a set."""
        with self._lock:
            return frozenset(k for k, s in self._slots.items() if s.session is not None)

    def backing_off(self) -> list[str]:
        """Ids of models whose failed load is not tried again yet (unless their files change)."""
        return self._backoff.models() if self._backoff is not None else []

    def is_resident(self, model_id: str) -> bool:
        with self._lock:
            slot = self._slots.get(model_id)
            return slot is not None and slot.session is not None

    # -- requests --------------------------------------------------------------------------------
    @contextmanager
    def use(self, model_id: str) -> Iterator[Session]:
        """Hold ``model_id`` loaded, hot and unevictable for the duration of the block."""
        session = self._acquire(model_id)
        try:
            yield session
        finally:
            with self._lock:
                slot = self._slots.get(model_id)
                if slot is not None:  # None when close() ran while the model was in use
                    slot.users -= 1
                self._released.notify_all()

    def hint(self, model_ids: list[str]) -> None:
        """Look-ahead from the router: these models are likely to be asked for next."""
        if self.policy != "cost_aware":
            return
        with self._lock:
            for m in model_ids:
                if m in self._entries:
                    demand, seen = self._ghost.get(m, (0.0, self._requests))
                    e = pol.on_access(pol.decayed(demand, seen, self._requests), self._model_cost(m), weight=0.25)
                    self._entries[m] = e
                    self._ghost[m] = (e.demand, self._requests)

    def _acquire(self, model_id: str) -> Session:
        if self._backoff is not None and model_id in self._backoff.failed:
            refusal = self._backoff.refusal(model_id)
            if refusal is not None:
                with self._lock:
                    self.stats.refused_loads += 1
                raise refusal from None
        give_up = time.monotonic() + self.wait_s
        while True:
            with self._lock:
                slot = self._slots.get(model_id)
                loaded = slot is not None and slot.session is not None
                try:
                    if loaded and not slot.cold:
                        self._touch(model_id, slot)
                        return slot.session
                    if slot is None or slot.loading is None:
                        need = slot.file_bytes if loaded else self.meter.reservation(
                            model_id, self._predict_or_back_off(model_id), self.budget_bytes)
                        victims, demoted, credit = self._make_room(model_id, need)
                    else:
                        victims = None
                except _Busy:
                    # It fits the budget, but the models that would make room are in use: wait for
                    # a release (a waiting thread holds no model, so this cannot deadlock).
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise
                    self._released.wait(min(left, 0.5))
                    continue
                if victims is None:
                    event = slot.loading
                elif loaded:  # cold -> hot: the file bytes are charged again before any page faults
                    slot.bytes += max(need - credit, 0)  # never below what is alive (victims not yet closed)
                    slot.users += 1
                    slot.loading = threading.Event()  # others wait: no page faults before the room is made
                else:
                    slot = self._slots.setdefault(model_id, _Slot())
                    slot.bytes, slot.loading, slot.error = max(need - credit, 0), threading.Event(), None
                    slot.reserved = need
            if victims is None:
                event.wait()
                with self._lock:
                    if slot.error is not None and slot.session is None:
                        raise slot.error
                continue
            self._free(demoted, victims, slot, credit)
            if loaded:
                if self._check is not None:  # its pages come back from the files: still the ones loaded?
                    try:
                        self._check(model_id)
                    except BaseException as exc:
                        self._unload_changed(model_id, slot, exc)
                        raise
                with self._lock:
                    slot.bytes -= max(credit - need, 0)  # the surplus of the victims' bytes is free now
                    slot.cold = False
                    self._touch(model_id, slot, count_user=False)
                    slot.loading.set()
                    slot.loading = None
                return slot.session
            session = self._load(model_id, slot)
            if session is not None:
                return session
            # Its measured footprint beat the reservation and no idle model could make room: it
            # was unloaded; try again, reserving the measurement (waits for releases as any miss).

    def _touch(self, model_id: str, slot: _Slot, count_user: bool = True) -> None:
        """Record a request (caller holds the lock)."""
        if count_user:
            slot.users += 1
        self._slots.move_to_end(model_id)
        self._requests += 1
        if self.policy == "cost_aware":
            demand, seen = self._ghost.get(model_id, (0.0, self._requests))
            cost = self._model_cost(model_id)
            e = pol.on_access(pol.decayed(demand, seen, self._requests), cost)
            self._entries[model_id] = e
            self._ghost[model_id] = (e.demand, self._requests)
            if self._experts is not None:
                self._experts.access(model_id, cost, e)

    def _by_lru(self) -> bool:
        """Whether evictions go in least-recently-used order now (caller holds the lock)."""
        return self.policy == "lru" or (self._experts is not None and self._experts.rule == "lru")

    @property
    def eviction_rule(self) -> str:
        """The rule that picks victims now: ``"lru"`` or ``"cost_aware"`` (the least expected loss)."""
        with self._lock:
            return "lru" if self._by_lru() else "cost_aware"

    def _model_cost(self, model_id: str) -> pol.ModelCost:
        """The policy's view of a model; never raises (it runs on hits and on the router's
        look-ahead, where a model whose files just went missing must not fail the request)."""
        load_ms, fallback_ms = self._cost(model_id) if self._cost else (1.0, 0.0)
        slot = self._slots.get(model_id)
        size = slot.bytes if slot is not None and slot.bytes else self.meter.measured_need(model_id)
        if size is None:  # never measured: the prediction (stats its files), or the last one made
            try:
                size = self._sizes[model_id] = self._predict(model_id)
            except Exception:  # noqa: BLE001 - e.g. IntegrityError: its load will say so
                size = self._sizes.get(model_id, 1)
        return pol.ModelCost(size, load_ms, fallback_ms)

    # -- making room -----------------------------------------------------------------------------
    def _make_room(self, model_id: str, need: int) -> tuple[list[tuple[str, _Slot]], list[_Slot], int]:
        """Demote, then pick victims so that ``need`` fits; returns (victims popped from the
        slots, slots demoted, bytes they free). Caller holds the lock; the freed bytes move to
        ``_unloading`` so the ledger does not change until they are really released."""
        if not self.budget_bytes:
            return [], [], 0
        if need > self.budget_bytes:
            raise BudgetError(f"model {model_id!r} needs {need} bytes; the budget is {self.budget_bytes}")
        free = self.budget_bytes - self._ledger()
        if need <= free:
            return [], [], 0
        idle = [k for k, s in self._slots.items()
                if k != model_id and s.session is not None and s.users == 0 and s.loading is None]
        order = self._order(idle)
        demoted, credit = [], 0
        if self._demote is not None:
            for k in order:
                s = self._slots[k]
                if not s.cold and s.file_bytes > 0 and s.paths and need > free + credit:
                    demoted.append(s)
                    credit += s.file_bytes
        frees = {k: self._slots[k].bytes - (self._slots[k].file_bytes if any(self._slots[k] is d for d in demoted)
                                            else 0) for k in order}
        if self._experts is not None:
            picked = self._experts.victims(idle, {k: self._entries.get(k, pol.Entry(0.0, 0.0)) for k in idle}, frees,
                                           need, free + credit)
            enough, chosen = picked is not None, picked or []
        elif self._by_lru():
            picked = pol.lru_victims(order, frees, need, free + credit)
            enough, chosen = picked is not None, picked or []
        else:
            picked = pol.choose_victims({k: self._entries.get(k, pol.Entry(0.0, 0.0)) for k in order}, frees, (),
                                        need, free + credit)
            enough, chosen = picked is not None, picked or []
        if not enough:
            raise _Busy(f"model {model_id!r} needs {need} bytes but only {free + credit + sum(frees.values())} can "
                        "be freed now (other models are in use)")
        demoted = [s for s in demoted if not any(s is self._slots[k] for k in chosen)]
        credit = sum(s.file_bytes for s in demoted)
        victims = [(k, self._slots.pop(k)) for k in chosen]
        for k, _ in victims:
            self._entries.pop(k, None)
        for s in demoted:
            s.bytes -= s.file_bytes
            s.cold = True
        gain = sum(s.bytes for _, s in victims)
        self._unloading += credit + gain  # still charged until the pages are dropped / sessions closed
        return victims, demoted, credit + gain

    def _order(self, idle: list[str]) -> list[str]:
        if self._by_lru():
            return idle  # the slots' order is least recently used first
        ranked = sorted((self._entries[k].priority if k in self._entries else 0.0, i, k) for i, k in enumerate(idle))
        return [k for _, _, k in ranked]

    def _free(self, demoted: list[_Slot], victims: list[tuple[str, _Slot]], slot: _Slot, credit: int) -> None:
        """Drop demoted pages, close victims, then hand their bytes to ``slot`` (ledger unchanged)."""
        with self._load_lock:  # not during another load's measurement: its delta stays its own
            for s in demoted:
                self._demote(set(s.paths))
            for _, victim in victims:
                t0 = time.perf_counter()
                victim.session.close()
                with self._lock:
                    self.stats.evictions += 1
                    self.stats.evict_ms.append((time.perf_counter() - t0) * 1e3)
        with self._lock:
            self.stats.demotions += len(demoted)
            self._unloading -= credit
            slot.bytes += credit

    # -- loading ---------------------------------------------------------------------------------
    def _load(self, model_id: str, slot: _Slot) -> Session | None:
        """Load into ``slot`` (its reservation is charged). Returns the session, held for the
        caller; None when the measured footprint did not fit (the model is unloaded again)."""
        # A load's probe and warm-up runs are not the request's: its deadline does not stop them
        # (a model stopped there would fail its load and back off for the next requests too).
        deadline = set_run_deadline(None)
        try:
            with self._load_lock:
                if self._check is not None:  # before the footprint is read: its buffers are not the model's
                    self._check(model_id)
                session, load_ms, grown, paths = self.meter.load(model_id, self._loader)
        except BaseException as exc:
            with self._lock:
                self._failed_load(model_id, exc)
                slot.error = exc
                self._slots.pop(model_id, None)
                slot.loading.set()
                slot.loading = None
                self._released.notify_all()
            raise
        finally:
            set_run_deadline(deadline)
        if self._backoff is not None:
            self._backoff.clear(model_id)
        measured = grown.total_bytes if grown is not None and grown.total_bytes > 0 else slot.bytes
        with self._lock:
            if grown is not None and grown.total_bytes > 0:  # the prediction self-corrects
                self.stats.accounting_error.append(abs(slot.reserved - measured) / measured)
                self.stats.measured[model_id] = grown
                self.meter.record(model_id, measured)
                if measured > slot.reserved:
                    self.stats.overshoots += 1
            victims = self._room_for_excess(model_id, measured - slot.bytes)
            if victims == [] and measured > slot.bytes:
                # The room is there now: charge it under this same lock, before another thread's
                # reservation can take it (charging it later let the ledger pass the budget).
                slot.bytes = measured
            self.stats.loads += 1
            self.stats.load_ms.append(load_ms)
            self.stats.load_times[model_id] = load_ms
        if victims is None:  # does not fit: unload before anyone sees it; the ledger never moved
            with self._load_lock:  # not during another load's measurement
                session.close()
            with self._lock:
                self._slots.pop(model_id, None)
                slot.loading.set()
                slot.loading = None
                self._released.notify_all()
            return None
        # Their bytes pass to this slot only once they are closed (the ledger never moves up).
        self._free([], victims, slot, sum(v.bytes for _, v in victims))
        with self._lock:
            slot.bytes = measured
            slot.file_bytes = grown.file_bytes if grown is not None else 0
            slot.paths = paths
            slot.session = session
            self._touch(model_id, slot)
            slot.loading.set()
            slot.loading = None
        return session

    def _predict_or_back_off(self, model_id: str) -> int:
        """``predict_bytes(model_id)``; its error (a file gone missing) counts as a failed load
        and backs off like one (caller holds the lock)."""
        try:
            self._sizes[model_id] = size = self._predict(model_id)
        except Exception as exc:
            self._failed_load(model_id, exc)
            raise
        return size

    def _failed_load(self, model_id: str, exc: BaseException) -> None:
        """Count a failed load and back it off (caller holds the lock)."""
        self.stats.failed_loads += 1
        if self._backoff is not None and isinstance(exc, Exception):
            self._backoff.record(model_id, exc)

    def _unload_changed(self, model_id: str, slot: _Slot, exc: BaseException) -> None:
        """A cold model whose files failed ``check`` on the way back to hot (rewritten in place
        since it was demoted): unload it rather than fault its pages in from the new bytes. The
        caller holds it (``users``) and others wait on ``loading``; they then see ``exc``."""
        with self._lock:
            slot.users -= 1
            if self._slots.get(model_id) is slot:
                self._slots.pop(model_id)
                self._entries.pop(model_id, None)
            self._unloading += slot.bytes  # charged until closed: the ledger never dips early
        with self._load_lock:
            slot.session.close()
        with self._lock:
            self._unloading -= slot.bytes
            slot.bytes, slot.session, slot.error = 0, None, exc
            self.stats.evictions += 1
            slot.loading.set()
            slot.loading = None
            self._released.notify_all()

    def _room_for_excess(self, model_id: str, excess: int) -> list[tuple[str, _Slot]] | None:
        """Idle victims whose bytes cover ``excess`` (popped, moved to unloading); [] when the
        budget already has room; None when it cannot be made now (caller holds the lock)."""
        if excess <= 0 or not self.budget_bytes:
            return []
        short = self._ledger() + excess - self.budget_bytes
        if short <= 0:
            return []
        chosen = []
        for key in self._order([k for k, s in self._slots.items()
                                if k != model_id and s.session is not None and s.users == 0
                                and s.loading is None]):
            if short <= 0:
                break
            chosen.append(key)
            short -= self._slots[key].bytes
        if short > 0:
            return None
        victims = [(k, self._slots.pop(k)) for k in chosen]
        for k, _ in victims:
            self._entries.pop(k, None)
        self._unloading += sum(v.bytes for _, v in victims)
        return victims

    def close(self) -> None:
        """Close every loaded model."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
        for slot in slots:
            if slot.session is not None:
                slot.session.close()

"""Tests of the residency manager (edge_eco.residency) with a fake loader.

The loader returns sessions that record their close() calls; footprints come from a dict. The
manager replaces predictions by the measured growth of the process footprint across a load, so
every test injects a constant ``measure`` (or one the fake loader grows) to keep the byte
accounting exact.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco.errors import BudgetError, ModelLoadError
from edge_eco.residency import Residency

SIZES = {"a": 300, "b": 300, "c": 300, "d": 700, "e": 100, "big": 1500}


class FakeSession:
    def __init__(self, model_id: str, closed: list[str]) -> None:
        self.model_id, self._closed, self.close_calls = model_id, closed, 0

    def run(self, feeds):
        return np.zeros(2, np.float32)

    def close(self) -> None:
        self.close_calls += 1
        self._closed.append(self.model_id)


class FakeLoader:
    """model id -> FakeSession; records calls, can sleep and can fail the first ``fail`` calls."""

    def __init__(self, delay_s: float = 0.0, fail: int = 0, rss: list[int] | None = None,
                 grow: dict[str, int] | None = None) -> None:
        self.calls: list[str] = []
        self.sessions: list[FakeSession] = []
        self.closed: list[str] = []
        self.delay_s, self.fail, self.rss, self.grow = delay_s, fail, rss, grow or {}
        self._lock = threading.Lock()

    def __call__(self, model_id: str) -> FakeSession:
        with self._lock:
            self.calls.append(model_id)
            failing = len(self.calls) <= self.fail
        time.sleep(self.delay_s)
        if failing:
            raise ModelLoadError(f"cannot load {model_id}")
        if self.rss is not None:
            self.rss[0] += self.grow.get(model_id, 0)
        session = FakeSession(model_id, self.closed)
        with self._lock:
            self.sessions.append(session)
        return session


def make(budget: int = 1000, wait_s: float = 30.0, **loader_kwargs) -> tuple[Residency, FakeLoader]:
    loader = FakeLoader(**loader_kwargs)
    return Residency(loader, SIZES.__getitem__, budget, measure=lambda: 0, wait_s=wait_s), loader


def touch(res: Residency, *ids: str) -> None:
    for model_id in ids:
        with res.use(model_id):
            pass


class Holder:
    """Holds ``res.use(model_id)`` open in another thread until release()."""

    def __init__(self, res: Residency, model_id: str) -> None:
        self._entered, self._release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(res, model_id), daemon=True)
        self._thread.start()
        assert self._entered.wait(5)

    def _run(self, res: Residency, model_id: str) -> None:
        try:
            with res.use(model_id):
                self._entered.set()
                self._release.wait(5)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._entered.set()

    def release(self) -> None:
        self._release.set()
        self._thread.join(5)
        assert self.error is None


# --- loading and LRU eviction -----------------------------------------------------------------

def test_use_loads_once_and_yields_the_session():
    res, loader = make()
    with res.use("a") as s1:
        assert s1 is loader.sessions[0] and s1.model_id == "a"
    with res.use("a") as s2:
        assert s2 is s1
    assert loader.calls == ["a"]
    assert res.is_resident("a") and not res.is_resident("b")
    assert res.resident_bytes == 300


def test_resident_lists_least_recently_used_first():
    res, _ = make()
    touch(res, "a", "b", "c", "a")
    assert res.resident() == ["b", "c", "a"]


def test_least_recently_used_is_evicted_first():
    res, loader = make()
    touch(res, "a", "b", "c", "a")   # 900 bytes; b is now least recently used
    touch(res, "e")                  # +100 = 1000: fits without eviction
    assert loader.closed == []
    touch(res, "e", "a", "c")        # LRU order now b, e, a, c
    touch(res, "d")                  # needs 700: evicts b, e, a (oldest first) until it fits
    assert loader.closed == ["b", "e", "a"]
    assert res.resident() == ["c", "d"] and res.resident_bytes == 1000


def test_limit_is_bytes_not_a_model_count():
    res, loader = make(budget=1000)
    touch(res, "a", "b", "c")        # 900 bytes, three models
    touch(res, "d")                  # 700 bytes: two of the three must go
    assert loader.closed == ["a", "b"]
    assert res.resident() == ["c", "d"] and res.resident_bytes == 1000


def test_many_small_models_fit_without_eviction():
    sizes = {f"m{i}": 100 for i in range(10)}
    loader = FakeLoader()
    res = Residency(loader, sizes.__getitem__, 1000, measure=lambda: 0)
    touch(res, *sizes)
    assert loader.closed == [] and len(res.resident()) == 10 and res.resident_bytes == 1000


def test_zero_budget_means_unlimited():
    res, loader = make(budget=0)
    touch(res, "a", "b", "c", "d", "big")
    assert loader.closed == [] and res.resident_bytes == 3100


def test_evicted_model_is_reloaded_on_demand():
    res, loader = make(budget=900)
    touch(res, "a", "d", "a")
    assert loader.calls == ["a", "d", "a"]
    assert loader.closed == ["a", "d"]
    assert loader.sessions[0].close_calls == 1 and loader.sessions[2].close_calls == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=30))
def test_sequential_loads_never_exceed_the_budget(sequence):
    res, loader = make(budget=1000)
    for model_id in sequence:
        with res.use(model_id) as session:
            assert session.model_id == model_id
            assert res.resident_bytes <= 1000
            open_sessions = [s for s in loader.sessions if s.close_calls == 0]
            assert sum(SIZES[s.model_id] for s in open_sessions) <= 1000
    assert all(s.close_calls <= 1 for s in loader.sessions)
    assert sorted(s.model_id for s in loader.sessions if s.close_calls == 0) == sorted(res.resident())
    assert res.stats.loads == len(loader.calls) and res.stats.evictions == len(loader.closed)


# --- in use, and the budget -------------------------------------------------------------------

def test_model_in_use_is_never_evicted():
    res, loader = make(budget=1000)
    holder = Holder(res, "a")        # a loaded and held by another thread
    touch(res, "b", "c")             # a is now least recently used, but in use
    touch(res, "e")                  # 1000: fits
    touch(res, "d")                  # needs 700 of 1000 with a (300) held: evicts b, c, e, never a
    assert "a" not in loader.closed
    assert loader.closed == ["b", "c", "e"]
    assert res.resident() == ["a", "d"]
    holder.release()
    touch(res, "b")                  # a idle again: now it is the LRU victim
    assert loader.closed[-1] == "a"


def test_model_larger_than_the_budget():
    res, loader = make(budget=1000)
    touch(res, "a")
    with pytest.raises(BudgetError, match="'big' needs 1500 bytes; the budget is 1000"):
        with res.use("big"):
            pass
    assert loader.calls == ["a"] and loader.closed == []
    assert res.resident() == ["a"] and res.resident_bytes == 300


def test_budget_error_when_everything_else_is_in_use():
    res, loader = make(budget=1000, wait_s=0.2)
    holders = [Holder(res, "a"), Holder(res, "b"), Holder(res, "c")]
    with pytest.raises(BudgetError, match="'d' needs 700 bytes"):
        with res.use("d"):
            pass
    assert loader.closed == [] and loader.calls == ["a", "b", "c"]
    assert sorted(res.resident()) == ["a", "b", "c"] and res.resident_bytes == 900
    for h in holders:
        h.release()
    touch(res, "d")                  # once released, the same request evicts and loads
    assert loader.closed == ["a", "b"] and res.resident() == ["c", "d"]


def test_failed_attempt_leaves_the_lru_order_unchanged():
    res, loader = make(budget=900, wait_s=0.2)
    touch(res, "e", "a", "b")        # LRU order e, a, b; 700 bytes
    holder = Holder(res, "a")        # a in use and now most recent: e, b, a
    try:
        assert res.resident() == ["e", "b", "a"]
        with pytest.raises(BudgetError):  # d needs 700 of 900; freeing e and b still leaves a's 300
            with res.use("d"):
                pass
        assert loader.closed == []
        assert res.resident() == ["e", "b", "a"]
    finally:
        holder.release()
    touch(res, "c")                  # needs 300 of 900 with 700 used: evicts e, the LRU
    assert loader.closed == ["e"]


# --- single-flight ----------------------------------------------------------------------------

def _run_threads(n: int, target) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target()
        except BaseException as exc:  # noqa: BLE001 - collected for the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    return results


def test_concurrent_misses_cause_one_load():
    res, loader = make(budget=1000, delay_s=0.05)

    def use_a():
        with res.use("a") as s:
            return s

    sessions = _run_threads(8, use_a)
    assert loader.calls == ["a"]
    assert all(s is loader.sessions[0] for s in sessions)
    assert res.stats.loads == 1 and res.resident_bytes == 300
    touch(res, "d", "b")             # every user released a: it can be evicted
    assert loader.closed == ["a"]


def test_loader_error_reaches_every_waiter_and_a_later_call_retries():
    res, loader = make(budget=1000, delay_s=0.05, fail=1)

    def use_a():
        with res.use("a") as s:
            return s

    results = _run_threads(8, use_a)
    assert loader.calls == ["a"]
    assert all(isinstance(r, ModelLoadError) and "cannot load a" in str(r) for r in results)
    assert res.resident() == [] and res.resident_bytes == 0 and res.stats.loads == 0
    with res.use("a") as s:          # the failure is not cached
        assert s is loader.sessions[0]
    assert loader.calls == ["a", "a"] and res.stats.loads == 1


def test_a_failed_load_backs_off_while_its_files_are_unchanged(tmp_path):
    """A trial's bundle with a model whose probe run loops until max_run_ms: every request routed
    to it paid the whole limit again (200 requests: 38 s against 0.49 s)."""
    files = {m: tmp_path / f"{m}.onnx" for m in SIZES}
    for f in files.values():
        f.write_bytes(b"x")
    loader = FakeLoader()
    res = Residency(loader, SIZES.__getitem__, 1000, measure=lambda: 0, paths=lambda m: {str(files[m])},
                    backoff=(0.2, 0.3))
    touch(res, "e")                             # resident: a refused miss must not evict it
    loader.calls.clear()
    loader.fail = 2                             # the next two loads fail
    with pytest.raises(ModelLoadError, match=r"^cannot load a$"):
        touch(res, "a")
    for _ in range(5):                          # refused at once, with the same error, no load
        with pytest.raises(ModelLoadError) as err:
            touch(res, "a")
        assert str(err.value).startswith("cannot load a (its load failed 1 time; not tried again for 0.")
        assert str(err.value).endswith(" s unless its files change)")
    assert loader.calls == ["a"] and res.stats.failed_loads == 1 and res.stats.refused_loads == 5
    assert res.resident() == ["e"] and loader.closed == []
    time.sleep(0.25)                            # the pause is over: tried again, fails again
    with pytest.raises(ModelLoadError, match=r"^cannot load a$"):
        touch(res, "a")
    with pytest.raises(ModelLoadError, match=r"its load failed 2 times; not tried again for 0\.[23]"):
        touch(res, "a")                         # doubled, capped at 0.3 s
    files["a"].write_bytes(b"fixed")            # a new file: tried at once, and it loads
    touch(res, "a")
    assert loader.calls == ["a", "a", "a"] and res.resident() == ["e", "a"]
    assert res.stats.failed_loads == 2 and res.stats.refused_loads == 6


def test_a_model_whose_files_went_missing_fails_its_miss_backs_off_and_never_fails_a_hint(tmp_path):
    """A trial deleted home.onnx.data under 16 threads: the router's look-ahead (hint) raised the
    IntegrityError out of answer() (29 of 22,768 requests), and the failed misses were not counted
    as failed loads nor backed off."""
    from edge_eco.errors import IntegrityError
    path = tmp_path / "a.onnx"
    path.write_bytes(b"x")

    def predict(m):
        if m == "a" and not path.exists():
            raise IntegrityError("'a.onnx' cannot be read at load")
        return SIZES[m]

    loader = FakeLoader()
    res = Residency(loader, predict, 1000, measure=lambda: 0, paths=lambda m: {str(tmp_path / f"{m}.onnx")},
                    policy="cost_aware", backoff=(5.0, 60.0))
    touch(res, "a", "b", "c", "e")   # a: 300 of 1000, then evicted for d (700)
    touch(res, "d")
    assert "a" not in res.resident()
    path.unlink()
    # what hint() and a hit price a model with never raises (the trial's traceback: hint ->
    # _model_cost -> predict_bytes, for a model whose slot was loading with 0 bytes charged)
    assert res._model_cost("a").size_bytes == 300   # its last known size
    res.hint(["a", "b"])
    with pytest.raises(IntegrityError):
        touch(res, "a")
    assert res.stats.failed_loads == 1 and res.backing_off() == ["a"]
    with pytest.raises(IntegrityError, match="not tried again"):
        touch(res, "a")
    path.write_bytes(b"x")           # restored: tried at once
    touch(res, "a")
    assert "a" in res.resident() and res.backing_off() == []


def test_without_backoff_every_miss_tries_again():
    res, loader = make(fail=2)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match=r"^cannot load a$"):
            touch(res, "a")
    touch(res, "a")
    assert loader.calls == ["a", "a", "a"] and res.stats.failed_loads == 2 and res.stats.refused_loads == 0


def test_loads_of_different_models_all_complete():
    res, loader = make(budget=0, delay_s=0.01)
    ids = ["a", "b", "c", "d", "e"] * 2

    def use(i=iter(range(len(ids))), lock=threading.Lock()):
        with lock:
            model_id = ids[next(i)]
        with res.use(model_id) as s:
            return s.model_id

    assert sorted(_run_threads(len(ids), use)) == sorted(ids)
    assert sorted(loader.calls) == ["a", "b", "c", "d", "e"]


# --- close, stats, measured footprints --------------------------------------------------------

def test_close_closes_every_session():
    res, loader = make(budget=0)
    touch(res, "a", "b", "c")
    res.close()
    assert sorted(loader.closed) == ["a", "b", "c"]
    assert all(s.close_calls == 1 for s in loader.sessions)
    assert res.resident() == [] and res.resident_bytes == 0
    res.close()                      # idempotent
    assert len(loader.closed) == 3


def test_stats_count_loads_and_evictions_with_times():
    res, _ = make(budget=1000, delay_s=0.002)
    touch(res, "a", "b", "a", "d")   # loads a, b, d; d (700) evicts b, the least recently used
    assert res.stats.loads == 3 and len(res.stats.load_ms) == 3
    assert res.stats.evictions == 1 and len(res.stats.evict_ms) == 1
    assert all(ms >= 2.0 for ms in res.stats.load_ms)
    assert all(ms >= 0.0 for ms in res.stats.evict_ms)


def test_measured_growth_replaces_the_prediction():
    rss = [10_000]
    loader = FakeLoader(rss=rss, grow={"a": 450, "d": 700})
    res = Residency(loader, SIZES.__getitem__, 1000, measure=lambda: rss[0])
    touch(res, "a")
    assert res.resident_bytes == 450          # measured, not the predicted 300
    touch(res, "d")                           # 450 + 700 > 1000: evicts a
    assert loader.closed == ["a"] and res.resident_bytes == 700
    # The reload reserves the measured 450 (the prediction, 300, would fit next to d).
    touch(res, "a")
    assert loader.closed == ["a", "d"] and res.resident_bytes == 450


def test_no_growth_keeps_the_prediction():
    loader = FakeLoader()
    res = Residency(loader, SIZES.__getitem__, 1000, measure=lambda: 5_000)
    touch(res, "a")
    assert res.resident_bytes == 300


def test_a_miss_waits_for_a_model_in_use_instead_of_failing():
    """Under a tight budget and concurrency, a miss waits for a release (found by a user trial:
    with 4 threads and a 12 MB budget, requests failed with BudgetError)."""
    res, loader = make(budget=1000)
    holders = [Holder(res, "a"), Holder(res, "b"), Holder(res, "c")]   # 900 bytes, all in use
    threading.Timer(0.2, lambda: (holders[0].release(), holders[1].release())).start()
    t0 = time.monotonic()
    touch(res, "d")                                         # needs 700: waits until a and b are released
    assert 0.15 <= time.monotonic() - t0 < 5
    assert "d" in res.resident() and res.resident_bytes <= 1000
    holders[2].release()


def test_cost_aware_manager_evicts_by_lru_once_lru_has_lost_less():
    """The recorded-CLINC150 shape (a big generalist among specialists asked in runs): the loss
    rule alone would keep the generalist and reload a specialist at every switch."""
    from test_residency_policy import grouped_trace

    trace, costs = grouped_trace(60)
    sizes = {m: c.size_bytes * 100 for m, c in costs.items()}
    loader = FakeLoader()
    res = Residency(loader, sizes.__getitem__, 1100, measure=lambda: 0, policy="cost_aware",
                    cost=lambda m: (1.0, 0.0))
    assert res.eviction_rule == "lru"  # LRU leads until the loss rule is ahead by a margin
    for _, m in trace:
        with res.use(m):
            assert res.resident_bytes <= 1100
    assert res.eviction_rule == "lru"
    # as many loads as LRU alone: 62 in 720 requests (the loss rule alone would reload a
    # specialist at every run switch: 377 misses in the replay of the same trace)
    assert len(loader.calls) == 62
    res.close()


def test_the_file_check_runs_before_the_measurement_and_its_failure_fails_the_load():
    """Residency(check=...): what the check allocates is read into the 'before' footprint (not
    charged to the model); a check that raises leaves nothing loaded or reserved."""
    rss = [0]
    loader = FakeLoader()
    calls = []

    def check(model_id):
        calls.append(model_id)
        rss[0] += 1_000_000  # e.g. a hash's read buffers that stay in the heap
        if model_id == "bad":
            raise ModelLoadError("bad: changed on disk")

    res = Residency(loader, lambda m: 100, 10_000, measure=lambda: rss[0], check=check)
    with res.use("a"):
        pass
    assert calls == ["a"] and res.resident_bytes == 100  # the check's 1 MB is not charged to a
    with pytest.raises(ModelLoadError, match="changed on disk"):
        with res.use("bad"):
            pass
    assert loader.calls == ["a"] and res.resident() == ["a"] and res.resident_bytes == 100
    res.close()

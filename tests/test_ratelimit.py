"""Token-bucket arithmetic (edge_eco.ratelimit, time injected) and the per-client bookkeeping of
edge_eco.clientguard, as properties over arbitrary request times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco.clientguard import ClientGuard, client_key
from edge_eco.ratelimit import BucketConfig, BucketTable, take

rates = st.floats(min_value=0.01, max_value=1000.0, allow_nan=False)
bursts = st.integers(min_value=1, max_value=50)
gaps = st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), min_size=1, max_size=200)


def _times(start: float, steps: list[float]) -> list[float]:
    out, t = [], start
    for s in steps:
        t += s
        out.append(t)
    return out


@settings(max_examples=150, deadline=None)
@given(rates, bursts, gaps)
def test_admitted_never_exceed_burst_plus_rate_times_elapsed(rate, burst, steps):
    """Over any window [t0, t], a full bucket admits at most burst + rate * (t - t0) requests."""
    table = BucketTable(BucketConfig(rate, burst))
    times = _times(100.0, steps)
    admitted_at = [t for t in times if table.take("c", t) == 0.0]
    for i, t0 in enumerate(admitted_at):
        for j in range(i, len(admitted_at)):
            assert j - i + 1 <= burst + rate * (admitted_at[j] - t0) + 1e-6


@settings(max_examples=150, deadline=None)
@given(rates, bursts, st.integers(min_value=0, max_value=60))
def test_a_full_bucket_admits_exactly_burst_at_once_and_the_wait_is_honest(rate, burst, extra):
    """At one instant, exactly ``burst`` requests go through; the refusal's wait is the time until
    the next token: trying again that much later succeeds, a bit earlier does not."""
    table = BucketTable(BucketConfig(rate, burst))
    waits = [table.take("c", 10.0) for _ in range(burst + 1 + extra)]
    assert waits[:burst] == [0.0] * burst
    assert all(w > 0 for w in waits[burst:])
    wait = waits[burst]
    assert wait == pytest.approx(1.0 / rate)
    probe = BucketTable(BucketConfig(rate, burst))
    for _ in range(burst):
        probe.take("c", 10.0)
    assert probe.take("c", 10.0 + wait * 0.9) > 0
    assert probe.take("c", 10.0 + wait * 1.0001) == 0.0


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=0, max_value=50, allow_nan=False), st.floats(min_value=-1e6, max_value=1e6),
       st.floats(min_value=-1e3, max_value=1e6), rates, bursts)
def test_take_keeps_tokens_within_zero_and_burst_and_time_never_runs_backwards(tokens, stamp, dt, rate, burst):
    tokens = min(tokens, burst)
    new_tokens, new_stamp, wait = take(tokens, stamp, stamp + dt, rate, burst)
    assert 0.0 <= new_tokens <= burst
    assert new_stamp == max(stamp, stamp + dt)
    if dt <= 0:  # a clock that went back gives nothing
        assert new_tokens == (tokens - 1.0 if tokens >= 1.0 else tokens)
    assert (wait == 0.0) == (min(float(burst), tokens + max(dt, 0.0) * rate) >= 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=300), st.integers(1, 8))
def test_table_is_bounded_and_forgets_the_least_recently_seen(keys, cap):
    table = BucketTable(BucketConfig(1.0, 1, max_clients=cap))
    seen: list[int] = []
    for k in keys:
        table.take(str(k), 0.0)
        if k in seen:
            seen.remove(k)
        seen.append(k)
        assert len(table) == min(cap, len(set(seen)))
    recent = seen[-cap:]
    # the ones kept were just seen with an empty bucket (rate 1, burst 1, no time passing): refused
    for k in recent:
        assert table.take(str(k), 0.0) > 0
    # a forgotten client comes back with a full bucket
    forgotten = [k for k in set(keys) if k not in recent]
    if forgotten:
        assert BucketTable(table.config).take(str(forgotten[0]), 0.0) == 0.0


@pytest.mark.parametrize("rate, burst, clients", [(0, 1, 1), (-1, 1, 1), (float("nan"), 1, 1),
                                                  (float("inf"), 1, 1), (1, 0, 1), (1, 1, 0)])
def test_config_refuses_bad_values(rate, burst, clients):
    with pytest.raises(ValueError):
        BucketConfig(rate, burst, clients)


@pytest.mark.parametrize("host, key", [
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::/64"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same /64: one client
    ("::ffff:10.0.0.7", "10.0.0.7"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_client_key(host, key):
    assert client_key(host) == key


def test_guard_counts_connections_per_client_and_rates_with_its_clock():
    now = [0.0]
    guard = ClientGuard(2, BucketConfig(2.0, 1), clock=lambda: now[0])
    assert guard.connect("a") and guard.connect("a") and not guard.connect("a")
    assert guard.connect("b")
    guard.disconnect("a")
    assert guard.open_connections("a") == 1 and guard.connect("a")
    assert guard.admit("a") == 0.0 and guard.admit("a") == pytest.approx(0.5) and guard.admit("b") == 0.0
    now[0] = 0.5
    assert guard.admit("a") == 0.0
    unlimited = ClientGuard(1, None)
    assert unlimited.rate is None and all(unlimited.admit("x") == 0.0 for _ in range(1000))

"""Circuit breaker: a dead remote costs microseconds once the circuit is open."""

from __future__ import annotations

import socket

import pytest

from edge_eco.errors import RemoteUnavailable
from edge_eco.fallback import V2Client
from edge_eco.fallback.breaker import CircuitBreaker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_state_machine_opens_probes_backs_off_and_closes():
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown_s=1.0, max_cooldown_s=4.0, clock=clock)
    for _ in range(2):
        assert b.allow() is None
        b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and b.allow() == pytest.approx(1.0)
    clock.t += 1.0
    assert b.state == "half-open"
    assert b.allow() is None            # the probe
    assert b.allow() == 0.0             # others still fail fast while the probe runs
    b.failure()                         # probe failed: reopen for 2 s
    assert b.allow() == pytest.approx(2.0)
    clock.t += 2.0
    assert b.allow() is None
    b.failure()                         # 4 s (the cap)
    clock.t += 4.0
    assert b.allow() is None
    b.success()
    assert b.state == "closed" and b.allow() is None
    for _ in range(3):
        b.failure()
    assert b.allow() == pytest.approx(1.0)  # back-off reset by the success


def test_a_dead_remote_fails_fast_once_open():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connection refused
    client = V2Client(f"http://127.0.0.1:{port}", "m",
                      breaker=CircuitBreaker(threshold=3, cooldown_s=60, max_cooldown_s=60))
    for _ in range(3):
        with pytest.raises(RemoteUnavailable, match="refused"):
            client.infer(["hi"])

    def no_network(*args, **kwargs):
        raise AssertionError("an open circuit must not touch the network")
    client._exchange = no_network
    for _ in range(100):
        with pytest.raises(RemoteUnavailable, match="circuit open .* next probe in"):
            client.infer(["hi"])
    client.close()

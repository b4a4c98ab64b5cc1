"""Circuit breaker for a remote: after repeated failures, fail fast instead of waiting each time.

closed --(``threshold`` failures in a row)--> open --(cool-down)--> half-open: one probe call
goes through; success closes the circuit, failure reopens it with the cool-down doubled (up to
``max_cooldown_s``). While open, a call costs a clock read and a lock, not a timeout. The clock
is a parameter, so the state machine is tested without sleeping.

The half-open probe is an ordinary call of a request: it already gets that request's whole budget
(``min([remote] timeout_ms, time left of its deadline)``) and no more -- a more generous probe
would break the caller's deadline, and a background probe would add a thread for a case that
``edge-eco serve`` removes by warming before it listens (a restarting server refuses connections,
then answers warm). A probe that fails on a slow server doubles the cool-down, as it should.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class CircuitBreaker:
    """Thread-safe breaker state machine."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 1.0, max_cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or cooldown_s <= 0 or max_cooldown_s < cooldown_s:
            raise ValueError("breaker: threshold >= 1 and 0 < cooldown_s <= max_cooldown_s")
        self.threshold, self.base_cooldown_s, self.max_cooldown_s = threshold, cooldown_s, max_cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._cooldown_s = cooldown_s
        self._probing = False

    @property
    def state(self) -> str:
        """"closed", "open" or "half-open"."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until or self._probing else "half-open"

    def allow(self) -> float | None:
        """None when a call may go ahead; else the seconds until the next probe."""
        with self._lock:
            if self._open_until is None:
                return None
            now = self._clock()
            if now >= self._open_until and not self._probing:
                self._probing = True  # this caller is the half-open probe
                return None
            return max(0.0, self._open_until - now)

    def success(self) -> None:
        """A call succeeded: close the circuit."""
        with self._lock:
            self._failures, self._open_until, self._probing = 0, None, False
            self._cooldown_s = self.base_cooldown_s

    def failure(self) -> None:
        """A call failed: count it; open (or reopen, backing off) when the threshold is reached."""
        with self._lock:
            self._failures += 1
            if self._probing:  # the probe failed: reopen for longer
                self._cooldown_s = min(self.max_cooldown_s, self._cooldown_s * 2)
                self._open_until, self._probing = self._clock() + self._cooldown_s, False
            elif self._failures >= self.threshold:
                self._open_until = self._clock() + self._cooldown_s

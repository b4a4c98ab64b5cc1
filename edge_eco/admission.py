"""Request admission of ``edge-eco serve``: at most N requests running and M waiting (the rest turned
away at once), and the count of requests in flight that a draining shutdown waits for."""

from __future__ import annotations

import threading

__all__ = ["Admission", "InFlight"]


class InFlight:
    """Counts requests being handled, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self._n, self._cond = 0, threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._n += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._n -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n == 0, timeout=timeout_s)


class Admission:
    """At most ``running`` requests at once and ``waiting`` more in line; the rest are turned away."""

    def __init__(self, running: int, waiting: int) -> None:
        self._slots = threading.Semaphore(running)
        self._lock = threading.Lock()
        self._admitted, self.running, self.waiting = 0, running, waiting

    def enter(self, wait_s: float) -> str | None:
        """Take a slot, waiting at most ``wait_s`` in line.

        Returns:
            None when a slot was taken; "full" when ``running`` + ``waiting`` requests are already
            admitted; "timeout" when no slot came free within ``wait_s``.
        """
        with self._lock:
            if self._admitted >= self.running + self.waiting:
                return "full"
            self._admitted += 1
        if self._slots.acquire(timeout=max(wait_s, 0.0)):
            return None
        with self._lock:
            self._admitted -= 1
        return "timeout"

    def leave(self) -> None:
        self._slots.release()
        with self._lock:
            self._admitted -= 1

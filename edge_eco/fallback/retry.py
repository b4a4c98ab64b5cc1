"""Bounded retries with full jitter, only while the request's deadline allows. Pure: the random
draw is a parameter, so the schedule is tested without sleeping or seeding a global generator."""

from __future__ import annotations

from dataclasses import dataclass

from edge_eco.errors import FallbackError, RemoteStatusError, RemoteTLSError, RemoteUnavailable

__all__ = ["RetryPolicy", "retriable"]

# Statuses that say "try again" (overload, gateway trouble); other 4xx/5xx would fail again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed remote call is tried again.

    ``attempts`` counts every try (1 = no retry). Before try n+1 the client waits
    ``u * min(max_backoff_s, backoff_s * 2**n)`` with ``u`` uniform in [0, 1) (full jitter, so a
    fleet of devices does not retry in step), and only when at least ``min_attempt_s`` of the
    deadline would be left for that try.
    """

    attempts: int = 2
    backoff_s: float = 0.01
    max_backoff_s: float = 0.2
    min_attempt_s: float = 0.01

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s or self.min_attempt_s < 0:
            raise ValueError("retry: attempts >= 1, 0 <= backoff_s <= max_backoff_s, min_attempt_s >= 0")

    def next_delay_s(self, failed: int, remaining_s: float, u: float) -> float | None:
        """Seconds to wait before the next try, or None when there is none.

        Args:
            failed: tries made so far (>= 1).
            remaining_s: time left until the deadline.
            u: a uniform draw in [0, 1).
        Returns:
            The jittered delay, or None when the attempts are spent or the deadline leaves too little.
        """
        if failed >= self.attempts:
            return None
        delay_s = u * min(self.max_backoff_s, self.backoff_s * 2 ** (failed - 1))
        return delay_s if remaining_s - delay_s >= self.min_attempt_s else None


def retriable(exc: FallbackError) -> bool:
    """True for failures that another try may not repeat: the connection failed or was dropped,
    or the server said it is overloaded (429, 502, 503, 504). A malformed reply, another error
    status or a failed TLS handshake / certificate check would only come back again."""
    if isinstance(exc, RemoteStatusError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, RemoteUnavailable) and not isinstance(exc, RemoteTLSError)

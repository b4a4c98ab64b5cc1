"""Per-client token buckets for ``edge-eco serve`` (pure: the time is a parameter, no clock, no I/O).

A bucket holds at most ``burst`` tokens and gains ``rate_per_s`` tokens a second; a request takes one
token or, when none is there, is refused with the seconds until one will be. The table keeps one
bucket per client key and forgets the least recently seen client past ``max_clients`` (a forgotten
client comes back with a full bucket, which is what an idle client would have had anyway once
``burst / rate_per_s`` seconds passed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["BucketConfig", "BucketTable", "take"]


@dataclass(frozen=True)
class BucketConfig:
    """Rate and burst of every client's bucket.

    Raises:
        ValueError: rate not positive and finite, burst below 1, or max_clients below 1.
    """

    rate_per_s: float
    burst: int
    max_clients: int = 4096

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate limit must be a positive number of requests/s, got {self.rate_per_s!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1 request, got {self.burst!r}")
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {self.max_clients!r}")


def take(tokens: float, stamp_s: float, now_s: float, rate_per_s: float, burst: int) -> tuple[float, float, float]:
    """Refill a bucket up to ``now_s`` and try to take one token.

    Args:
        tokens: tokens in the bucket at ``stamp_s``.
        stamp_s: when ``tokens`` was last updated (seconds, any monotonic origin).
        now_s: the time now; a clock that went backwards counts as no time passed.
        rate_per_s: tokens gained per second.
        burst: the most tokens the bucket holds.
    Returns:
        (tokens, stamp_s, wait_s): the bucket after the attempt and 0.0 when the token was taken,
        else the seconds until a token will be there (the bucket is then left as refilled).
    """
    now_s = max(now_s, stamp_s)
    tokens = min(float(burst), tokens + (now_s - stamp_s) * rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, now_s, 0.0
    return tokens, now_s, (1.0 - tokens) / rate_per_s


class BucketTable:
    """One bucket per client key, at most ``config.max_clients`` of them (least recently seen go).
    Not thread-safe: the caller holds a lock around ``take``."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now_s: float) -> float:
        """Take a token from ``key``'s bucket (a new client starts full).

        Args:
            key: the client key (see ``clientguard.client_key``).
            now_s: the time now, in seconds.
        Returns:
            0.0 when the request may go ahead, else the seconds until the client may try again.
        """
        cfg = self.config
        old = self._buckets.pop(key, None)
        tokens, stamp_s = old if old is not None else (float(cfg.burst), now_s)
        tokens, stamp_s, wait_s = take(tokens, stamp_s, now_s, cfg.rate_per_s, cfg.burst)
        self._buckets[key] = (tokens, stamp_s)  # most recently seen last
        if len(self._buckets) > cfg.max_clients:
            self._buckets.popitem(last=False)
        return wait_s

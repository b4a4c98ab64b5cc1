"""Per-client protections of ``edge-eco serve``: connections per client, a rate limit per client, and
a deadline for receiving each request (the slow-client, "slowloris", defence). The HTTP layer
(httpserver.py) calls into this; the bucket arithmetic is in ratelimit.py.

A client is its IPv4 address, or the /64 network of its IPv6 address (one host usually holds a
whole /64, so per-address limits would not hold it back).
"""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
import time
from typing import Callable

from edge_eco.ratelimit import BucketConfig, BucketTable

__all__ = ["ClientGuard", "RequestClock", "client_key"]


def client_key(host: str) -> str:
    """The key limits are counted under for a peer address.

    Args:
        host: the peer's address as the socket reports it ("127.0.0.1", "::1", "::ffff:10.0.0.1").
    Returns:
        The IPv4 address itself, an IPv4-mapped IPv6 address as IPv4, else the IPv6 /64 network.
    """
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((addr, 64), strict=False))


class ClientGuard:
    """Counts open connections per client and keeps the rate-limit buckets (thread-safe)."""

    def __init__(self, max_client_connections: int, rate: BucketConfig | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Args:
            max_client_connections: open connections one client may hold.
            rate: the per-client token bucket, or None for no rate limit.
            clock: seconds, monotonic (injected by tests).
        """
        if max_client_connections < 1:
            raise ValueError(f"max_client_connections must be at least 1, got {max_client_connections!r}")
        self.max_client_connections = max_client_connections
        self._open: dict[str, int] = {}
        self._table = BucketTable(rate) if rate is not None else None
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def rate(self) -> BucketConfig | None:
        return self._table.config if self._table is not None else None

    def connect(self, key: str) -> bool:
        """Count a new connection of ``key``; False (and not counted) when it already holds the most."""
        with self._lock:
            n = self._open.get(key, 0)
            if n >= self.max_client_connections:
                return False
            self._open[key] = n + 1
            return True

    def disconnect(self, key: str) -> None:
        """Forget one connection of ``key`` (counted by a successful ``connect``)."""
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def open_connections(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)

    def admit(self, key: str) -> float:
        """Take a request token for ``key``: 0.0 to go ahead, else the seconds to wait."""
        if self._table is None:
            return 0.0
        now_s = self._clock()
        with self._lock:
            return self._table.take(key, now_s)


class RequestClock(io.RawIOBase):
    """A socket reader with two timeouts: an idle connection waits up to ``idle_s`` for a request to
    begin; once its first byte arrives, the whole request (line, headers and body) must arrive within
    ``request_s``, however slowly the bytes trickle in. ``reset()`` between requests."""

    def __init__(self, sock: socket.socket, idle_s: float, request_s: float) -> None:
        super().__init__()
        self._sock, self.idle_s, self.request_s = sock, idle_s, request_s
        self._deadline: float | None = None
        self.expired = False

    def readable(self) -> bool:
        return True

    def reset(self) -> None:
        """Between requests: wait for the next one with the idle timeout."""
        self._deadline, self.expired = None, False

    def started(self) -> bool:
        """Whether bytes of the current request have arrived."""
        return self._deadline is not None

    def readinto(self, buf) -> int:  # noqa: ANN001 - io signature
        if self._deadline is None:
            self._sock.settimeout(self.idle_s)
        else:
            left_s = self._deadline - time.monotonic()
            if left_s <= 0:
                self.expired = True
                raise TimeoutError(f"request not received within {self.request_s:g} s")
            self._sock.settimeout(left_s)
        try:
            n = self._sock.recv_into(buf)
        except TimeoutError:
            self.expired = self._deadline is not None
            raise
        if n and self._deadline is None:
            self._deadline = time.monotonic() + self.request_s
        return n

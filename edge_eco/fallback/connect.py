"""Opening a TCP connection with the name lookup inside the call's timeout.

``socket.create_connection`` (what http.client uses) calls getaddrinfo, which no socket timeout or
watchdog can interrupt: a hanging resolver would hold a call past its deadline. Here a literal
address resolves at once and a name is looked up on a daemon thread that the caller stops waiting
for when the timeout passes. Standard library only.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

__all__ = ["ResolveTimeout", "connect"]


class ResolveTimeout(TimeoutError):
    """Name resolution did not finish within the call's timeout."""


def _resolve(host: str, port: int, timeout_s: float) -> list:
    """getaddrinfo bounded by ``timeout_s``: a literal address resolves at once; a name is looked
    up on a daemon thread (getaddrinfo cannot be interrupted) that the caller stops waiting for."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except ValueError:
        pass
    done, box = threading.Event(), []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as exc:
            box.append(exc)
        done.set()

    threading.Thread(target=lookup, name="edge_eco-resolve", daemon=True).start()
    if not done.wait(timeout_s):
        raise ResolveTimeout(f"resolving {host!r} took longer than {timeout_s:.3g} s")
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def connect(address: tuple[str, int], timeout_s: float, source_address=None) -> socket.socket:
    """socket.create_connection with the name lookup inside the timeout (http.client's hook).

    Args:
        address: (host, port).
        timeout_s: bound of the lookup and the connect together.
        source_address: optional local (host, port) to bind.
    Returns:
        The connected socket (its timeout set to what was left).
    Raises:
        ResolveTimeout: the lookup did not finish in time.
        OSError: the lookup failed or no address accepted the connection (TimeoutError included).
    """
    end = time.monotonic() + timeout_s
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in _resolve(address[0], address[1], timeout_s):
        left_s = end - time.monotonic()
        if left_s <= 0:
            raise TimeoutError(f"connecting to {address[0]!r} took longer than {timeout_s:.3g} s")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left_s)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"no address for {address[0]!r}")

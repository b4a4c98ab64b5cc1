"""HTTP transport shared by the remote clients: keep-alive connections, a deadline, error translation.

Standard library only. One persistent connection per calling thread (``http.client`` connections
are not thread-safe), reused across calls and closed together by :meth:`HttpTransport.close`.
A watchdog bounds the whole exchange by its timeout, so a server that drips bytes cannot hold a
call past it. https URLs use TLS with the ssl default context (certificates verified) unless a
context is given. Every failure is :class:`RemoteUnavailable` (cannot reach, timed out, dropped)
or :class:`RemoteProtocolError` (an HTTP reply that is not HTTP).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import json
import math
import socket
import ssl
import threading
import time
import weakref
from urllib.parse import urlsplit

from edge_eco.errors import ManifestError, RemoteProtocolError, RemoteTLSError, RemoteUnavailable, RequestError
from edge_eco.fallback.connect import ResolveTimeout, connect

__all__ = ["HttpTransport", "MAX_REPLY_BYTES", "error_message"]

MAX_REPLY_BYTES = 8 << 20  # a classification reply is tiny; anything this big is not one
# Errors that, on a reused keep-alive connection before any reply byte, mean the server closed it idle.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# TLS errors that mean the connection was dropped (retryable), not that TLS itself was refused.
_TLS_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class _Watchdog:
    """One daemon thread that runs the abort callback of every exchange still going at its deadline
    (a thread per request would cost more than the request on loopback)."""

    def __init__(self) -> None:
        self._heap: list[list] = []  # [deadline, seq, callback or None when disarmed]
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, timeout_s: float, callback) -> list:
        entry = [time.monotonic() + timeout_s, next(self._seq), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edge_eco-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def disarm(self, entry: list) -> None:
        """After this returns, the entry's callback has run or never will."""
        with self._cond:
            entry[2] = None

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                entry = heapq.heappop(self._heap)
                callback, entry[2] = entry[2], None
                callback()  # quick: sets a flag and shuts a socket down


_WATCHDOG = _Watchdog()


class HttpTransport:
    """Thread-safe HTTP(S) exchanges with one host (one keep-alive connection per thread)."""

    def __init__(self, url: str, *, token: str | None = None, default_timeout_s: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None):
        """Describe the server; no connection is made until the first request.

        Args:
            url: base URL, ``http://host:port[/prefix]`` or ``https://host[:port][/prefix]``.
            token: sent as ``Authorization: Bearer <token>`` when set.
            default_timeout_s: bound of one exchange when a call gives none.
            ssl_context: for https URLs; default: ``ssl.create_default_context()`` (verifies).
        Raises:
            ManifestError: the URL or timeout is invalid.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ManifestError(f"remote URL must be http://host[:port] or https://..., got {url!r}")
        if not (default_timeout_s > 0 and math.isfinite(default_timeout_s)):
            raise ManifestError(f"default_timeout_s must be a positive number, got {default_timeout_s!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ManifestError(f"bad port in remote URL {url!r}") from exc
        self.url = url.rstrip("/")
        self.prefix = parts.path.rstrip("/")
        self.default_timeout_s = float(default_timeout_s)
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, port
        if self._https and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl_context = ssl_context
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._conns: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: bytes | None, timeout_s: float | None) -> tuple[int, bytes]:
        """One HTTP exchange bounded by ``timeout_s`` as a whole.

        Args:
            method: "GET" or "POST".
            path: path under the URL's prefix, e.g. ``/v2/models/m/infer``.
            body: request body (JSON bytes) or None.
            timeout_s: bound of the whole exchange; default_timeout_s when None.
        Returns:
            (HTTP status, reply body).
        Raises:
            RequestError: timeout_s is not a positive number.
            RemoteUnavailable: refused, reset, dropped or not complete within timeout_s.
            RemoteProtocolError: the reply is not valid HTTP or is over MAX_REPLY_BYTES.
        """
        timeout_s = self.default_timeout_s if timeout_s is None else float(timeout_s)
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise RequestError(f"timeout_s must be a positive number, got {timeout_s!r}")
        path = self.prefix + path
        where = f"{self.url} ({method} {path})"
        expired = threading.Event()
        holder: list[http.client.HTTPConnection] = []

        def abort() -> None:
            # Per-recv socket timeouts do not bound a server that drips bytes; this does.
            expired.set()
            sock = holder[-1].sock if holder else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        armed = _WATCHDOG.arm(timeout_s, abort)
        try:
            status, raw = self._exchange(method, path, body, timeout_s, where, holder)
        except (RemoteUnavailable, RemoteProtocolError) as exc:
            _WATCHDOG.disarm(armed)
            if expired.is_set():
                raise RemoteUnavailable(f"no complete reply from {where} within {timeout_s:.3g} s") from exc
            raise
        finally:
            _WATCHDOG.disarm(armed)
        if expired.is_set():
            holder[-1].close()
            raise RemoteUnavailable(f"no complete reply from {where} within {timeout_s:.3g} s")
        return status, raw

    def close(self) -> None:
        """Close every connection this transport opened (in any thread)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    def connection(self) -> http.client.HTTPConnection | None:
        """This thread's connection, or None before its first request (for tests and diagnostics)."""
        return getattr(self._local, "conn", None)

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s,
                                                   context=self._ssl_context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            conn._create_connection = connect  # http.client's connect hook: bounds the name lookup too
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        conn.timeout = timeout_s  # used by the next connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def _exchange(self, method: str, path: str, body: bytes | None, timeout_s: float, where: str,
                  holder: list) -> tuple[int, bytes]:
        """The exchange, reconnecting once if a reused keep-alive connection turns out stale."""
        for attempt in (0, 1):
            conn = self._connection(timeout_s)
            holder.append(conn)
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=self.headers)
                resp = conn.getresponse()
            except _STALE as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection; one fresh try
                raise _translate(exc, where, timeout_s, "before a reply") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _translate(exc, where, timeout_s, "before a reply") from exc
            try:
                return resp.status, _read_body(resp, conn)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _translate(exc, where, timeout_s, "mid-reply") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _translate(exc: Exception, where: str, timeout_s: float, phase: str) -> Exception:
    """Map a socket or http.client error to RemoteUnavailable / RemoteProtocolError."""
    if isinstance(exc, ResolveTimeout):
        return RemoteUnavailable(f"cannot reach {where}: {exc}")
    if isinstance(exc, TimeoutError):
        return RemoteUnavailable(f"no reply from {where} within {timeout_s:.3g} s")
    if isinstance(exc, ConnectionRefusedError):
        return RemoteUnavailable(f"cannot reach {where}: connection refused")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_DROPPED):
        return RemoteTLSError(f"TLS failed with {where}: {exc.reason or exc!r}")
    if isinstance(exc, (ConnectionError, http.client.IncompleteRead)):
        return RemoteUnavailable(f"connection to {where} dropped {phase}: {exc!r}")
    if isinstance(exc, http.client.HTTPException):
        return RemoteProtocolError(f"malformed HTTP reply from {where}: {exc!r}")
    return RemoteUnavailable(f"cannot reach {where}: {exc!r}")


def _read_body(resp: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> bytes:
    if resp.length is not None and resp.length > MAX_REPLY_BYTES:
        conn.close()
        raise RemoteProtocolError(f"reply of {resp.length} bytes is over the limit of {MAX_REPLY_BYTES}")
    raw = resp.read(MAX_REPLY_BYTES + 1)
    if len(raw) > MAX_REPLY_BYTES:
        conn.close()
        raise RemoteProtocolError(f"reply is over the limit of {MAX_REPLY_BYTES} bytes")
    if not resp.isclosed():
        resp.read()  # drain a chunked trailer so the connection can be reused
    return raw


def error_message(raw: bytes) -> str:
    """The message of an error reply body: ``{"error": "..."}`` (v2), ``{"error": {"message": ...}}``
    (OpenAI), else the first 200 characters."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return raw[:200].decode("utf-8", "replace") or "(empty body)"
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return json.dumps(doc)[:200]

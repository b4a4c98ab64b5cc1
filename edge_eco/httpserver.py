"""HTTP layer of ``edge-eco serve``: connections, keep-alive, TLS, connection and admission limits,
in-flight tracking for a draining shutdown. Standard library only; the v2 routes live in serve.py."""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection is dropped after this


class HttpError(Exception):
    """An HTTP error reply: status and message (internal to this module)."""

    def __init__(self, status: int, message: str, *, allow: str = "", retry_after: bool = False):
        super().__init__(message)
        self.status, self.message, self.allow, self.retry_after = status, message, allow, retry_after


_DIGITS = re.compile(r"[0-9]{1,18}")


def body_length(headers: Any, method: str) -> int:
    """The length of the request body as its headers frame it (RFC 9112 section 6).

    Args:
        headers: the request headers (an ``email.message.Message``).
        method: the request method; a POST must say its length.
    Returns:
        The body length in bytes (0 when there is none).
    Raises:
        HttpError: 411 for Transfer-Encoding or a POST without Content-Length, 400 for a
            Content-Length that is not digits or that disagrees with another one.
    """
    if headers.get_all("Transfer-Encoding"):
        raise HttpError(411, "Transfer-Encoding (chunked) bodies are not supported; send Content-Length")
    values = [v.strip() for h in headers.get_all("Content-Length") or () for v in h.split(",")]
    if not values:
        if method == "POST":
            raise HttpError(411, "Content-Length is required on POST")
        return 0
    bad = [v for v in values if not _DIGITS.fullmatch(v)]
    if bad:
        raise HttpError(400, f"bad Content-Length {bad[0][:40]!r}: expected a non-negative integer")
    if len({int(v) for v in values}) > 1:
        raise HttpError(400, f"conflicting Content-Length values {values[:4]}")
    return int(values[0])


class Body:
    """The request body, read at most once and only on demand: ``Expect: 100-continue`` is
    answered when the body is first read, i.e. after the auth and size checks passed."""

    def __init__(self, handler: "_Handler", length: int, expect_100: bool) -> None:
        self.length, self._handler, self._expect_100 = length, handler, expect_100
        self.done = length == 0  # False while unread bytes of it remain on the connection

    def read(self) -> bytes:
        """The whole body.

        Raises:
            HttpError: 400 when the connection ends before ``length`` bytes.
        """
        if self._expect_100:
            self._handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._expect_100 = False
        data = self._handler.rfile.read(self.length)
        if len(data) != self.length:
            raise HttpError(400, f"body ended after {len(data)} of {self.length} bytes")
        self.done = True
        return data


class _Handler(BaseHTTPRequestHandler):
    """One connection; dispatches v2 REST requests to the owning InferenceServer."""

    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are two writes; avoid the 40 ms delayed-ACK stall
    server: "HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the CLI decides what to print

    def setup(self) -> None:
        self.server.track(self.request, add=True)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # raises on a bad handshake: the connection just ends
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, add=False)

    def handle_expect_100(self) -> bool:
        return True  # 100 Continue goes out when the body is read (Body.read), after the checks

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the stdlib raises while parsing (bad request line, headers too large, unknown
        method, ...) as the v2 JSON error body; the connection is closed after them."""
        if self.request_version == "HTTP/0.9":  # parsing failed before the version was known
            self.request_version = "HTTP/1.1"
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._reply(code, {"error": f"{text}: {explain}" if explain and explain != text else text})

    def _dispatch(self) -> None:
        with self.server.in_flight:
            self._dispatch_counted(self.command)

    def _dispatch_counted(self, method: str) -> None:
        head = method == "HEAD"
        body = None
        try:
            expect = self.headers.get("Expect", "").lower() == "100-continue" and self.request_version != "HTTP/1.0"
            body = Body(self, body_length(self.headers, method), expect)
            status, payload = self.server.app.handle_request("GET" if head else method, self.path,
                                                             self.headers, body)
            allow, retry_after = "", False
        except HttpError as err:
            status, payload, allow, retry_after = err.status, {"error": err.message}, err.allow, err.retry_after
        if body is None or not body.done:
            self.close_connection = True  # unread (or unframeable) body bytes must not be parsed as a request
        self._reply(status, payload, allow=allow, retry_after=retry_after, head=head)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _reply(self, status: int, payload: dict, *, allow: str = "", retry_after: bool = False,
               head: bool = False) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if retry_after:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)


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


_BUSY_BODY = b'{"error":"too many connections; try again later"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


def _family(addr: tuple[str, int]) -> socket.AddressFamily:
    """The address family of the host to bind: AF_INET when the host has an IPv4 address (so
    "localhost" stays on 127.0.0.1 as before), else AF_INET6 ("::1", "::", an IPv6-only name)."""
    try:
        infos = socket.getaddrinfo(addr[0] or None, addr[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve the address to serve on, {addr[0]!r}: {exc.strerror}") from exc
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families else families[0]


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], app: "InferenceServer", max_connections: int,
                 ssl_context: ssl.SSLContext | None):
        self.app = app
        self.in_flight = InFlight()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self.address_family = _family(addr)  # "::1" or "::" serve IPv6
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Refuse a connection past the limit with a 503 (no thread for it); TLS handshakes happen on
        the connection's own thread, so a slow client cannot stall accept()."""
        with self._conns_lock:
            busy = len(self._conns) >= self._max_connections
        if busy:
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        if self._ssl_context is not None:
            request = self._ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client goes away mid-reply; report anything else (a bug) as usual."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def drop_connections(self) -> None:
        """Wake every handler blocked on a keep-alive read so its thread ends."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already closed by its handler

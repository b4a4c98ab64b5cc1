"""HTTP layer of ``edge-eco serve``: connections, keep-alive, TLS, connection and admission limits,
in-flight tracking for a draining shutdown. Standard library only; the v2 routes live in serve.py."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection is dropped after this


class HttpError(Exception):
    """An HTTP error reply: status and message (internal to this module)."""

    def __init__(self, status: int, message: str, *, keep_alive: bool = False, allow: str = "",
                 retry_after: bool = False):
        super().__init__(message)
        # keep_alive: the request body (if any) was consumed, so the connection stays usable.
        self.status, self.message, self.keep_alive, self.allow = status, message, keep_alive, allow
        self.retry_after = retry_after


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

    def _dispatch(self) -> None:
        method = self.command
        with self.server.in_flight:
            self._dispatch_counted(method)

    def _dispatch_counted(self, method: str) -> None:
        try:
            status, payload = self.server.app.handle_request(method, self.path, self.headers, self.rfile)
            self._reply(status, payload)
        except HttpError as err:
            has_body = self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers
            if has_body and not err.keep_alive:
                self.close_connection = True  # an unread body would be parsed as the next request
            self._reply(err.status, {"error": err.message}, allow=err.allow, retry_after=err.retry_after)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _reply(self, status: int, payload: dict, *, allow: str = "", retry_after: bool = False) -> None:
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
        self._admitted, self.limit = 0, running + waiting

    def enter(self, wait_s: float) -> bool:
        """Take a slot, waiting at most ``wait_s`` in line; False when the line is full or the wait ran out."""
        with self._lock:
            if self._admitted >= self.limit:
                return False
            self._admitted += 1
        if self._slots.acquire(timeout=max(wait_s, 0.0)):
            return True
        with self._lock:
            self._admitted -= 1
        return False

    def leave(self) -> None:
        self._slots.release()
        with self._lock:
            self._admitted -= 1


_BUSY_BODY = b'{"error":"too many connections; try again later"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


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

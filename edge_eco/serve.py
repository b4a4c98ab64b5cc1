"""Open Inference Protocol v2 (KServe v2 REST) server for an ecology.

Standard library only. The served object is any *ecology*: it has ``name``, ``version``,
``labels`` and ``answer(text, *, deadline_ms=None, local_only=False)`` returning an object with
``label``, ``confidence`` and ``path``. A served ecology never forwards further
(``local_only=True``), so a chain phone -> hub -> cloud cannot loop.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready``, and ``POST .../infer``. Errors are ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import hmac
import json
import math
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from edge_eco import __version__
from edge_eco.errors import EdgeEcoError, RequestError

__all__ = ["InferenceServer", "serve_forever", "parse_infer_request"]

OUTPUT_NAMES = ("label", "confidence")
_IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection is dropped after this


class _HttpError(Exception):
    """An HTTP error reply: status and message (internal to this module)."""

    def __init__(self, status: int, message: str, *, keep_alive: bool = False, allow: str = ""):
        super().__init__(message)
        # keep_alive: the request body (if any) was consumed, so the connection stays usable.
        self.status, self.message, self.keep_alive, self.allow = status, message, keep_alive, allow


def _shape_size(shape: Any) -> int:
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"input 'text': shape must be a non-empty list of non-negative ints, got {shape!r}")
    return math.prod(shape)


def parse_infer_request(body: bytes, max_batch: int) -> tuple[list[str], str | None, tuple[str, ...], float | None]:
    """Parse and validate a v2 infer request body.

    Args:
        body: the raw JSON request body.
        max_batch: the largest number of texts accepted.
    Returns:
        (texts, request id or None, requested output names, deadline_ms or None).
    Raises:
        RequestError: naming what was wrong and what was expected.
    """
    try:
        req = json.loads(body)
    except RecursionError as exc:
        raise RequestError("malformed JSON body: nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"malformed JSON body: {exc}") from exc
    if not isinstance(req, dict):
        raise RequestError(f"request body must be a JSON object, got {type(req).__name__}")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise RequestError("'id' must be a string")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list with one input named 'text'")
    names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    if names != ["text"]:
        raise RequestError(f"expected exactly one input named 'text', got {names!r}")
    inp = inputs[0]
    if inp.get("datatype") != "BYTES":
        raise RequestError(f"input 'text': datatype must be 'BYTES', got {inp.get('datatype')!r}")
    size = _shape_size(inp.get("shape"))
    data = inp.get("data")
    if not isinstance(data, list):
        raise RequestError("input 'text': 'data' must be a list of strings")
    if data and all(isinstance(d, list) for d in data):
        data = [d for row in data for d in row]  # clients may nest one level: [["a", "b"]]
    if not all(isinstance(d, str) for d in data):
        raise RequestError("input 'text': every element of 'data' must be a string")
    if len(data) != size:
        raise RequestError(f"input 'text': shape {inp.get('shape')} holds {size} elements, data has {len(data)}")
    if not data:
        raise RequestError("input 'text': no texts given")
    if len(data) > max_batch:
        raise RequestError(f"input 'text': batch of {len(data)} is over the limit of {max_batch}")
    outputs = req.get("outputs")
    wanted: tuple[str, ...] = OUTPUT_NAMES
    if outputs:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RequestError("'outputs' must be a list of objects with a 'name'")
        wanted = tuple(o.get("name") for o in outputs)
        unknown = [n for n in wanted if n not in OUTPUT_NAMES]
        if unknown:
            raise RequestError(f"unknown output(s) {unknown!r}; this model has {list(OUTPUT_NAMES)}")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    deadline_ms = params.get("deadline_ms")
    if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float))
                                    or not math.isfinite(deadline_ms) or deadline_ms <= 0):
        raise RequestError(f"parameter 'deadline_ms' must be a positive number, got {deadline_ms!r}")
    return data, req_id, wanted, (float(deadline_ms) if deadline_ms is not None else None)


class _Handler(BaseHTTPRequestHandler):
    """One connection; dispatches v2 REST requests to the owning InferenceServer."""

    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are two writes; avoid the 40 ms delayed-ACK stall
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the CLI decides what to print

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def _dispatch(self) -> None:
        method = self.command
        with self.server.in_flight:
            self._dispatch_counted(method)

    def _dispatch_counted(self, method: str) -> None:
        try:
            status, payload = self.server.app._handle(method, self.path, self.headers, self.rfile)
            self._reply(status, payload)
        except _HttpError as err:
            has_body = self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers
            if has_body and not err.keep_alive:
                self.close_connection = True  # an unread body would be parsed as the next request
            self._reply(err.status, {"error": err.message}, allow=err.allow)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _reply(self, status: int, payload: dict, *, allow: str = "") -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _InFlight:
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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], app: "InferenceServer"):
        self.app = app
        self.in_flight = _InFlight()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client goes away mid-reply; report anything else (a bug) as usual."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
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


class InferenceServer:
    """Serve an ecology over Open Inference Protocol v2 REST on a background thread."""

    def __init__(self, eco: Any, host: str = "127.0.0.1", port: int = 0, *,
                 max_body_bytes: int = 1 << 20, max_batch: int = 64, token: str | None = None):
        """Bind the listening socket (port 0 picks a free port); call start() to serve.

        Raises:
            RequestError: max_body_bytes or max_batch is not positive.
            OSError: the address cannot be bound (raised by the caller's choice of port).
        """
        if max_body_bytes <= 0 or max_batch <= 0:
            raise RequestError("max_body_bytes and max_batch must be positive")
        self.eco, self.max_body_bytes, self.max_batch = eco, max_body_bytes, max_batch
        self._token = token.encode() if token else None
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        host = self._httpd.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> "InferenceServer":
        """Serve on a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"edge-eco-serve:{self.port}", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_timeout_s``), end idle
        keep-alive connections and close the socket. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.drop_connections()  # SHUT_RD: idle readers wake; in-flight replies still go out
        self._httpd.in_flight.wait_idle(drain_timeout_s)
        self._httpd.server_close()

    def __enter__(self) -> "InferenceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- request handling (runs on handler threads) -------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: Any, rfile: Any) -> tuple[int, dict]:
        """Route one request; returns (status, JSON payload) or raises _HttpError."""
        path = urlsplit(raw_path).path
        if self._token is not None and path not in ("/v2/health/live", "/v2/health/ready"):
            auth = headers.get("Authorization", "")
            given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, self._token):
                raise _HttpError(401, "missing or wrong bearer token")
        route, model_ok = self._route(path)
        want = "POST" if route == "infer" else "GET"
        if method != want:
            raise _HttpError(405, f"method {method} not allowed on {raw_path}; use {want}", allow=want)
        if not model_ok:
            raise _HttpError(404, f"unknown model or version in {raw_path}; this server has model "
                                  f"{self.eco.name!r} version {self.eco.version!r}")
        if route == "infer":
            return 200, self._infer(self._read_body(headers, rfile))
        return 200, self._metadata(route)

    def _route(self, path: str) -> tuple[str, bool]:
        parts = [unquote(p) for p in path.split("/") if p]  # a model name may hold an escaped "/"
        fixed = {("v2",): "server", ("v2", "health", "live"): "live", ("v2", "health", "ready"): "health"}
        if tuple(parts) in fixed:
            return fixed[tuple(parts)], True
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            raise _HttpError(404, f"no such endpoint: {path}")
        ok = parts[2] == self.eco.name
        rest = parts[3:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise _HttpError(404, f"no such endpoint: {path}")
            ok, rest = ok and rest[1] == self.eco.version, rest[2:]
        if rest in ([], ["ready"], ["infer"]):
            return (rest[0] if rest else "model"), ok
        raise _HttpError(404, f"no such endpoint: {path}")

    def _metadata(self, route: str) -> dict:
        eco = self.eco
        if route == "live":
            return {"live": True}
        if route == "health":
            return {"ready": True}
        if route == "server":
            return {"name": "edge_eco", "version": __version__, "extensions": []}
        if route == "ready":
            return {"name": eco.name, "ready": True}
        return {"name": eco.name, "versions": [eco.version], "platform": "edge_eco",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "confidence", "datatype": "FP32", "shape": [-1]}],
                "parameters": {"labels": list(eco.labels)}}

    def _read_body(self, headers: Any, rfile: Any) -> bytes:
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            raise _HttpError(411, "chunked bodies are not supported; send Content-Length")
        raw = headers.get("Content-Length")
        if raw is None:
            raise _HttpError(411, "Content-Length is required on POST")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            raise _HttpError(400, f"bad Content-Length {raw!r}") from None
        if length > self.max_body_bytes:
            raise _HttpError(413, f"body of {length} bytes is over the limit of {self.max_body_bytes}")
        body = rfile.read(length)
        if len(body) != length:
            raise _HttpError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _infer(self, body: bytes) -> dict:
        try:
            texts, req_id, wanted, deadline_ms = parse_infer_request(body, self.max_batch)
            labels, confidences = [], []
            for i, text in enumerate(texts):
                try:
                    ans = self.eco.answer(text, deadline_ms=deadline_ms, local_only=True)
                except RequestError as exc:
                    raise RequestError(f"input 'text' element {i}: {exc}") from exc
                labels.append(str(ans.label))
                confidences.append(float(ans.confidence))
        except RequestError as exc:
            raise _HttpError(400, str(exc), keep_alive=True) from exc
        except EdgeEcoError as exc:
            raise _HttpError(500, f"{type(exc).__name__}: {exc}", keep_alive=True) from exc
        except Exception as exc:  # a bug in the ecology must not kill the connection thread silently
            raise _HttpError(500, f"internal error: {type(exc).__name__}", keep_alive=True) from exc
        batch = len(texts)
        outputs = {"label": {"name": "label", "datatype": "BYTES", "shape": [batch], "data": labels},
                   "confidence": {"name": "confidence", "datatype": "FP32", "shape": [batch], "data": confidences}}
        reply: dict = {"model_name": self.eco.name, "model_version": self.eco.version}
        if req_id is not None:
            reply["id"] = req_id
        reply["outputs"] = [outputs[n] for n in dict.fromkeys(wanted)]
        return reply


def serve_forever(eco: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, *,
                  on_ready: Callable[[InferenceServer], None] | None = None, **options: Any) -> None:
    """Serve an ecology until SIGTERM or SIGINT, then shut down cleanly and return.

    Args:
        eco: the ecology to serve.
        host, port: where to listen (port 0 picks a free port).
        token: when set, every request needs ``Authorization: Bearer <token>``.
        on_ready: called with the started server (e.g. for the CLI to print its URL).
        options: passed to InferenceServer (max_body_bytes, max_batch).
    Must be called from the main thread (signal handlers can only be installed there).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with InferenceServer(eco, host, port, token=token, **options) as server:
            if on_ready is not None:
                on_ready(server)
            while not stop.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Open Inference Protocol v2 (KServe v2 REST) server for an ecology.

Standard library only. The served object is any *ecology*: it has ``name``, ``version``,
``labels`` and ``answer(text, *, deadline_ms=None, local_only=False)`` returning an object with
``label``, ``confidence`` and ``path``. A served ecology never forwards further
(``local_only=True``), so a chain phone -> hub -> cloud cannot loop.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready``, and ``POST .../infer``. Errors are ``{"error": "..."}`` with a 4xx/5xx status.
Inputs: ``text`` (BYTES), and ``features`` (FP32 ``[batch, dim]``) when the ecology has
``feature_dim`` and ``answer_features(row, ...)``.

Load: at most ``max_concurrent`` infer requests run at once and ``max_queue`` more wait (each at
most ``queue_timeout_s``); past that the server answers 503 with ``Retry-After`` at once instead
of queueing forever. A request's ``parameters.deadline_ms`` bounds its queueing and its compute
together: checked before each text of a batch, a request past it answers 504 (queued too long,
or the batch did not finish in time); texts are not answered partially. Connections past ``max_connections`` get a
503 and are closed. Limits on body bytes, batch size and text bytes answer 413/400. Per client (clientguard.py):
connections past ``max_client_connections`` get a 429 and are closed, a request not fully received within
``request_timeout_s`` of its first byte gets a 408, and with ``rate_limit_per_s`` requests past the client's token
bucket get a 429 with ``Retry-After`` (health probes are exempt).
"""

from __future__ import annotations

import hmac
import signal
import ssl
import threading
import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import numpy as np

from edge_eco import __version__
from edge_eco.admission import Admission
from edge_eco.clientguard import ClientGuard
from edge_eco.errors import EdgeEcoError, RequestError
from edge_eco.httpserver import Body, HttpError, HTTPServer
from edge_eco.ratelimit import BucketConfig
from edge_eco.v2_request import InferRequest, parse_infer_request

__all__ = ["InferenceServer", "serve_forever"]

MODEL_ERROR_REPORT_S = 60.0  # a failing model is reported at most this often (with a count)
_report_clock = time.monotonic  # the clock of those reports (tests move it)

class InferenceServer:
    """Serve an ecology over Open Inference Protocol v2 REST on a background thread."""

    def __init__(self, eco: Any, host: str = "127.0.0.1", port: int = 0, *,
                 max_body_bytes: int = 1 << 20, max_batch: int = 64, max_text_bytes: int = 16384,
                 max_concurrent: int = 4, max_queue: int = 64, queue_timeout_s: float = 5.0,
                 max_connections: int = 512, token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 max_client_connections: int = 16, request_timeout_s: float = 10.0,
                 rate_limit_per_s: float | None = None, burst: int | None = None, rate_limit_clients: int = 4096,
                 on_model_error: Callable[[str, str, int], None] | None = None):
        """Bind the listening socket (port 0 picks a free port); call start() to serve.

        Args:
            eco: the ecology (name, version, labels, answer(); optionally feature_dim and answer_features()).
            host, port: where to listen.
            max_body_bytes: larger bodies answer 413.
            max_batch: more texts or rows in one request answer 400.
            max_text_bytes: a longer text (UTF-8) answers 400.
            max_concurrent: infer requests running at once.
            max_queue: infer requests waiting for a slot; more answer 503 at once.
            queue_timeout_s: the longest wait for a slot (a request's own deadline may be shorter).
            max_connections: open connections past this get a 503 and are closed.
            token: when set, every request but the health probes needs ``Authorization: Bearer <token>``.
            ssl_context: a server-side TLS context (certificate loaded) to serve https.
            max_client_connections: open connections one client (IPv4 address, IPv6 /64) may hold; more get 429.
            request_timeout_s: a request's line, headers and body must arrive within this of its first byte (408).
            rate_limit_per_s: per-client requests/s (token bucket), or None for no rate limit.
            burst: the bucket's size (default: max(1, 2 x rate_limit_per_s)); needs rate_limit_per_s.
            rate_limit_clients: buckets kept (least recently seen clients are forgotten past this).
            on_model_error: called with (model id, its error, how many answers it failed since the
                last call) when an answer went around a model that failed to load or run (the
                others answered: the reply cannot say so), at most once per model per
                ``MODEL_ERROR_REPORT_S``; ``edge-eco serve`` prints it to stderr.
        Raises:
            RequestError: a limit is not positive.
            OSError: the address cannot be bound (raised by the caller's choice of port).
        """
        limits = (max_body_bytes, max_batch, max_text_bytes, max_concurrent, max_connections)
        if min(limits) <= 0 or max_queue < 0 or not queue_timeout_s > 0:
            raise RequestError("server limits must be positive (max_queue may be 0)")
        if burst is not None and rate_limit_per_s is None:
            raise RequestError("burst needs rate_limit_per_s")
        if not request_timeout_s > 0:
            raise RequestError(f"request_timeout_s must be positive, got {request_timeout_s!r}")
        try:
            rate = None if rate_limit_per_s is None else BucketConfig(
                float(rate_limit_per_s), burst if burst is not None else max(1, round(2 * rate_limit_per_s)),
                rate_limit_clients)
            guard = ClientGuard(max_client_connections, rate)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        self.eco, self.max_body_bytes, self.max_batch = eco, max_body_bytes, max_batch
        self.max_text_bytes, self.queue_timeout_s = max_text_bytes, float(queue_timeout_s)
        self._on_model_error = on_model_error
        self._model_errors: dict[str, list] = {}  # model -> [last report (monotonic), failures since]
        self._model_errors_lock = threading.Lock()
        self._feature_dim = getattr(eco, "feature_dim", None) if hasattr(eco, "answer_features") else None
        # a sensor ecology (Ecology.takes names its windows) answers no text: its metadata lists only features
        self._takes_text = getattr(eco, "takes", "text") == "text"
        self._admission = Admission(max_concurrent, max_queue)
        self._token = token.encode() if token else None
        self._scheme = "https" if ssl_context is not None else "http"
        self._httpd = HTTPServer((host, port), self, max_connections, ssl_context, guard, float(request_timeout_s))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        host = self._httpd.server_address[0]
        return f"{self._scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

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

    def handle_request(self, method: str, raw_path: str, headers: Any, body: Body) -> tuple[int, dict]:
        """Route one request; returns (status, JSON payload) or raises HttpError."""
        path = urlsplit(raw_path).path
        if self._token is not None and path not in ("/v2/health/live", "/v2/health/ready"):
            auth = headers.get("Authorization", "")
            given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, self._token):
                raise HttpError(401, "missing or wrong bearer token")
        route, model_ok = self._route(path)
        want = "POST" if route == "infer" else "GET"
        if method != want:
            raise HttpError(405, f"method {method} not allowed on {raw_path}; use {want}", allow=want)
        if not model_ok:
            host = (headers.get("Host") or self.url.split("://", 1)[1])[:255]
            raise HttpError(404, f"unknown model or version in {raw_path}; this server has model "
                                  f"{self.eco.name!r} version {self.eco.version!r}: name it in the URL "
                                  f"({self._scheme}://{host}/v2/models/{self.eco.name}) or with "
                                  f"--remote-model {self.eco.name} / [remote] model")
        if route != "infer":
            return 200, self._metadata(route)
        if headers.get("Inference-Header-Content-Length") is not None:
            self._read_body(body)
            raise HttpError(400, "the binary tensor data extension is not supported; send JSON tensors "
                                  "(tritonclient: binary_data=False)")
        req = self._parse(self._read_body(body))
        t0 = time.monotonic()
        wait_s = self.queue_timeout_s if req.deadline_ms is None else min(self.queue_timeout_s, req.deadline_ms / 1e3)
        refused = self._admission.enter(wait_s)
        if refused is not None:
            raise self._refusal(refused, req, (time.monotonic() - t0) * 1e3)
        try:
            return 200, self._infer(req, t0)
        finally:
            self._admission.leave()

    def _refusal(self, reason: str, req: InferRequest, waited_ms: float) -> HttpError:
        """Why a request got no slot: the server is at capacity (503), its deadline passed while
        it waited (504), or no slot came free within queue_timeout_s (503)."""
        a = self._admission
        if reason == "full":
            return HttpError(503, f"server at capacity: {a.running} request{'s' * (a.running != 1)} running and "
                                  f"{a.waiting} queued (max_concurrent, max_queue); try again later",
                             retry_after=True)
        if req.deadline_ms is not None and req.deadline_ms / 1e3 <= self.queue_timeout_s:
            return HttpError(504, f"deadline_ms {req.deadline_ms:g} passed while queued for one of "
                                  f"{a.running} slot(s) (waited {waited_ms:.0f} ms)")
        return HttpError(503, f"server busy: no slot free within queue_timeout_s {self.queue_timeout_s:g} "
                              f"(waited {waited_ms:.0f} ms); try again later", retry_after=True)

    def _route(self, path: str) -> tuple[str, bool]:
        parts = [unquote(p) for p in path.split("/") if p]  # a model name may hold an escaped "/"
        fixed = {("v2",): "server", ("v2", "health", "live"): "live", ("v2", "health", "ready"): "health"}
        if tuple(parts) in fixed:
            return fixed[tuple(parts)], True
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            raise HttpError(404, f"no such endpoint: {path}")
        ok = parts[2] == self.eco.name
        rest = parts[3:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise HttpError(404, f"no such endpoint: {path}")
            ok, rest = ok and rest[1] == self.eco.version, rest[2:]
        if rest in ([], ["ready"], ["infer"]):
            return (rest[0] if rest else "model"), ok
        raise HttpError(404, f"no such endpoint: {path}")

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
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}] if self._takes_text else []
        if self._feature_dim:
            inputs.append({"name": "features", "datatype": "FP32", "shape": [-1, self._feature_dim]})
        return {"name": eco.name, "versions": [eco.version], "platform": "edge_eco", "inputs": inputs,
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "confidence", "datatype": "FP32", "shape": [-1]}],
                "parameters": {"labels": list(eco.labels), "max_batch": self.max_batch,
                               "max_text_bytes": self.max_text_bytes}}

    def _read_body(self, body: Body) -> bytes:
        if body.length > self.max_body_bytes:
            raise HttpError(413, f"body of {body.length} bytes is over the limit of {self.max_body_bytes}")
        return body.read()

    def _parse(self, body: bytes) -> InferRequest:
        try:
            return parse_infer_request(body, self.max_batch, max_text_bytes=self.max_text_bytes,
                                       feature_dim=self._feature_dim, text=self._takes_text)
        except RequestError as exc:
            raise HttpError(400, str(exc)) from exc

    def _infer(self, req: InferRequest, t0: float) -> dict:
        """Answer every item; with a deadline, the time left is checked before each item and a
        batch that runs past it stops there with 504 (no partial reply)."""
        end = None if req.deadline_ms is None else t0 + req.deadline_ms / 1e3
        if req.texts is not None:
            items, run, name = req.texts, self.eco.answer, "text"
        else:
            items, run, name = req.rows, self.eco.answer_features, "features"
        try:
            labels, confidences = [], []
            for i, item in enumerate(items):
                left_ms = None if end is None else (end - time.monotonic()) * 1e3
                if left_ms is not None and left_ms <= 0:
                    raise HttpError(504, f"deadline_ms {req.deadline_ms:g} passed after {i} of {len(items)} "
                                         f"{'texts' if name == 'text' else 'rows'} (queued and computed "
                                         f"{(time.monotonic() - t0) * 1e3:.0f} ms); send fewer per request "
                                         "or a longer deadline")
                try:
                    ans = run(item, deadline_ms=left_ms, local_only=True)
                except RequestError as exc:
                    raise RequestError(f"input {name!r} element {i}: {exc}") from exc
                if self._on_model_error is not None:
                    failed = getattr(ans, "provenance", {}).get("model_errors")
                    if failed:
                        self._report_model_errors(failed)
                labels.append(str(ans.label))
                confidences.append(_fp32(ans.confidence))
        except RequestError as exc:
            raise HttpError(400, str(exc)) from exc
        except EdgeEcoError as exc:
            raise HttpError(500, f"{type(exc).__name__}: {exc}") from exc
        except HttpError:
            raise
        except Exception as exc:  # a bug in the ecology must not kill the connection thread silently
            raise HttpError(500, f"internal error: {type(exc).__name__}") from exc
        batch = req.batch
        outputs = {"label": {"name": "label", "datatype": "BYTES", "shape": [batch], "data": labels},
                   "confidence": {"name": "confidence", "datatype": "FP32", "shape": [batch], "data": confidences}}
        reply: dict = {"model_name": self.eco.name, "model_version": self.eco.version}
        if req.req_id is not None:
            reply["id"] = req.req_id
        reply["outputs"] = [outputs[n] for n in dict.fromkeys(req.outputs)]
        return reply


    def _report_model_errors(self, failed: dict[str, str]) -> None:
        """Pass models' errors to ``on_model_error``, each at most once per MODEL_ERROR_REPORT_S."""
        now, due = _report_clock(), []
        with self._model_errors_lock:
            for model_id, error in failed.items():
                seen = self._model_errors.setdefault(model_id, [None, 0])
                seen[1] += 1
                if seen[0] is None or now - seen[0] >= MODEL_ERROR_REPORT_S:
                    due.append((model_id, error, seen[1]))
                    seen[0], seen[1] = now, 0
        for model_id, error, count in due:
            try:
                self._on_model_error(model_id, error, count)
            except Exception:  # noqa: BLE001 - a failing report must not fail the answer
                pass


def _fp32(x: float) -> float:
    """``x`` as the FP32 the reply declares, written with the shortest digits that read back as
    that float32 (0.9459, not 0.945912345678901 or 0.9459000229835510)."""
    return float(str(np.float32(x)))


def serve_forever(eco: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, *,
                  on_ready: Callable[[InferenceServer], None] | None = None, **options: Any) -> None:
    """Serve an ecology until SIGTERM or SIGINT, then shut down cleanly and return.

    Args:
        eco: the ecology to serve.
        host, port: where to listen (port 0 picks a free port).
        token: when set, every request needs ``Authorization: Bearer <token>``.
        on_ready: called with the started server (e.g. for the CLI to print its URL).
        options: passed to InferenceServer (limits, ssl_context).
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

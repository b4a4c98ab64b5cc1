"""Open Inference Protocol v2 (KServe v2 REST) client for a remote generalist.

Standard library only. Works against ``edge-eco serve``, Triton, KServe and MLServer models that take
one BYTES input of texts and return ``label`` (BYTES) and ``confidence`` (FP32/FP64) outputs.
Every failure is an edge_eco error: :class:`RemoteUnavailable` when the server cannot be reached in
time, :class:`RemoteProtocolError` when it answers with an error status or a malformed reply.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from edge_eco.errors import ManifestError, RemoteProtocolError, RemoteUnavailable, RequestError
from edge_eco.fallback.breaker import CircuitBreaker

__all__ = ["V2Client", "RemoteAnswer"]

MAX_REPLY_BYTES = 8 << 20  # a classification reply is tiny; anything this big is not one
# Errors that, on a reused keep-alive connection before any reply byte, mean the server closed it idle.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass(frozen=True)
class RemoteAnswer:
    """One answer from a remote v2 model."""

    label: str
    confidence: float
    model: str
    model_version: str
    latency_ms: float


class V2Client:
    """Thread-safe client for one model on a v2 REST server (one keep-alive connection per thread)."""

    def __init__(self, url: str, model: str, *, token: str | None = None, default_timeout_s: float = 2.0,
                 input_name: str = "text", ssl_context: ssl.SSLContext | None = None,
                 breaker: CircuitBreaker | None = None):
        """Describe the remote model; no connection is made until the first call.

        Args:
            url: base URL, ``http://host:port`` or ``https://host[/prefix]``.
            model: the model name on the server.
            token: sent as ``Authorization: Bearer <token>`` when set.
            default_timeout_s: connect and read timeout when a call gives none.
            input_name: name of the BYTES input tensor on the server.
            ssl_context: for https URLs; the default verifies certificates.
            breaker: circuit breaker (default: open after 5 failures in a row, probe after 1 s,
                backing off to 30 s); while open, infer fails fast with RemoteUnavailable.
        Raises:
            ManifestError: the URL, model name or timeout is invalid.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ManifestError(f"remote URL must be http://host[:port] or https://..., got {url!r}")
        if not model:
            raise ManifestError("remote model name must not be empty")
        if not (default_timeout_s > 0 and math.isfinite(default_timeout_s)):
            raise ManifestError(f"default_timeout_s must be a positive number, got {default_timeout_s!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ManifestError(f"bad port in remote URL {url!r}") from exc
        self.url, self.model, self.input_name = url.rstrip("/"), model, input_name
        self.default_timeout_s = float(default_timeout_s)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, port
        self._ssl_context = ssl_context
        self._model_path = f"{parts.path.rstrip('/')}/v2/models/{quote(model, safe='')}"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._conns: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def infer(self, texts: list[str], *, timeout_s: float | None = None) -> list[RemoteAnswer]:
        """Classify a batch of texts remotely.

        Args:
            texts: one or more strings.
            timeout_s: connect and per-read timeout; default_timeout_s when None.
        Returns:
            One RemoteAnswer per text, in order.
        Raises:
            RequestError: texts is empty or not a list of strings.
            RemoteUnavailable: refused, reset or timed out.
            RemoteProtocolError: error status, or a reply that is not a valid v2 answer for this batch.
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise RequestError("texts must be a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise RequestError("every text must be a string")
        wait_s = self.breaker.allow()
        if wait_s is not None:
            raise RemoteUnavailable(f"circuit open for {self.url} after repeated failures; "
                                    f"next probe in {wait_s:.2f} s")
        req_id = str(next(self._ids))
        body = json.dumps({
            "id": req_id,
            "inputs": [{"name": self.input_name, "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}],
            "outputs": [{"name": "label"}, {"name": "confidence"}],
        }).encode()
        t0 = time.perf_counter()
        try:
            status, raw = self._request("POST", f"{self._model_path}/infer", body, timeout_s)
            latency_ms = (time.perf_counter() - t0) * 1000.0
            if status != 200:
                raise RemoteProtocolError(f"HTTP {status} from {self.url} model {self.model!r}: "
                                          f"{_error_message(raw)}")
            answers = _parse_reply(raw, len(texts), req_id, self.model, latency_ms)
        except (RemoteUnavailable, RemoteProtocolError):
            self.breaker.failure()
            raise
        self.breaker.success()
        return answers

    def ready(self, timeout_s: float = 1.0) -> bool:
        """True when the server says the model is ready; False on any failure."""
        try:
            status, _ = self._request("GET", f"{self._model_path}/ready", None, timeout_s)
        except (RemoteUnavailable, RemoteProtocolError):
            return False
        return status == 200

    def close(self) -> None:
        """Close every connection this client opened (in any thread)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    def __enter__(self) -> "V2Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s,
                                                   context=self._ssl_context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        conn.timeout = timeout_s  # used by the next connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def _request(self, method: str, path: str, body: bytes | None, timeout_s: float | None) -> tuple[int, bytes]:
        """One HTTP exchange, reconnecting once if a reused keep-alive connection turns out stale."""
        timeout_s = self.default_timeout_s if timeout_s is None else float(timeout_s)
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise RequestError(f"timeout_s must be a positive number, got {timeout_s!r}")
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

        watchdog = threading.Timer(timeout_s, abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            status, raw = self._exchange(method, path, body, timeout_s, where, holder)
        except (RemoteUnavailable, RemoteProtocolError) as exc:
            if expired.is_set():
                raise RemoteUnavailable(f"no complete reply from {where} within {timeout_s:g} s") from exc
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            holder[-1].close()
            raise RemoteUnavailable(f"no complete reply from {where} within {timeout_s:g} s")
        return status, raw

    def _exchange(self, method: str, path: str, body: bytes | None, timeout_s: float, where: str,
                  holder: list) -> tuple[int, bytes]:
        for attempt in (0, 1):
            conn = self._connection(timeout_s)
            holder.append(conn)
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=self._headers)
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
    if isinstance(exc, TimeoutError):
        return RemoteUnavailable(f"no reply from {where} within {timeout_s:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return RemoteUnavailable(f"cannot reach {where}: connection refused")
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


def _error_message(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace") or "(empty body)"
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return json.dumps(doc)[:200]


def _flat(data: Any) -> Any:
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):
        return [d for row in data for d in row]
    return data


def _output(outputs: dict[str, Any], name: str, datatypes: tuple[str, ...], batch: int) -> list:
    out = outputs.get(name)
    if out is None:
        raise RemoteProtocolError(f"reply has no output {name!r} (got {sorted(outputs)})")
    if out.get("datatype") not in datatypes:
        raise RemoteProtocolError(f"output {name!r}: datatype {out.get('datatype')!r}, expected one of {datatypes}")
    shape = out.get("shape")
    if (not isinstance(shape, list) or not shape or shape[0] != batch
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) or math.prod(shape) != batch):
        raise RemoteProtocolError(f"output {name!r}: shape {shape!r}, expected [{batch}]")
    data = _flat(out.get("data"))
    if not isinstance(data, list) or len(data) != batch:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise RemoteProtocolError(f"output {name!r}: expected {batch} values, got {got}")
    return data


def _parse_reply(raw: bytes, batch: int, req_id: str, model: str, latency_ms: float) -> list[RemoteAnswer]:
    """Validate a v2 infer reply strictly and turn it into answers."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RemoteProtocolError(f"reply is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"reply must be a JSON object, got {type(doc).__name__}")
    if "id" in doc and doc["id"] != req_id:
        raise RemoteProtocolError(f"reply id {doc['id']!r} does not match request id {req_id!r}")
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RemoteProtocolError("reply 'outputs' must be a list of objects")
    by_name = {o.get("name"): o for o in outputs}
    labels = _output(by_name, "label", ("BYTES",), batch)
    confs = _output(by_name, "confidence", ("FP32", "FP64"), batch)
    if not all(isinstance(x, str) for x in labels):
        raise RemoteProtocolError("output 'label': every value must be a string")
    for x in confs:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0.0 <= x <= 1.0:
            raise RemoteProtocolError(f"output 'confidence': {x!r} is not a number in [0, 1]")
    name = doc.get("model_name") if isinstance(doc.get("model_name"), str) else model
    version = doc.get("model_version") if isinstance(doc.get("model_version"), str) else ""
    return [RemoteAnswer(label, float(conf), name, version, latency_ms) for label, conf in zip(labels, confs)]

"""The server under load and at its limits: FP32 feature inputs, admission (503 instead of queueing
forever), connection limit, text-length limit, concurrent keep-alive clients, TLS on loopback."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from edge_eco.errors import RemoteUnavailable, RequestError
from edge_eco.fallback import V2Client
from edge_eco.fallback.retry import RetryPolicy
from edge_eco.serve import InferenceServer


@dataclass(frozen=True)
class Ans:
    label: str
    confidence: float
    path: str = "direct"


class VecEco:
    """Texts: 'long' over 5 characters else 'short'. Features (dim 3): the label of the largest
    coordinate ('x', 'y', 'z'), confidence = its softmax share. ``gate`` (when set) blocks answers."""

    name, version, labels, feature_dim = "vec", "1", ("long", "short", "x", "y", "z"), 3

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.running = 0

    def answer(self, text, *, deadline_ms=None, local_only=False):
        if self.gate is not None:
            self.running += 1
            self.gate.wait(5)
        return Ans("long" if len(text) > 5 else "short", 0.9)

    def answer_features(self, row, *, deadline_ms=None, local_only=False):
        import math
        if len(row) != 3:
            raise RequestError("row must have 3 values")
        e = [math.exp(v) for v in row]
        i = max(range(3), key=lambda k: row[k])
        return Ans("xyz"[i], e[i] / sum(e))


def call(port, method, path, body=None, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    return r.status, json.loads(raw), r


def texts(*xs, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(xs)], "data": list(xs)}], **extra}


INFER = "/v2/models/vec/infer"


def test_fp32_features_batch_and_metadata():
    with InferenceServer(VecEco()) as srv:
        status, meta, _ = call(srv.port, "GET", "/v2/models/vec")
        assert meta["inputs"][1] == {"name": "features", "datatype": "FP32", "shape": [-1, 3]}
        body = {"id": "f1", "inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 3],
                                        "data": [[0.0, 2.0, 0.0], [1.0, 0.5, 3.0]]}]}
        status, doc, _ = call(srv.port, "POST", INFER, body)
        assert status == 200 and doc["id"] == "f1"
        assert doc["outputs"][0]["data"] == ["y", "z"]
        assert doc["outputs"][1]["data"][0] == pytest.approx(0.7870, abs=1e-4)  # e^2 / (e^2 + 2)
        flat = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [5, 0, 0]}]}
        assert call(srv.port, "POST", INFER, flat)[1]["outputs"][0]["data"] == ["x"]
        for inp, needle in [
            ({"datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}, "shape must be [batch, 3]"),
            ({"datatype": "FP64", "shape": [1, 3], "data": [0, 0, 0]}, "datatype must be 'FP32'"),
            ({"datatype": "FP32", "shape": [2, 3], "data": [0, 0, 0]}, "holds 6 elements, data has 3"),
            ({"datatype": "FP32", "shape": [1, 3], "data": [0, "a", 0]}, "finite number"),
        ]:
            status, doc, _ = call(srv.port, "POST", INFER, {"inputs": [{"name": "features", **inp}]})
            assert status == 400 and needle in doc["error"], doc
        raw = b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [NaN, 0, 0]}]}'
        status, doc, _ = call(srv.port, "POST", INFER, raw)
        assert status == 400 and "finite number" in doc["error"]


def test_text_only_ecology_rejects_features():
    class TextEco:
        name, version, labels, feature_dim = "vec", "1", ("long", "short"), 3  # but no answer_features

    with InferenceServer(TextEco()) as srv:
        assert len(call(srv.port, "GET", "/v2/models/vec")[1]["inputs"]) == 1
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}]}
        status, doc, _ = call(srv.port, "POST", INFER, body)
        assert status == 400 and "one input named 'text', got ['features']" in doc["error"]


def test_text_length_and_binary_extension_limits():
    with InferenceServer(VecEco(), max_text_bytes=10) as srv:
        assert call(srv.port, "POST", INFER, texts("0123456789"))[0] == 200
        status, doc, _ = call(srv.port, "POST", INFER, texts("ok", "ééééééé"))
        assert status == 400 and "element 1: 14 bytes is over the limit of 10" in doc["error"]
        status, doc, _ = call(srv.port, "POST", INFER, json.dumps(texts("a")).encode(),
                              headers={"Inference-Header-Content-Length": "10"})
        assert status == 400 and "binary tensor data extension is not supported" in doc["error"]


def test_overload_answers_503_quickly_instead_of_queueing():
    eco = VecEco()
    eco.gate = threading.Event()
    with InferenceServer(eco, max_concurrent=1, max_queue=1) as srv, ThreadPoolExecutor(4) as pool:
        first = pool.submit(call, srv.port, "POST", INFER, texts("a"))
        while eco.running < 1:
            time.sleep(0.005)
        second = pool.submit(call, srv.port, "POST", INFER, texts("b"))  # waits in the queue
        time.sleep(0.05)
        t0 = time.monotonic()
        status, doc, resp = call(srv.port, "POST", INFER, texts("c"))
        took_s = time.monotonic() - t0
        assert status == 503 and "server at capacity" in doc["error"] and resp.getheader("Retry-After") == "1"
        assert took_s < 0.1
        # a queued request with a short deadline gives up when its deadline passes
        t0 = time.monotonic()
        status, doc, _ = call(srv.port, "GET", "/v2/health/ready")  # health is never queued
        assert status == 200 and time.monotonic() - t0 < 0.1
        eco.gate.set()
        assert first.result()[0] == 200 and second.result()[0] == 200


def test_queue_wait_is_bounded_by_the_request_deadline():
    eco = VecEco()
    eco.gate = threading.Event()
    with InferenceServer(eco, max_concurrent=1, max_queue=4) as srv, ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, srv.port, "POST", INFER, texts("a"))
        while eco.running < 1:
            time.sleep(0.005)
        t0 = time.monotonic()
        status, doc, _ = call(srv.port, "POST", INFER, texts("b", parameters={"deadline_ms": 100}))
        waited = time.monotonic() - t0
        eco.gate.set()
        assert first.result()[0] == 200
    assert status == 504 and "deadline_ms 100 passed while queued" in doc["error"] and 0.09 < waited < 0.4


def test_connections_past_the_limit_get_503_and_close():
    with InferenceServer(VecEco(), max_connections=2) as srv:
        conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2) for _ in range(2)]
        for c in conns:
            assert call(srv.port, "GET", "/v2/health/live", conn=c)[0] == 200
        status, doc, resp = call(srv.port, "GET", "/v2/health/live")
        assert status == 503 and "too many connections" in doc["error"]
        assert resp.getheader("Connection") == "close"
        conns[0].close()
        time.sleep(0.1)
        assert call(srv.port, "GET", "/v2/health/live")[0] == 200
        conns[1].close()


def test_concurrent_keep_alive_clients():
    with InferenceServer(VecEco(), max_concurrent=4) as srv, V2Client(srv.url, "vec") as client:
        def work(i):
            socks, labels = set(), []
            for j in range(15):
                labels += [a.label for a in client.infer(["x" * (i + j), "abcdefgh"])]
                socks.add(id(client.transport.connection().sock))
            return socks, labels

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
    for i, (socks, labels) in enumerate(results):
        assert len(socks) == 1  # one keep-alive connection per client thread, reused 15 times
        assert labels == [x for j in range(15) for x in ("long" if i + j > 5 else "short", "long")]


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a test certificate"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls_with_a_self_signed_certificate(self_signed):
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with InferenceServer(VecEco(), ssl_context=server_ctx, token="t") as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(cert))
        with V2Client(srv.url, "vec", token="t", ssl_context=trusting) as c:
            assert [a.label for a in c.infer(["hi", "a long one"])] == ["short", "long"]
            assert isinstance(c.transport.connection().sock, ssl.SSLSocket)
        # The default context verifies certificates: a self-signed one is refused, not trusted.
        with V2Client(srv.url, "vec", token="t", retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises(RemoteUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                c.infer(["hi"])
        # A plain-http client talking to the TLS port fails cleanly, and the server carries on.
        with V2Client(srv.url.replace("https", "http"), "vec", token="t", retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises((RemoteUnavailable, Exception)):
                c.infer(["hi"], timeout_s=0.5)
        with V2Client(srv.url, "vec", token="t", ssl_context=trusting) as c:
            assert c.infer(["still serving"])[0].label == "long"


def test_a_failed_certificate_check_is_not_retried(self_signed):
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with InferenceServer(VecEco(), ssl_context=server_ctx) as srv:
        with V2Client(srv.url, "vec", retry=RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.001)) as c:
            with pytest.raises(RemoteUnavailable) as err:
                c.infer(["hi"], timeout_s=2)
    message = str(err.value)
    assert "certificate verify failed" in message.lower() or "CERTIFICATE_VERIFY_FAILED" in message
    assert "tries" not in message  # one try: the same certificate would fail again

"""Tests of the v2 REST server: a real InferenceServer on loopback (port 0) with a fake ecology."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import pytest

import edge_eco
from edge_eco.errors import InferenceError, RequestError
from edge_eco.serve import InferenceServer, serve_forever
from edge_eco.v2_request import parse_infer_request


@dataclass(frozen=True)
class FakeAnswer:
    label: str
    confidence: float
    path: str


class FakeEco:
    """A two-label ecology: 'balance' when the text mentions money, else 'greeting'."""

    name = "intents"
    version = "3"
    labels = ("balance", "greeting")

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None, bool]] = []

    def answer(self, text: str, *, deadline_ms: float | None = None, local_only: bool = False) -> FakeAnswer:
        self.calls.append((text, deadline_ms, local_only))
        if not text:
            raise RequestError("text is empty")
        if text == "boom":
            raise InferenceError("model exploded")
        if "money" in text:
            return FakeAnswer("balance", 0.875, "direct")
        return FakeAnswer("greeting", 0.25, "direct")


@pytest.fixture
def eco() -> FakeEco:
    return FakeEco()


@pytest.fixture
def server(eco):
    with InferenceServer(eco, max_body_bytes=4096, max_batch=4) as srv:
        yield srv


@pytest.fixture
def conn(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    yield c
    c.close()


def call(conn, method, path, body=None, headers=None):
    """One request; returns (status, decoded JSON, response headers)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, json.loads(raw), resp


def infer_body(data, shape=None, **extra):
    flat = data if not (data and isinstance(data[0], list)) else [x for row in data for x in row]
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape or [len(flat)], "data": data}], **extra}


INFER = "/v2/models/intents/infer"


def test_health_and_server_metadata(server, conn):
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert call(conn, "GET", "/v2/health/live")[:2] == (200, {"live": True})
    assert call(conn, "GET", "/v2/health/ready")[:2] == (200, {"ready": True})
    assert call(conn, "GET", "/v2")[:2] == (200, {"name": "edge_eco", "version": edge_eco.__version__,
                                                  "extensions": []})


@pytest.mark.parametrize("path", ["/v2/models/intents", "/v2/models/intents/versions/3"])
def test_model_metadata(conn, path):
    status, doc, resp = call(conn, "GET", path)
    assert status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert doc["name"] == "intents" and doc["versions"] == ["3"] and doc["platform"] == "edge_eco"
    assert doc["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert doc["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                              {"name": "confidence", "datatype": "FP32", "shape": [-1]}]


def test_model_ready_and_unknown_model(conn):
    assert call(conn, "GET", "/v2/models/intents/ready")[:2] == (200, {"name": "intents", "ready": True})
    assert call(conn, "GET", "/v2/models/intents/versions/3/ready")[:2] == (200, {"name": "intents", "ready": True})
    for path in ("/v2/models/other/ready", "/v2/models/intents/versions/9/ready", "/v2/models/other"):
        status, doc, _ = call(conn, "GET", path)
        assert status == 404 and "unknown model" in doc["error"]


def test_infer_single(conn, eco):
    status, doc, _ = call(conn, "POST", INFER, infer_body(["show me the money"]))
    assert status == 200
    assert doc == {"model_name": "intents", "model_version": "3", "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["balance"]},
        {"name": "confidence", "datatype": "FP32", "shape": [1], "data": [0.875]}]}
    assert eco.calls == [("show me the money", None, True)]  # served ecologies never forward


def test_infer_batch_nested_id_and_deadline(conn, eco):
    body = infer_body([["hi", "money please", "hello"]], shape=[3], id="req-7", parameters={"deadline_ms": 50})
    status, doc, _ = call(conn, "POST", "/v2/models/intents/versions/3/infer", body)
    assert status == 200 and doc["id"] == "req-7"
    assert doc["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [3],
                                 "data": ["greeting", "balance", "greeting"]}
    assert doc["outputs"][1]["data"] == [0.25, 0.875, 0.25]
    assert [(t, lo) for t, _, lo in eco.calls] == [("hi", True), ("money please", True), ("hello", True)]
    assert all(49 < d <= 50.0 for _, d, _ in eco.calls)  # the deadline less the time spent in the queue


def test_infer_outputs_selection(conn):
    status, doc, _ = call(conn, "POST", INFER, infer_body(["money"], outputs=[{"name": "confidence"}]))
    assert status == 200
    assert doc["outputs"] == [{"name": "confidence", "datatype": "FP32", "shape": [1], "data": [0.875]}]
    status, doc, _ = call(conn, "POST", INFER, infer_body(["money"], outputs=[{"name": "probs"}]))
    assert status == 400 and "probs" in doc["error"]


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    ({"inputs": []}, "'inputs'"),
    ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "named 'text'"),
    ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["a"]}]}, "datatype must be 'BYTES'"),
    (infer_body(["a", "b"], shape=[3]), "holds 3 elements, data has 2"),
    (infer_body(["a"], shape=["1"]), "shape must be"),
    (infer_body(["a"] * 5), "batch of 5 is over the limit of 4"),
    (infer_body(["a", 3]), "must be a string"),
    (infer_body(["a"], id=5), "'id' must be a string"),
    (infer_body(["a"], parameters={"deadline_ms": -1}), "deadline_ms"),
    # an integer past float range: OverflowError in the handler, the connection dropped with no reply (trial)
    (infer_body(["a"], parameters={"deadline_ms": 10 ** 400}), "deadline_ms"),
    (infer_body([""]), "element 0: text is empty"),
    (infer_body(["a"], parameters=[]), "'parameters' must be an object, got list"),  # was accepted (tester)
    (infer_body(["a"], parameters=""), "'parameters' must be an object, got str"),
])
def test_infer_bad_requests_are_400(conn, eco, body, needle):
    status, doc, resp = call(conn, "POST", INFER, body)
    assert status == 400
    assert needle in doc["error"]
    assert resp.getheader("Connection") != "close"  # body was consumed; keep-alive survives a 400
    assert call(conn, "GET", "/v2/health/live")[0] == 200


def test_ecology_failure_is_500(conn):
    status, doc, _ = call(conn, "POST", INFER, infer_body(["boom"]))
    assert status == 500 and doc["error"] == "InferenceError: model exploded"


def test_body_over_limit_is_413_and_closes(conn):
    status, doc, resp = call(conn, "POST", INFER, b"x" * 5000)
    assert status == 413 and "5000 bytes is over the limit of 4096" in doc["error"]
    assert resp.getheader("Connection") == "close"


def test_missing_content_length_is_411(conn):
    conn.putrequest("POST", INFER)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]


def test_unknown_path_and_wrong_method(conn):
    status, doc, _ = call(conn, "GET", "/v1/models")
    assert status == 404 and "/v1/models" in doc["error"]
    assert call(conn, "GET", "/v2/models/intents/explain")[0] == 404
    status, doc, resp = call(conn, "GET", INFER)
    assert status == 405 and resp.getheader("Allow") == "POST"
    status, doc, resp = call(conn, "POST", "/v2/health/live", {"x": 1})
    assert status == 405 and resp.getheader("Allow") == "GET"
    assert resp.getheader("Connection") == "close"  # the unread body must not be parsed as a request


def test_bearer_token(eco):
    with InferenceServer(eco, token="s3cret") as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        try:
            # Health probes stay open (orchestrators probe without credentials); the rest needs the token.
            assert call(c, "GET", "/v2/health/ready")[0] == 200
            assert call(c, "GET", "/v2/health/live")[0] == 200
            status, doc, resp = call(c, "GET", "/v2/models/intents")
            assert status == 401 and "bearer token" in doc["error"]
            assert resp.getheader("WWW-Authenticate") == "Bearer"
            assert call(c, "POST", INFER, infer_body(["a"]), {"Authorization": "Bearer nope"})[0] == 401
            status, doc, _ = call(c, "POST", INFER, infer_body(["money"]), {"Authorization": "Bearer s3cret"})
            assert status == 200 and doc["outputs"][0]["data"] == ["balance"]
        finally:
            c.close()
    assert [text for text, _, _ in eco.calls] == ["money"]  # unauthorised requests never reached it


def test_keep_alive_reuses_one_connection(conn):
    assert call(conn, "GET", "/v2/health/live")[0] == 200
    sock = conn.sock
    assert sock is not None
    status, doc, resp = call(conn, "POST", INFER, infer_body(["hi"]))
    assert status == 200 and doc["outputs"][0]["data"] == ["greeting"]
    assert conn.sock is sock and resp.version == 11


def test_client_vanishing_mid_request_is_quiet_and_harmless(server, conn, capsys):
    for request in (b"POST /v2/models/intents/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in",
                    b"GET /v2/health/li"):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        s.sendall(request)
        s.close()
    time.sleep(0.05)
    assert call(conn, "POST", INFER, infer_body(["money"]))[1]["outputs"][0]["data"] == ["balance"]
    assert capsys.readouterr().err == ""


def test_shutdown_closes_idle_keep_alive_and_listener(eco):
    srv = InferenceServer(eco).start()
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    try:
        c.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b'{"live":true}'):
            reply += c.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200 OK")
        t0 = time.monotonic()
        srv.shutdown()
        assert c.recv(4096) == b""  # the idle connection was ended, not left to time out
        assert time.monotonic() - t0 < 0.5
    finally:
        c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_serve_forever_returns_on_sigint(eco):
    seen: dict = {}

    def on_ready(srv: InferenceServer) -> None:
        def probe() -> None:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
            seen["status"] = call(c, "GET", "/v2/health/live")[0]
            c.close()
            os.kill(os.getpid(), signal.SIGINT)
        seen["port"] = srv.port
        threading.Thread(target=probe, daemon=True).start()

    before = signal.getsignal(signal.SIGINT)
    t0 = time.monotonic()
    serve_forever(eco, "127.0.0.1", 0, on_ready=on_ready)
    assert time.monotonic() - t0 < 1.0
    assert seen["status"] == 200
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", seen["port"]), timeout=1).close()


def test_shutdown_finishes_requests_in_flight():
    class SlowEco(FakeEco):
        def answer(self, text, *, deadline_ms=None, local_only=False):
            time.sleep(0.4)
            return super().answer(text, deadline_ms=deadline_ms, local_only=local_only)

    srv = InferenceServer(SlowEco()).start()
    results = []

    def client():
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        try:
            results.append(call(c, "POST", INFER, infer_body(["money"]))[:2])
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.15)  # all four are inside answer() now
    srv.shutdown()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(status == 200 and doc["outputs"][0]["data"] == ["balance"] for status, doc in results)


def test_features_past_float_range_are_refused():
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2],
                                   "data": [0.5, 10 ** 400]}]}).encode()
    with pytest.raises(RequestError, match="every element must be a finite number"):
        parse_infer_request(body, 4, feature_dim=2)


def test_deeply_nested_json_is_a_400_not_a_500(conn):
    body = b"[" * 2000 + b"]" * 2000  # under the 4096-byte body limit, past Python's recursion limit
    status, doc, _ = call(conn, "POST", INFER, body)
    assert status == 400 and "nested too deeply" in doc["error"]


def test_long_values_are_cut_in_error_messages(conn):
    # a tester's request printed its 400-digit deadline back in full
    status, doc, _ = call(conn, "POST", INFER, infer_body(["a"], parameters={"deadline_ms": 10 ** 400}))
    assert status == 400 and doc["error"].endswith("got 1" + "0" * 59 + "... (401 characters)")
    status, doc, _ = call(conn, "POST", INFER, infer_body(["a"], shape=[10 ** 300, 10 ** 90]))
    assert status == 400 and len(doc["error"]) < 250 and "(396 characters) holds 1" in doc["error"]
    assert "(391 characters) elements" in doc["error"]  # the product of the dims, a 391-digit integer


def test_fp32_confidence_is_written_with_float32_digits(eco):
    # was 0.9459123456789012 on the wire for an FP32 output: now the shortest digits of its float32
    eco.answer = lambda text, **_: FakeAnswer("balance", 0.9459123456789012, "direct")
    with InferenceServer(eco) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        c.request("POST", INFER, body=json.dumps(infer_body(["money"])).encode())
        raw = c.getresponse().read().decode()
        c.close()
    assert '"datatype":"FP32","shape":[1],"data":[0.94591236]}' in raw.replace(" ", "")


def test_a_batch_of_one_sent_as_shape_1_1_is_answered_with_the_declared_output_shape(conn):
    # The v2 metadata declares both outputs with shape [-1] (one value per text, however the
    # input was nested), and a response output's shape is that output tensor's own shape, so
    # a [1, 1] text input gets [1] outputs, as it does with shape [1].
    status, doc, _ = call(conn, "POST", INFER, infer_body([["money"]], shape=[1, 1]))
    assert status == 200 and [o["shape"] for o in doc["outputs"]] == [[1], [1]]
    meta = call(conn, "GET", "/v2/models/intents")[1]
    assert [o["shape"] for o in meta["outputs"]] == [[-1], [-1]]


@dataclass(frozen=True)
class FailedAroundAnswer:
    label: str
    confidence: float
    path: str
    provenance: dict


def test_models_that_failed_are_reported_once_a_minute_with_a_count(monkeypatch):
    """A trial served a bundle whose model was stopped at max_run_ms on every request routed to
    it: the replies were 200 (the others answered) and nothing anywhere said a model failed."""
    from edge_eco import serve as serve_mod

    class AroundEco(FakeEco):
        def answer(self, text, *, deadline_ms=None, local_only=False):
            errors = {"banking": "ModelLoadError: ran past 1000 ms"} if "money" in text else {}
            return FailedAroundAnswer("balance", 0.5, "direct", {"model_errors": errors})

    reports = []
    clock = [1000.0]
    monkeypatch.setattr(serve_mod, "_report_clock", lambda: clock[0])
    with InferenceServer(AroundEco(), on_model_error=lambda *r: reports.append(r)) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["money", "hi", "money"]}]}
        status, reply, _ = call(c, "POST", "/v2/models/intents/infer", body)
        assert status == 200 and reply["outputs"][0]["data"] == ["balance"] * 3
        assert reports == [("banking", "ModelLoadError: ran past 1000 ms", 1)]
        clock[0] += 30
        call(c, "POST", "/v2/models/intents/infer", body)       # within the minute: counted, not said
        assert len(reports) == 1
        clock[0] += 31
        call(c, "POST", "/v2/models/intents/infer", body)
        assert reports[1] == ("banking", "ModelLoadError: ran past 1000 ms", 4)  # 1 + 2 + the first of this batch
        c.close()

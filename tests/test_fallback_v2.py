"""Tests of the v2 REST client against a real InferenceServer and against scripted raw-socket servers."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pytest

from edge_eco.errors import ManifestError, RemoteProtocolError, RemoteUnavailable, RequestError
from edge_eco.fallback import RemoteAnswer, V2Client
from edge_eco.fallback.retry import RetryPolicy
from edge_eco.serve import InferenceServer


@dataclass(frozen=True)
class FakeAnswer:
    label: str
    confidence: float
    path: str


class FakeEco:
    """Labels a text 'long' when it has over 5 characters, else 'short'; confidence = len/10 capped at 1."""

    name, version, labels = "sizer", "2", ("long", "short")

    def answer(self, text: str, *, deadline_ms: float | None = None, local_only: bool = False) -> FakeAnswer:
        if not text:
            raise RequestError("text is empty")
        return FakeAnswer("long" if len(text) > 5 else "short", min(len(text) / 10, 1.0), "direct")


@pytest.fixture
def server():
    with InferenceServer(FakeEco(), token="tok") as srv:
        yield srv


@pytest.fixture
def client(server):
    with V2Client(server.url, "sizer", token="tok", default_timeout_s=1.0) as c:
        yield c


@pytest.fixture
def make():
    """Build V2Clients that are closed at teardown (no socket is left to the garbage collector)."""
    made: list[V2Client] = []

    def build(*args, **kw) -> V2Client:
        made.append(V2Client(*args, **kw))
        return made[-1]

    yield build
    for c in made:
        c.close()


# -- against the real server ---------------------------------------------------------------------


def test_infer_single_and_batch(client):
    [one] = client.infer(["hi"])
    assert (one.label, one.confidence, one.model, one.model_version) == ("short", pytest.approx(0.2), "sizer", "2")
    assert 0 < one.latency_ms < 1000
    batch = client.infer(["abc", "abcdefgh", "abcdefghijklmn"])
    assert [(a.label, a.confidence) for a in batch] == [("short", pytest.approx(0.3)), ("long", pytest.approx(0.8)),
                                                        ("long", 1.0)]
    assert all(isinstance(a, RemoteAnswer) for a in batch)


def test_keep_alive_connection_is_reused(client):
    client.infer(["a"])
    sock = client.transport.connection().sock
    client.infer(["b"])
    assert sock is not None and client.transport.connection().sock is sock


def test_ready(server, client, make):
    assert client.ready() is True
    assert make(server.url, "other", token="tok").ready() is False
    assert make(server.url, "sizer").ready() is False  # no token -> 401


def test_server_errors_become_protocol_errors(server, client, make):
    with pytest.raises(RemoteProtocolError, match=r"HTTP 400 .*text is empty"):
        client.infer([""])
    with pytest.raises(RemoteProtocolError, match=r"HTTP 401 .*bearer token"):
        make(server.url, "sizer", token="wrong").infer(["a"])
    with pytest.raises(RemoteProtocolError, match=r"HTTP 404 .*unknown model"):
        make(server.url, "nope", token="tok").infer(["a"])
    assert client.infer(["still fine"])[0].label == "long"


def test_threads_get_their_own_connections(client):
    results: dict[int, list[str]] = {}
    conns: dict[int, object] = {}
    barrier = threading.Barrier(8, timeout=2)

    def work(i: int) -> None:
        results[i] = [a.label for a in client.infer(["x" * i] * 3)]
        conns[i] = client.transport.connection()
        barrier.wait()  # keep every thread (and its connection) alive until all have answered

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: ["long" if i > 5 else "short"] * 3 for i in range(1, 9)}
    assert len({id(c) for c in conns.values()}) == 8
    client.close()
    assert all(c.sock is None for c in conns.values())  # close() reaches every thread's connection


def test_bad_arguments(make):
    with pytest.raises(ManifestError):
        make("ftp://host", "m")
    with pytest.raises(ManifestError):
        make("http://127.0.0.1:1", "")
    c = make("http://127.0.0.1:1", "m")
    for texts in ([], "a string", ["ok", 3]):
        with pytest.raises(RequestError):
            c.infer(texts)


def test_dead_port_is_unavailable_quickly(make):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = make(f"http://127.0.0.1:{port}", "m", retry=RetryPolicy(attempts=1))
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="cannot reach") as info:
        c.infer(["a"])
    assert time.monotonic() - t0 < 0.5
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert c.ready() is False


# -- against scripted raw-socket servers ---------------------------------------------------------


def read_request(conn: socket.socket) -> bytes:
    """Read one HTTP request (headers + Content-Length body); returns the body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return body


def http_reply(body: bytes | str, status: str = "200 OK", extra: str = "") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


class RawServer:
    """Accepts connections on loopback and runs ``script(conn, request_body)`` for each request."""

    def __init__(self, script: Callable[[socket.socket, bytes], None], *, per_connection: int = 1):
        self.script, self.per_connection, self.connections = script, per_connection, 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.02)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    for _ in range(self.per_connection):
                        body = read_request(conn)
                        if not body:
                            break
                        self.script(conn, body)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def raw():
    servers: list[RawServer] = []

    def start(script, **kw) -> RawServer:
        servers.append(RawServer(script, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def reply_with(make_doc: Callable[[dict], object]) -> Callable[[socket.socket, bytes], None]:
    """A script answering 200 with the JSON of make_doc(request)."""
    return lambda conn, body: conn.sendall(http_reply(json.dumps(make_doc(json.loads(body)))))


def good_doc(req: dict, labels=None, confs=None, shape=None) -> dict:
    n = len(req["inputs"][0]["data"])
    return {"model_name": "m", "model_version": "7", "id": req["id"], "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": shape or [n], "data": labels or ["x"] * n},
        {"name": "confidence", "datatype": "FP64", "shape": shape or [n], "data": confs or [0.5] * n}]}


def test_raw_good_reply_fp64_and_nested_shape(raw, make):
    srv = raw(reply_with(lambda r: good_doc(r, labels=[["a", "b"]], shape=[2, 1])))
    answers = make(srv.url, "m").infer(["p", "q"])
    assert [(a.label, a.confidence, a.model, a.model_version) for a in answers] == [("a", 0.5, "m", "7"),
                                                                                   ("b", 0.5, "m", "7")]


def test_raw_500_is_protocol_error_with_message(raw, make):
    srv = raw(lambda conn, body: conn.sendall(http_reply('{"error": "GPU on fire"}', "500 Internal Server Error")))
    with pytest.raises(RemoteProtocolError, match=r"HTTP 500 .*GPU on fire"):
        make(srv.url, "m").infer(["a"])


@pytest.mark.parametrize("make_doc, needle", [
    (lambda r: {**good_doc(r), "outputs": good_doc(r)["outputs"][:1]}, "no output 'confidence'"),
    (lambda r: {"model_name": "m"}, "'outputs' must be a list"),
    (lambda r: good_doc(r, shape=[3]), r"shape \[3\], expected \[2\]"),
    (lambda r: good_doc(r, labels=["a", "b", "c"]), "output 'label': expected 2 values, got 3"),
    (lambda r: good_doc(r, labels=["a", 1]), "must be a string"),
    (lambda r: good_doc(r, confs=[0.5, 1.5]), r"1.5 is not a number in \[0, 1\]"),
    (lambda r: good_doc(r, confs=[0.5, float("nan")]), r"nan is not a number"),
    (lambda r: {**good_doc(r), "id": "other"}, "does not match request id"),
    (lambda r: [1, 2], "must be a JSON object"),
    # from a trial against a lying server: these raised OverflowError / TypeError out of eco.answer()
    # ... and the number is cut in the message (it lands in provenance["remote"]["error"])
    (lambda r: good_doc(r, confs=[0.5, 10 ** 400]), r"'confidence': 10{59}\.\.\. \(401 characters\) is not a number in \[0, 1\]$"),
    (lambda r: {**good_doc(r), "outputs": [{"name": ["label"]}] + good_doc(r)["outputs"][1:]}, "no output 'label'"),
])
def test_raw_malformed_replies(raw, make_doc, needle, make):
    srv = raw(reply_with(make_doc))
    with pytest.raises(RemoteProtocolError, match=needle):
        make(srv.url, "m").infer(["a", "b"])


def test_raw_invalid_json(raw, make):
    srv = raw(lambda conn, body: conn.sendall(http_reply("{'outputs': oops")))
    with pytest.raises(RemoteProtocolError, match="not valid JSON") as info:
        make(srv.url, "m").infer(["a"])
    assert isinstance(info.value.__cause__, ValueError)


def test_raw_json_nested_too_deeply(raw, make):
    # json.loads raises RecursionError (not a ValueError) here; it escaped eco.answer() before the fix
    deep = "[" * 100_000 + "]" * 100_000
    srv = raw(lambda conn, body: conn.sendall(http_reply(deep)))
    with pytest.raises(RemoteProtocolError, match="not valid JSON"):
        make(srv.url, "m").infer(["a"])
    srv = raw(lambda conn, body: conn.sendall(http_reply(deep, "500 Internal Server Error")))
    with pytest.raises(RemoteProtocolError, match=r"HTTP 500 .*\[\[\["):
        make(srv.url, "m").infer(["a"])


def test_raw_garbage_status_line(raw, make):
    srv = raw(lambda conn, body: conn.sendall(b"SPDY/9 what\r\n\r\n"))
    with pytest.raises(RemoteProtocolError, match="malformed HTTP reply"):
        make(srv.url, "m").infer(["a"])


def test_raw_slow_server_times_out(raw, make):
    srv = raw(lambda conn, body: srv.stop.wait(2))
    c = make(srv.url, "m", default_timeout_s=5)
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="within 0.2 s"):
        c.infer(["a"], timeout_s=0.2)
    assert 0.15 < time.monotonic() - t0 < 0.6


def test_raw_reset_mid_body(raw, make):
    def script(conn: socket.socket, body: bytes) -> None:
        conn.sendall(http_reply("x" * 100)[:-90])  # headers promise 100 bytes; send 10
        time.sleep(0.02)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST
    srv = raw(script)
    with pytest.raises(RemoteUnavailable, match="dropped mid-reply"):
        make(srv.url, "m").infer(["a"])


def test_raw_closed_without_reply(raw, make):
    srv = raw(lambda conn, body: None)
    with pytest.raises(RemoteUnavailable, match="dropped before a reply"):
        make(srv.url, "m").infer(["a"])


def test_stale_keep_alive_reconnects_once(raw, make):
    # The server answers one request per connection, then closes without "Connection: close".
    srv = raw(reply_with(good_doc), per_connection=1)
    c = make(srv.url, "m")
    assert c.infer(["a"])[0].label == "x"
    time.sleep(0.05)  # let the server's close arrive
    assert c.infer(["b", "c"])[1].label == "x"
    assert srv.connections == 2
    c.close()


def test_a_server_that_drips_bytes_cannot_hold_the_call_past_its_timeout():
    """Per-recv socket timeouts do not bound a server that sends one byte every 50 ms."""
    import socket as _socket
    import threading as _threading

    srv = _socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = _threading.Event()

    def drip():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        try:
            while not stop.wait(0.05):
                conn.sendall(b" ")
        except OSError:
            pass
        conn.close()

    t = _threading.Thread(target=drip, daemon=True)
    t.start()
    client = V2Client(f"http://127.0.0.1:{srv.getsockname()[1]}", "m")
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="no complete reply .* within 0.3 s"):
        client.infer(["hello"], timeout_s=0.3)
    assert time.monotonic() - t0 < 1.0
    stop.set()
    client.close()
    srv.close()

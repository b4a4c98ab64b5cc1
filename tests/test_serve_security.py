"""Server security matrix: malformed, oversized and unauthenticated requests against a real
`InferenceServer` serving the committed CLINC150 ecology with a bearer token, over raw sockets.
Every row gets the stated status with a JSON error, and the server keeps answering valid requests.
Reads serve.py's behaviour only."""

from __future__ import annotations

import json
import socket

import pytest

import edge_eco
from edge_eco.serve import InferenceServer

from conftest import MODELS

TOKEN = "s3cret-token-0123456789"
INFER = "/v2/models/clinc150/infer"


@pytest.fixture(scope="module")
def server():
    with edge_eco.open(MODELS / "clinc150") as eco, InferenceServer(eco, token=TOKEN) as srv:
        yield srv


def _raw(server, data: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes on a fresh connection, half-close, read the reply: (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _request(method: str, path: str, body: bytes | None = None, *, auth: bytes | None = b"Bearer " + TOKEN.encode(),
             headers: tuple[bytes, ...] = (), length: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x", b"Connection: close"]
    if auth is not None:
        lines.append(b"Authorization: " + auth)
    if body is not None or length is not None:
        lines.append(b"Content-Length: " + (length if length is not None else str(len(body)).encode()))
    lines += list(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _infer_body(data, *, shape=None, datatype="BYTES", **extra) -> bytes:
    inp = {"name": "text", "datatype": datatype, "shape": shape if shape is not None else [len(data)], "data": data}
    return json.dumps({"inputs": [inp], **extra}).encode()


GOOD = _infer_body(["what is my checking account balance"])

MATRIX = [
    # (case, request bytes, expected status)
    ("no Authorization", _request("POST", INFER, GOOD, auth=None), 401),
    ("Basic scheme", _request("POST", INFER, GOOD, auth=b"Basic " + TOKEN.encode()), 401),
    ("wrong token", _request("POST", INFER, GOOD, auth=b"Bearer nope"), 401),
    ("token prefix", _request("POST", INFER, GOOD, auth=b"Bearer " + TOKEN[:-1].encode()), 401),
    ("token plus a byte", _request("POST", INFER, GOOD, auth=b"Bearer " + TOKEN.encode() + b"x"), 401),
    ("empty bearer", _request("POST", INFER, GOOD, auth=b"Bearer "), 401),
    ("non-ASCII token", _request("POST", INFER, GOOD, auth="Bearer s3cr\u00e9t".encode("latin-1")), 401),
    ("metadata needs the token", _request("GET", "/v2/models/clinc150", auth=None), 401),
    ("scheme is case-insensitive", _request("POST", INFER, GOOD, auth=b"bearer " + TOKEN.encode()), 200),
    ("health needs no token", _request("GET", "/v2/health/live", auth=None), 200),
    ("invalid JSON", _request("POST", INFER, b"{not json"), 400),
    ("JSON array", _request("POST", INFER, b"[1, 2]"), 400),
    ("nested 100,000 deep", _request("POST", INFER, b"[" * 100_000 + b"]" * 100_000), 400),
    ("no inputs", _request("POST", INFER, b"{}"), 400),
    ("FP32 datatype", _request("POST", INFER, _infer_body(["hi"], datatype="FP32")), 400),
    ("shape does not match data", _request("POST", INFER, _infer_body(["a", "b"], shape=[3])), 400),
    ("negative shape", _request("POST", INFER, _infer_body(["a"], shape=[-1])), 400),
    ("numbers as texts", _request("POST", INFER, _infer_body([1, 2])), 400),
    ("empty batch", _request("POST", INFER, _infer_body([])), 400),
    ("batch of 65", _request("POST", INFER, _infer_body(["hello"] * 65)), 400),
    ("empty text", _request("POST", INFER, _infer_body([""])), 400),
    ("text over max_text_bytes", _request("POST", INFER, _infer_body(["a" * 20_000])), 400),
    ("lone surrogate", _request("POST", INFER, b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],'
                                               b'"data":["\\ud800 balance"]}]}'), 400),
    ("NaN deadline", _request("POST", INFER, _infer_body(["hi"], parameters={"deadline_ms": float("nan")})), 400),
    ("string deadline", _request("POST", INFER, _infer_body(["hi"], parameters={"deadline_ms": "5"})), 400),
    ("id not a string", _request("POST", INFER, _infer_body(["hi"], id=7)), 400),
    ("unknown output", _request("POST", INFER, _infer_body(["hi"], outputs=[{"name": "logits"}])), 400),
    ("2 MiB Content-Length", _request("POST", INFER, length=b"2097152"), 413),
    ("no Content-Length", _request("POST", INFER), 411),
    ("negative Content-Length", _request("POST", INFER, length=b"-1"), 400),
    ("non-numeric Content-Length", _request("POST", INFER, length=b"12abc"), 400),
    ("body shorter than declared", _request("POST", INFER, b'{"inputs":', length=b"100"), 400),
    ("chunked body", _request("POST", INFER, None, headers=(b"Transfer-Encoding: chunked",)) + b"0\r\n\r\n", 411),
    ("GET on infer", _request("GET", INFER), 405),
    ("POST on metadata", _request("POST", "/v2/models/clinc150", GOOD), 405),
    ("unknown model", _request("POST", "/v2/models/other/infer", GOOD), 404),
    ("path traversal", _request("GET", "/v2/models/../../../etc/passwd"), 404),
    ("escaped traversal", _request("GET", "/v2/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), 404),
    ("request line of 70 kB", _request("GET", "/v2/" + "a" * 70_000), 414),
    ("120 headers", _request("GET", "/v2/health/live", headers=tuple(b"X-H%d: 1" % i for i in range(120))), 431),
]


@pytest.mark.parametrize("case, data, status", MATRIX, ids=[m[0] for m in MATRIX])
def test_security_matrix(server, case, data, status):
    got, body = _raw(server, data)
    assert got == status, (case, body[:200])
    if status >= 400 and status not in (414, 431):  # those two are written by http.server itself
        assert "error" in json.loads(body)
    # The server keeps serving valid requests after every row.
    ok, reply = _raw(server, _request("POST", INFER, GOOD))
    assert ok == 200 and json.loads(reply)["outputs"][0]["data"] == ["balance"]


def test_many_bad_requests_on_one_keep_alive_connection(server):
    """Requests whose bodies were read (400s) keep the connection usable; the good one after
    them on the same connection is answered."""
    bad = _request("POST", INFER, b"[1]").replace(b"Connection: close", b"Connection: keep-alive")
    data = bad * 20 + _request("POST", INFER, GOOD)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.count(b"HTTP/1.1 400") == 20 and reply.count(b"HTTP/1.1 200") == 1


# -- per-client limits: rate limit, connections per client, whole-request deadline ----------------
# Each row runs as its own client address on loopback (127.0.0.0/8 all reaches the server), so the
# rows do not share buckets or connection counts.

LIMITED = {"rate_limit_per_s": 5.0, "burst": 2, "max_client_connections": 3, "request_timeout_s": 1.0}
MODEL = "/v2/models/clinc150"


@pytest.fixture(scope="module")
def limited():
    with edge_eco.open(MODELS / "clinc150") as eco, InferenceServer(eco, token=TOKEN, **LIMITED) as srv:
        yield srv


def _conn(server, src: str, timeout_s: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s, source_address=(src, 0))


def _reply(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _one(server, src: str, data: bytes) -> bytes:
    with _conn(server, src) as s:
        s.sendall(data)
        return _reply(s)


def _burst_then(last: bytes, *, first: bytes = _request("GET", MODEL)):
    def run(server, src):
        for _ in range(LIMITED["burst"]):
            assert _one(server, src, first).split(b" ", 2)[1] in (b"200", b"401")
        return _one(server, src, last)
    return run


def _other_client_after_burst(server, src):
    _burst_then(_request("GET", MODEL))(server, src)
    return _one(server, src[:-1] + str(int(src[-1]) + 1 if src[-1] != "9" else 0), _request("GET", MODEL))


def _extra_connection(server, src):
    held = [_conn(server, src) for _ in range(LIMITED["max_client_connections"])]
    try:
        for s in held:
            s.sendall(b"GET /v2 HTTP/1.1\r\n")  # partial: each holds its handler
        return _one(server, src, _request("GET", "/v2/health/live"))
    finally:
        for s in held:
            s.close()


def _trickle(head: bytes, tail: bytes, gap_s: float = 0.15):
    """Send ``head``, then ``tail`` one byte every ``gap_s`` (each gap well under the idle timeout)
    until the server answers and closes."""
    def run(server, src):
        with _conn(server, src) as s:
            s.sendall(head)
            for b in tail:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    break
                s.settimeout(gap_s)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    pass
            s.settimeout(10)
            return _reply(s)
    return run


LIMIT_MATRIX = [
    # (case, scenario(server, client address) -> reply bytes, expected status)
    ("rate limit: request past the burst", _burst_then(_request("GET", MODEL)), 429),
    ("rate limit: wrong tokens spend the bucket too", _burst_then(_request("GET", MODEL), first=_request(
        "GET", MODEL, auth=b"Bearer nope")), 429),
    ("rate limit: health probes exempt", _burst_then(_request("GET", "/v2/health/ready")), 200),
    ("rate limit: other clients unaffected", _other_client_after_burst, 200),
    ("connection past max_client_connections", _extra_connection, 429),
    ("request line trickled past request_timeout_s", _trickle(b"G", b"ET /v2/health/live HTTP/1.1\r\n" * 4), 408),
    ("headers trickled past request_timeout_s", _trickle(b"GET /v2 HTTP/1.1\r\n", b"X-Slow: " + b"a" * 200), 408),
    ("body trickled past request_timeout_s", _trickle(_request("POST", INFER, length=str(len(GOOD)).encode()),
                                                      GOOD), 408),
]


@pytest.mark.parametrize("row", range(len(LIMIT_MATRIX)), ids=[m[0] for m in LIMIT_MATRIX])
def test_limits_matrix(limited, row):
    case, scenario, status = LIMIT_MATRIX[row]
    src = f"127.0.0.{20 + 2 * row}"
    reply = scenario(limited, src)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert int(head.split(b" ", 2)[1]) == status, (case, reply[:300])
    if status >= 400:
        assert "error" in json.loads(body), case
    if status == 429:
        assert int(dict(h.split(b": ", 1) for h in head.split(b"\r\n")[1:])[b"Retry-After"]) >= 1, case
    # the server keeps serving a fresh client after every row
    ok = _one(limited, f"127.0.0.{21 + 2 * row}", _request("POST", INFER, GOOD))
    assert ok.startswith(b"HTTP/1.1 200") and b'"balance"' in ok, case


def test_bearer_token_is_compared_with_hmac_compare_digest(server, monkeypatch):
    """The token check goes through hmac.compare_digest (constant time), for right and wrong
    tokens alike, with the whole given token and the whole expected one."""
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert _raw(server, _request("POST", INFER, GOOD))[0] == 200
    assert _raw(server, _request("POST", INFER, GOOD, auth=b"Bearer " + TOKEN[:5].encode()))[0] == 401
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (TOKEN[:5].encode(), TOKEN.encode())]

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

"""HTTP framing and error replies of ``edge-eco serve``, driven with raw sockets on loopback: a body
that cannot be framed closes the connection (no request smuggling), every error is the v2 JSON error
body, ``Expect: 100-continue`` is answered only after the checks, HEAD and OPTIONS, IPv6."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from edge_eco.serve import InferenceServer
from tests.test_serve import FakeEco

INFER = "/v2/models/intents/infer"
BODY = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["money"]}]}).encode()


@pytest.fixture
def server():
    with InferenceServer(FakeEco(), max_body_bytes=4096, max_batch=4, token=None) as srv:
        yield srv


def exchange(port: int, raw: bytes, *, wait_s: float = 1.0, family=socket.AF_INET, host="127.0.0.1") -> tuple[bytes, bool]:
    """Send raw bytes, read until the server closes or ``wait_s`` passes; (everything read, closed?)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(wait_s)
    s.connect((host, port))
    got, closed = b"", False
    try:
        s.sendall(raw)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            got += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    finally:
        s.close()
    return got, closed


def replies(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 replies (Content-Length framed) into (status, headers, body)."""
    out = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", "0")) if status != 100 else 0
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out


NEXT = b"GET /v2/models/intents HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("framing", [
    b"",                                                   # no Content-Length on a POST
    b"Content-Length: 5\r\nContent-Length: 50\r\n",        # two that disagree
    b"Content-Length: 5, 50\r\n",                          # a list that disagrees
    b"Content-Length: +5\r\n",                             # not digits
    b"Content-Length: 5_0\r\n",                            # int() would accept this
    b"Transfer-Encoding: chunked\r\n",                     # chunked is not supported
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
])
def test_a_body_that_cannot_be_framed_closes_the_connection(server, framing):
    raw = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + NEXT
    got, closed = exchange(server.port, raw)
    rs = replies(got)
    assert len(rs) == 1, f"the body was read as a second request: {got!r}"
    status, headers, body = rs[0]
    assert status in (400, 411) and headers["connection"] == "close" and closed
    assert "error" in json.loads(body)


def test_conflicting_content_lengths_are_400(server):
    raw = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
           b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    (status, headers, body), = replies(exchange(server.port, raw)[0])
    assert status == 400 and "Content-Length" in json.loads(body)["error"] and headers["connection"] == "close"


def test_identical_duplicate_content_lengths_are_accepted(server):
    n = str(len(BODY)).encode()
    raw = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + n + b"\r\nContent-Length: " + n
           + b"\r\n\r\n" + BODY + NEXT)
    rs = replies(exchange(server.port, raw, wait_s=0.5)[0])
    assert [r[0] for r in rs] == [200, 200]


def test_a_get_with_a_body_does_not_smuggle_it(server):
    inner = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(inner)).encode() + b"\r\n\r\n" + inner
    rs = replies(exchange(server.port, raw, wait_s=0.5)[0])
    assert [(r[0], json.loads(r[2])) for r in rs] == [(200, {"ready": True})]


@pytest.mark.parametrize("raw, want", [
    (b"OPTIONS /v2/models/intents/infer HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"BREW /v2 HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v2 HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET /v2 HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_every_error_reply_is_a_json_error_body(server, raw, want):
    got, closed = exchange(server.port, raw)
    status, headers, body = replies(got)[0]
    assert status == want and headers["content-type"] == "application/json"
    assert isinstance(json.loads(body)["error"], str) and json.loads(body)["error"]
    if status == 405:
        assert headers["allow"] == "POST"
    else:
        assert closed and headers["connection"] == "close"


def test_head_answers_like_get_without_a_body(server):
    raw = b"HEAD /v2/models/intents HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT
    got, _ = exchange(server.port, raw, wait_s=0.5)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
    (status, _, body), = replies(rest)  # the next reply follows at once: HEAD sent no body
    assert status == 200 and json.loads(body)["name"] == "intents"


def expect_100(port: int, headers: bytes, *, send_body_after_s: float = 0.3) -> tuple[bytes, bool]:
    """Send headers with Expect: 100-continue, wait, then the body (as curl does); (reply bytes, closed?)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n" + headers + b"\r\n")
        s.settimeout(send_body_after_s)
        try:
            first = s.recv(65536)
        except socket.timeout:
            first = b""
        if first.startswith(b"HTTP/1.1 100"):
            s.sendall(BODY)
        s.settimeout(1.0)
        got, closed = first, False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                got += chunk
                final = [r for r in replies(got) if r[0] != 100]
                if final and len(final[0][2]) == int(final[0][1].get("content-length", "0")):
                    break
        except socket.timeout:
            pass
        return got, closed
    finally:
        s.close()


def test_expect_100_continue_is_sent_only_after_the_checks():
    with InferenceServer(FakeEco(), max_body_bytes=64, token="s3cret") as srv:
        n = str(len(BODY)).encode()
        got, closed = expect_100(srv.port, b"Authorization: Bearer s3cret\r\nContent-Length: 100000\r\n")
        assert got.startswith(b"HTTP/1.1 413") and b"Connection: close" in got  # no 100 Continue first
        got, closed = expect_100(srv.port, b"Content-Length: " + n + b"\r\n")
        assert got.startswith(b"HTTP/1.1 401") and b"Connection: close" in got
    with InferenceServer(FakeEco(), token="s3cret") as srv:
        got, _ = expect_100(srv.port, b"Authorization: Bearer s3cret\r\nContent-Length: " + n + b"\r\n")
        assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        (status, _, body), = [r for r in replies(got) if r[0] != 100]
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == ["balance"]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_serves_on_ipv6_loopback():
    from edge_eco.fallback import V2Client

    with InferenceServer(FakeEco(), host="::1") as srv:
        assert srv.url == f"http://[::1]:{srv.port}"
        got, _ = exchange(srv.port, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          family=socket.AF_INET6, host="::1")
        assert replies(got)[0][0] == 200
        with V2Client(srv.url, "intents") as client:
            assert client.infer(["money please"])[0].label == "balance"

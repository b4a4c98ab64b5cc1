"""Slow and greedy clients cannot starve the others: a real ``InferenceServer`` serving the committed
CLINC150 ecology on loopback, slow clients that trickle bytes forever from one address, and
well-behaved clients from other loopback addresses (the whole 127.0.0.0/8 reaches the server)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import edge_eco
from edge_eco.serve import InferenceServer

from conftest import MODELS

INFER = "/v2/models/clinc150/infer"
GOOD = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                               "data": ["what is my checking account balance"]}]}).encode()
REQ = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
       + str(len(GOOD)).encode() + b"\r\n\r\n" + GOOD)


def _conn(port: int, src: str, timeout_s: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=(src, 0))


def _status(port: int, src: str, data: bytes = REQ) -> tuple[int, bytes]:
    with _conn(port, src) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


class Slowloris:
    """One address opening ``n`` connections with a partial request each, then sending one more
    header byte on each every ``gap_s`` (the classic attack; each gap is far under the idle timeout)."""

    def __init__(self, port: int, src: str, n: int, gap_s: float = 0.2) -> None:
        self.socks: list[socket.socket] = []
        self.refused = 0
        for _ in range(n):
            s = _conn(port, src)
            s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            self.socks.append(s)
        self.replies: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, args=(gap_s,), daemon=True)
        self._thread.start()

    def _drip(self, gap_s: float) -> None:
        while not self._stop.wait(gap_s):
            for i, s in enumerate(self.socks):
                if i in self.replies:
                    continue
                s.settimeout(0.001)
                try:
                    got = s.recv(65536)
                    self.replies[i] = got or b"(closed)"
                    continue
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    self.replies[i] = b"(reset)"
                    continue
                try:
                    s.sendall(b"a")
                except OSError:
                    self.replies[i] = b"(reset)"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def test_one_slow_address_cannot_starve_other_clients():
    """The slow address gets only max_client_connections; every other client is answered 200
    quickly while it trickles, and the trickling connections get 408 once request_timeout_s passes."""
    with edge_eco.open(MODELS / "clinc150") as eco, \
            InferenceServer(eco, max_connections=32, max_client_connections=8, request_timeout_s=3.0) as srv:
        _status(srv.port, "127.0.0.60")  # warm
        slow = Slowloris(srv.port, "127.0.0.50", 32)
        try:
            t0 = time.monotonic()
            worst_ms = 0.0
            for i in range(15):
                t = time.monotonic()
                status, reply = _status(srv.port, f"127.0.0.{51 + i % 3}")
                worst_ms = max(worst_ms, (time.monotonic() - t) * 1e3)
                assert status == 200 and b'"balance"' in reply
            cut_early = [r for r in slow.replies.values() if r.startswith(b"HTTP/1.1 408")]
            assert not cut_early and time.monotonic() - t0 < 2.9  # all while the held ones were still held
            assert worst_ms < 1000, worst_ms
            deadline = time.monotonic() + 6
            while len(slow.replies) < 32 and time.monotonic() < deadline:
                time.sleep(0.1)
            statuses = sorted(r.split(b" ", 2)[1] for r in slow.replies.values() if r.startswith(b"HTTP/1.1"))
        finally:
            slow.close()
    assert statuses.count(b"429") == 24, statuses  # past max_client_connections: refused at once
    assert statuses.count(b"408") == 8, statuses  # the held ones: cut at request_timeout_s


def test_slow_client_holding_every_connection_frees_them_within_the_request_timeout():
    """The issue-9 tester's case, with the per-client cap as high as max_connections: one client holds
    every connection with trickled partial requests. Others get 503 for at most request_timeout_s."""
    with edge_eco.open(MODELS / "clinc150") as eco, \
            InferenceServer(eco, max_connections=8, max_client_connections=8, request_timeout_s=1.0) as srv:
        slow = Slowloris(srv.port, "127.0.0.70", 8)
        try:
            time.sleep(0.1)
            t0 = time.monotonic()
            first, _ = _status(srv.port, "127.0.0.71")
            while (status := _status(srv.port, "127.0.0.71")[0]) != 200 and time.monotonic() - t0 < 5:
                time.sleep(0.05)
            waited_s = time.monotonic() - t0
        finally:
            slow.close()
    assert first == 503  # without the deadline this would last as long as the bytes keep coming
    assert status == 200 and waited_s < 1.0 + 1.0, waited_s


def test_idle_keep_alive_is_not_cut_by_the_request_deadline():
    """The deadline starts at a request's first byte: a keep-alive connection idle for longer than
    request_timeout_s still works, and a rate-limited client is let in again after its wait."""
    with edge_eco.open(MODELS / "clinc150") as eco, \
            InferenceServer(eco, request_timeout_s=0.5, rate_limit_per_s=10.0, burst=2) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10, source_address=("127.0.0.80", 0))
        statuses = []
        for pause_s in (0.0, 0.8, 0.0):  # after the pause the bucket is full again (2): two go through
            time.sleep(pause_s)
            conn.request("POST", INFER, body=GOOD)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.request("POST", INFER, body=GOOD)  # the third in the burst: 429
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 429 and resp.getheader("Retry-After") == "1" and "rate limit" in body["error"]
        conn.close()
        time.sleep(0.15)  # one token at 10/s
        assert _status(srv.port, "127.0.0.80")[0] == 200
    assert statuses == [200, 200, 200]


def test_cli_serve_flags_reach_the_server():
    env = {**os.environ, "PYTHONPATH": str(MODELS.parent)}
    bad = subprocess.run([sys.executable, "-m", "edge_eco.cli", "serve", str(MODELS / "clinc150"), "--burst", "3"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--burst needs --rate-limit" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "edge_eco.cli", "serve", str(MODELS / "clinc150"), "--port", "0",
                             "--rate-limit", "0.5", "--burst", "1", "--max-client-connections", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        assert _status(port, "127.0.0.90")[0] == 200
        assert _status(port, "127.0.0.90")[0] == 429  # burst 1 at 0.5/s
        with _conn(port, "127.0.0.91") as held:
            held.sendall(b"GET /v2")
            time.sleep(0.2)
            assert _status(port, "127.0.0.91", b"GET /v2/health/live HTTP/1.1\r\n\r\n")[0] == 429
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0

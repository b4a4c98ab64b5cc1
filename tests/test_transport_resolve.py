"""Name resolution is bounded by the call's timeout like the rest of the exchange (getaddrinfo
itself cannot be interrupted; the call stops waiting for it). The slow resolver is a stand-in:
a real one that hangs cannot be arranged on a test machine."""

from __future__ import annotations

import socket
import time

import pytest

from edge_eco.errors import RemoteUnavailable
from edge_eco.fallback import V2Client
from edge_eco.fallback.retry import RetryPolicy
from edge_eco.serve import InferenceServer
from tests.test_serve import FakeEco


def test_a_hanging_name_lookup_is_bounded_by_the_timeout(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow-dns.invalid":
            time.sleep(2.0)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    with V2Client("http://slow-dns.invalid:8000", "m", retry=RetryPolicy(attempts=1)) as client:
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailable, match="resolv|within 0.2 s"):
            client.infer(["hi"], timeout_s=0.2)
        took_s = time.monotonic() - t0
    assert took_s < 0.6, took_s


def test_names_and_literals_still_connect():
    with InferenceServer(FakeEco()) as srv:
        for host in ("localhost", "127.0.0.1"):
            with V2Client(f"http://{host}:{srv.port}", "intents") as client:
                assert client.infer(["money"])[0].label == "balance"

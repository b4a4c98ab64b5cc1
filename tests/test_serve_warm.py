"""``edge-eco serve`` warms its ecology before it listens: the first request is as fast as the next."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import edge_eco
from edge_eco.warmup import warm

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def test_warm_loads_every_model_within_the_budget():
    with edge_eco.open(MODELS / "clinc150") as eco:
        assert eco.stats()["loads"] == 0
        report = warm(eco)
        stats = eco.stats()
    assert report.models == len(eco.manifest.models) == 11
    assert stats["loads"] == 11 and set(stats["resident"]) == {m.id for m in eco.manifest.models}
    assert 0 < report.resident_bytes <= eco.manifest.budget_bytes


def infer_ms(conn: http.client.HTTPConnection, text: str) -> float:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
    t0 = time.perf_counter()
    conn.request("POST", "/v2/models/minilm/infer", body=body)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    return (time.perf_counter() - t0) * 1e3


@contextmanager
def served(bundle: Path):
    """``edge-eco serve bundle`` on a free loopback port: (the process, its port); stopped with SIGTERM,
    which must exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_eco.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"edge-eco serve: {bundle.name}"), line + proc.stderr.read()
        yield proc, int(line.rsplit(":", 1)[1].split("/")[0])
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_first_request_to_a_fresh_server_is_not_a_cold_load():
    with served(MODELS / "minilm") as (proc, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        first = infer_ms(conn, "what is my balance")
        rest = statistics.median(infer_ms(conn, t) for t in ("book a flight", "set an alarm", "tell me a joke",
                                                             "what is my balance", "play some music"))
        conn.close()
    # A cold model load made the first request ~70x the next ones here (680 ms vs ~10 ms).
    assert first < 5 * rest + 30, (first, rest)
    assert "warmed 1 model(s)" in proc.stderr.read()


def test_a_sensor_ecology_is_warmed_with_a_window_and_served_from_the_command_line():
    # The warm-up sent text to every ecology: `edge-eco serve models/har` refused to start
    # ("takes windows of [52, 3] numbers, not text"), found by a fresh-clone trial.
    with edge_eco.open(MODELS / "har") as eco:
        report = warm(eco)
        assert report.models == len(eco.manifest.models) == 4 and eco.stats()["loads"] == 4
    with served(MODELS / "har") as (proc, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 156], "data": [0.0] * 156}]})
        conn.request("POST", "/v2/models/har/infer", body=body)
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        conn.close()
    assert resp.status == 200, reply
    labels = {o["name"]: o["data"] for o in reply["outputs"]}["label"]
    with edge_eco.open(MODELS / "har") as eco:  # the served answer is the library's
        assert labels == [eco.answer(np.zeros(156, np.float32), local_only=True).label]
    assert "warmed 4 model(s)" in proc.stderr.read()

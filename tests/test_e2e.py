"""End to end: the committed CLINC150 ecology with the committed MiniLM generalist served by a real
`edge-eco serve` process on loopback. Builds nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edge_eco

from conftest import CLINC, MODELS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from demo import start_server  # noqa: E402

# Floors and ceilings from the full 5,500-query run (README figures), with slack for the sample.
ACCURACY_FLOOR = 0.86
REMOTE_RATE_CEILING = 0.33
REPORT_KEYS = {"requests", "accuracy", "in_scope_accuracy", "oos_recall", "remote_rate", "paths", "latency_ms",
               "peak_rss_bytes", "loads", "evictions", "baselines"}


@pytest.fixture(scope="module")
def remote_url():
    proc, url = start_server(MODELS / "minilm")
    yield url + "/v2/models/minilm"
    proc.terminate()
    assert proc.wait(timeout=10) == 0  # graceful shutdown on SIGTERM


def test_sample_of_clinc150_test_through_real_server(remote_url, clinc_test):
    sample = clinc_test[::10]  # 550 queries, in-scope and oos in their test proportions
    with edge_eco.open(MODELS / "clinc150", remote_url=remote_url) as eco:
        answers = [eco.answer(text) for text, _ in sample]
    accuracy = sum(a.label == gold for a, (_, gold) in zip(answers, sample)) / len(sample)
    remote_rate = sum(a.path == "remote" for a in answers) / len(sample)
    assert accuracy >= ACCURACY_FLOOR
    assert 0.05 <= remote_rate <= REMOTE_RATE_CEILING
    assert not any(a.path == "unavailable" for a in answers)
    assert all(a.label in eco.labels for a in answers)


def test_cli_run_writes_the_report(remote_url, tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([str(Path(sys.executable).parent / "edge-eco"), "run", str(MODELS / "clinc150"),
                           "--requests", str(CLINC), "--split", "test", "--limit", "200",
                           "--remote", remote_url, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["requests"] == 200
    assert set(report["paths"]) == {"direct", "coalition", "remote", "unavailable"}
    assert sum(report["paths"].values()) == 200
    assert set(report["baselines"]) == {"local_generalist", "remote"}
    for b in report["baselines"].values():
        assert {"accuracy", "in_scope_accuracy", "oos_recall"} <= set(b) and b["latency_ms"]["p50"] > 0
    assert report["baselines"]["remote"]["accuracy"] > 0.8
    assert "ecology" in done.stdout and "remote rate" in done.stdout


def test_server_down_mid_run_answers_locally(tmp_path, clinc_test):
    proc, url = start_server(MODELS / "minilm")
    with edge_eco.open(MODELS / "clinc150", remote_url=url) as eco:
        eco.controller.gain, eco.controller._margin = 0.0, -2.0  # every request wants the remote
        assert eco.answer(clinc_test[0][0]).path == "remote"
        proc.kill()
        proc.wait()
        a = eco.answer(clinc_test[1][0], deadline_ms=1000)
    assert a.path == "unavailable"
    assert a.label in eco.labels


def _cli(*args, env=None):
    return subprocess.run([str(Path(sys.executable).parent / "edge-eco"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_refuses_a_missing_or_empty_token_variable(tmp_path):
    import os
    env = {k: v for k, v in os.environ.items() if k != "EE_NO_SUCH_TOKEN"}
    env["EE_EMPTY_TOKEN"] = ""
    for var in ("EE_NO_SUCH_TOKEN", "EE_EMPTY_TOKEN"):
        done = _cli("serve", str(MODELS / "clinc150"), "--port", "0", "--token-env", var, env=env)
        assert done.returncode == 2 and f"--token-env {var}: the environment variable is unset or empty" in done.stderr


@pytest.mark.parametrize("args, needle", [
    (["--limit", "0"], "must be a positive finite number"),
    (["--budget-bytes", "-1"], "must be a non-negative finite number"),
    (["--deadline-ms", "nan"], "must be a positive finite number"),
    (["--deadline-ms", "inf"], "must be a positive finite number"),
    (["--split", "test"], "not a CLINC150 data_*.json file"),   # --split on a JSON lines file
    (["--out", "{tmp}"], "is a directory"),
])
def test_cli_run_argument_errors(tmp_path, args, needle):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "what is my balance", "label": "balance"}\n{"text": "hi"}\n')
    base = ["run", str(MODELS / "clinc150"), "--requests", str(jsonl), "--no-baselines"]
    done = _cli(*base, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2, done.stdout
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_cli_serve_on_a_port_in_use_is_a_clean_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        done = _cli("serve", str(MODELS / "clinc150"), "--port", str(s.getsockname()[1]))
    finally:
        s.close()
    assert done.returncode == 2 and "Address already in use" in done.stderr and "Traceback" not in done.stderr

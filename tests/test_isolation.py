"""Isolation: a real ONNX model of risk level `high` runs in a sandboxed worker process; a worker
killed mid-request or hanging fails that request clearly, is restarted, and the host keeps serving."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from edge_eco import backends
from edge_eco.backends import isolated
from edge_eco.errors import InferenceError, ModelLoadError, RequestError

from conftest import MODELS

BUNDLE = MODELS / "clinc150"
MODEL = BUNDLE / "banking.onnx"
FEEDS = {"indices": np.array([3, 77, 4000, 65000], np.int32), "values": np.array([1.0, 0.5, 2.0, 0.25], np.float32)}


def _net_isolation_possible() -> bool:
    tool = shutil.which("unshare")
    return bool(tool) and any(subprocess.run([tool, *flags, "true"], capture_output=True).returncode == 0
                              for flags in (["-n"], ["-r", "-n"]))


@pytest.fixture()
def session():
    s = isolated.open(MODEL, optimize=False, limits=isolated.Limits(run_timeout_s=2.0))
    yield s
    s.close()


def test_same_answers_as_in_process(session):
    local = backends.open_model("ort", MODEL, optimize=False)
    assert np.array_equal(session.run(FEEDS), local.run(FEEDS))
    assert session.run(FEEDS).shape == (16,)


def test_sandbox_network_limits_env_and_descriptors(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ECO_TEST_SECRET", "hunter2")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    s = isolated.open(MODEL, optimize=False, limits=isolated.Limits(address_space_bytes=3 << 30, cpu_s=600))
    try:
        pid = s.pid
        assert s.net_isolated == _net_isolation_possible()
        if s.net_isolated:  # its own network namespace: no route to the host's sockets
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert f"Max address space         {3 << 30}" in limits
        assert "Max cpu time              600" in limits
        assert b"hunter2" not in Path(f"/proc/{pid}/environ").read_bytes()
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [x for x in links if x.startswith("socket:")], links
        assert s.run(FEEDS).shape == (16,)
    finally:
        s.close()
        listener.close()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_worker_killed_mid_request_fails_that_request_and_restarts(session):
    want = session.run(FEEDS)
    pid = session.pid
    os.kill(pid, signal.SIGSTOP)  # the request below is then certainly in flight when the kill lands
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(err=_run_err(session)))
    t.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert isinstance(result["err"], InferenceError)
    assert "died during the request (signal SIGKILL)" in str(result["err"])
    assert np.array_equal(session.run(FEEDS), want)  # restarted, same answers
    assert session.restarts == 1 and session.pid != pid


def test_hanging_worker_is_killed_at_the_deadline_and_restarted(session):
    want = session.run(FEEDS)
    pid = session.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(InferenceError, match=r"no answer within 2 s; the worker was killed"):
        session.run(FEEDS)
    assert 1.9 < time.monotonic() - t0 < 6
    assert np.array_equal(session.run(FEEDS), want)
    assert session.restarts == 1 and session.pid != pid


def test_worker_that_died_idle_restarts_without_failing_a_request(session):
    want = session.run(FEEDS)
    os.kill(session.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert np.array_equal(session.run(FEEDS), want)
    assert session.restarts == 1


def test_corrupt_model_is_refused_inside_the_worker(tmp_path):
    shutil.copy(MODEL, tmp_path / "banking.onnx")
    (tmp_path / "banking.onnx.data").write_bytes(b"\0" * 100)
    with pytest.raises(ModelLoadError, match=r"banking.onnx \(sandboxed\):.*truncated"):
        isolated.open(tmp_path / "banking.onnx", optimize=False)


def _run_err(s):
    try:
        s.run(FEEDS)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def test_high_risk_model_in_an_ecology(tmp_path):
    eco_dir = tmp_path / "clinc150"
    shutil.copytree(BUNDLE, eco_dir)
    toml = eco_dir / "ecology.toml"
    text = toml.read_text()
    at = text.index('risk = "low"', text.index('id = "banking"'))
    toml.write_text(text[:at] + 'risk = "high"' + text[at + len('risk = "low"'):])
    with edge_eco.open(eco_dir, budget_bytes=0) as eco, edge_eco.open(BUNDLE) as plain:
        texts = ["what is my checking account balance", "transfer 100 dollars to savings", "freeze my account"]
        for q in texts:
            assert eco.predict_with("banking", q) == plain.predict_with("banking", q)
        assert eco._predict_bytes("banking") - plain._predict_bytes("banking") == isolated.WORKER_OVERHEAD_BYTES
        with eco.residency.use("banking") as s:
            assert isinstance(s, isolated.IsolatedSession)
            pid = s.pid
        os.kill(pid, signal.SIGSTOP)
        with eco.residency.use("banking") as s:
            s.limits = isolated.Limits(run_timeout_s=0.5)  # a shorter deadline for the test
        with pytest.raises(InferenceError, match="sandboxed"):
            eco.predict_with("banking", texts[0])
        # The host keeps serving: other models at once, the isolated one after its restart.
        assert eco.answer("book a flight to paris", local_only=True).label == "book_flight"
        assert eco.predict_with("banking", texts[0]) == plain.predict_with("banking", texts[0])


def test_high_risk_model_is_routed_only_under_a_high_risk_contract_and_survives_a_kill(tmp_path):
    """End to end through ``answer``: the default contract (max_risk "medium") never routes to the
    risk-high banking model; ``max_risk="high"`` routes to it in its sandboxed worker. The worker
    killed with SIGKILL mid-request: that request names the death and is answered by the other
    candidates; the next one restarts the worker; the host answers throughout."""
    eco_dir = tmp_path / "clinc150"
    shutil.copytree(BUNDLE, eco_dir)
    toml = eco_dir / "ecology.toml"
    text = toml.read_text()
    at = text.index('risk = "low"', text.index('id = "banking"'))
    toml.write_text(text[:at] + 'risk = "high"' + text[at + len('risk = "low"'):])
    q = "what is my checking account balance"
    with edge_eco.open(eco_dir) as eco:
        a = eco.answer(q, local_only=True)
        assert "banking" not in a.provenance["route"]["candidates"]
        assert "banking" not in eco.residency.resident()  # no worker was started
        with pytest.raises(RequestError, match="max_risk must be one of"):
            eco.answer(q, max_risk="extreme")
        a = eco.answer(q, local_only=True, max_risk="high")
        assert a.provenance["route"]["candidates"][0] == "banking" and a.label == "balance"
        with eco.residency.use("banking") as s:
            assert isinstance(s, isolated.IsolatedSession)
            pid = s.pid
        os.kill(pid, signal.SIGSTOP)  # the next request is surely in flight when the kill lands
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(a=eco.answer(q, local_only=True, max_risk="high")))
        t.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        killed = result["a"]
        assert "died during the request (signal SIGKILL)" in killed.provenance["model_errors"]["banking"]
        assert killed.label  # answered by the other candidates (or the generalist)
        assert eco.answer("book a flight to paris", local_only=True).label == "book_flight"
        again = eco.answer(q, local_only=True, max_risk="high")  # the worker restarts
        assert again.label == "balance" and "model_errors" not in again.provenance
        with eco.residency.use("banking") as s:
            assert s.pid != pid and s.restarts == 1

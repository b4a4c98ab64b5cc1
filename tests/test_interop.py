"""Interoperability with real serving engines on loopback.

- NVIDIA's ``tritonclient[http]`` talks to ``edge-eco serve`` (health, metadata, infer).
- edge_eco's client and an ecology fall back to a real Seldon MLServer serving the MiniLM generalist
  through a custom runtime (tests/peers/minilm_runtime.py), started and stopped by a fixture.

Both peers pin many packages of their own, so they live in a separate virtual environment
(``.venv-peers``, made by ``make peers``, which ``make test`` runs; ``EDGE_ECO_PEERS_PYTHON`` may
point elsewhere). They run as subprocesses of that environment's python.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import edge_eco
from edge_eco.fallback import V2Client
from edge_eco.serve import InferenceServer

from conftest import MODELS, ROOT

PEERS_PYTHON = Path(os.environ.get("EDGE_ECO_PEERS_PYTHON", ROOT / ".venv-peers" / "bin" / "python"))
TEXTS = ["what is my account balance", "book me a flight to boston", "how do i say hello in french"]


@pytest.fixture(scope="module")
def peers_python() -> Path:
    if not PEERS_PYTHON.exists():
        pytest.fail(f"{PEERS_PYTHON} is missing: run `make peers` (mlserver + tritonclient in their own venv)")
    return PEERS_PYTHON


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def minilm():
    with edge_eco.open(MODELS / "minilm") as eco:
        yield eco


# -- tritonclient -> edge-eco serve ------------------------------------------------------------------

TRITON_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    url, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    c = th.InferenceServerClient(url)
    out = {"live": c.is_server_live(), "ready": c.is_server_ready(), "model_ready": c.is_model_ready(model),
           "server": c.get_server_metadata(), "model": c.get_model_metadata(model)}
    inp = th.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    outs = [th.InferRequestedOutput("label", binary_data=False),
            th.InferRequestedOutput("confidence", binary_data=False)]
    r = c.infer(model, [inp], outputs=outs, request_id="triton-1")
    out["id"] = r.get_response()["id"]
    out["labels"] = [x.decode() if isinstance(x, bytes) else x for x in r.as_numpy("label").tolist()]
    out["confidence"] = r.as_numpy("confidence").tolist()
    out["confidence_dtype"] = str(r.as_numpy("confidence").dtype)
    only = c.infer(model, [inp], outputs=[th.InferRequestedOutput("confidence", binary_data=False)])
    out["only_outputs"] = [o["name"] for o in only.get_response()["outputs"]]
    binary = th.InferInput("text", [1], "BYTES")
    binary.set_data_from_numpy(np.array([texts[0]], dtype=object), binary_data=True)
    try:
        c.infer(model, [binary])
        out["binary"] = "accepted"
    except InferenceServerException as exc:
        out["binary"] = str(exc)
    try:
        c.get_model_metadata("nope")
    except InferenceServerException as exc:
        out["unknown_model"] = str(exc)
    c.close()
    print(json.dumps(out))
""")


def test_tritonclient_talks_to_edge_eco_serve(peers_python, minilm):
    with InferenceServer(minilm) as server:
        done = subprocess.run([str(peers_python), "-c", TRITON_SCRIPT, server.url.removeprefix("http://"), "minilm",
                               json.dumps(TEXTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert (out["live"], out["ready"], out["model_ready"]) == (True, True, True)
    assert out["server"]["name"] == "edge_eco" and out["server"]["version"] == edge_eco.__version__
    assert out["model"]["name"] == "minilm" and out["model"]["versions"] == ["1"]
    assert out["model"]["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    expected = [minilm.answer(t, local_only=True) for t in TEXTS]
    assert out["id"] == "triton-1"
    assert out["labels"] == [a.label for a in expected] and out["labels"][:2] == ["balance", "book_flight"]
    assert out["confidence"] == pytest.approx([a.confidence for a in expected], abs=1e-6)
    assert out["confidence_dtype"] == "float32"
    assert out["only_outputs"] == ["confidence"]
    assert "binary tensor data extension is not supported" in out["binary"]
    assert "unknown model" in out["unknown_model"]


# -- edge_eco -> Seldon MLServer ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlserver(peers_python, tmp_path_factory):
    """A real MLServer 1.7 on loopback serving models/minilm through the custom runtime."""
    root = tmp_path_factory.mktemp("mlserver")
    model_dir = root / "minilm"
    model_dir.mkdir()
    shutil.copy(ROOT / "tests" / "peers" / "minilm_runtime.py", model_dir)
    http_port, grpc_port, metrics_port = free_ports(3)
    # parallel_workers = 0: MLServer 1.7.1 with a recent uvloop crash-loops with worker processes
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False}))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "minilm", "implementation": "minilm_runtime.MiniLMRuntime",
        "parameters": {"uri": str(MODELS / "minilm")}}))
    log = open(root / "mlserver.log", "wb")
    proc = subprocess.Popen([str(peers_python.parent / "mlserver"), "start", str(root)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlserver exited with {proc.returncode}:\n{(root / 'mlserver.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v2/models/minilm/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlserver not ready in 90 s:\n{(root / 'mlserver.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_v2_client_against_mlserver(mlserver, minilm):
    with V2Client(mlserver, "minilm", labels=minilm.labels) as c:
        assert c.ready() is True
        batch = c.infer(TEXTS)
        sock = c.transport.connection().sock
        answers = [c.infer([t])[0] for t in TEXTS]  # one at a time: int8 activations are quantized per batch
        assert c.transport.connection().sock is sock  # the keep-alive connection was reused
    expected = [minilm.answer(t, local_only=True) for t in TEXTS]
    assert [a.label for a in batch] == [a.label for a in answers] == [e.label for e in expected]
    assert [a.confidence for a in answers] == pytest.approx([e.confidence for e in expected], abs=1e-4)
    assert answers[0].model == "minilm" and answers[0].label == "balance"


def test_ecology_falls_back_to_mlserver(mlserver, clinc_test):
    with edge_eco.open(MODELS / "clinc150", remote_url=f"{mlserver}/v2/models/minilm") as eco:
        eco.controller.gain, eco.controller._margin = 0.0, -2.0  # every request wants the remote
        answers = [eco.answer(text, deadline_ms=2000) for text, _ in clinc_test[:20]]
    assert all(a.path == "remote" for a in answers), [a.provenance["remote"] for a in answers]
    assert sum(a.label == gold for a, (_, gold) in zip(answers, clinc_test[:20])) >= 17
    assert answers[0].provenance["remote"]["model"] == "minilm"


# -- device chaining: an ecology whose remote is another `edge-eco serve` process ----------------------

def test_device_chain_through_an_edge_eco_serve_process(tmp_path):
    """phone -> hub: the phone's remote is a separate `edge-eco serve` process (bearer token, SIGTERM)."""
    import sys

    from conftest import make_fake_ecology
    from loopback import SEND_REMOTE, with_remote

    from edge_eco.manifest import RemoteSpec

    hub_bundle = make_fake_ecology(tmp_path / "hub")
    env = {**os.environ, "HUB_TOKEN": "s3cret", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_eco.cli", "serve", str(hub_bundle), "--port", "0",
                             "--token-env", "HUB_TOKEN"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("edge-eco serve: fake v1 on http://127.0.0.1:"), line
        model_url = line.split(" on ")[1].strip()
        phone = with_remote(make_fake_ecology(tmp_path / "phone", policy=SEND_REMOTE),
                            RemoteSpec(url=model_url, timeout_ms=2000.0))
        with edge_eco.open(hub_bundle) as hub_local, edge_eco.open(phone, remote_token="s3cret") as eco:
            texts = ["transfer money to savings", "book a flight to paris", "zzz qqq"]
            answers = [eco.answer(t) for t in texts]
            expected = [hub_local.answer(t, local_only=True) for t in texts]
        with edge_eco.open(phone, remote_token="wrong") as eco:
            refused = eco.answer(texts[0])
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0  # graceful shutdown on SIGTERM
    assert [a.path for a in answers] == ["remote"] * 3
    assert [(a.label, a.confidence) for a in answers] == [(e.label, pytest.approx(e.confidence, abs=1e-6))
                                                         for e in expected]
    assert answers[0].provenance["remote"]["model"] == "fake"
    assert refused.path == "unavailable" and "HTTP 401" in refused.provenance["remote"]["error"]

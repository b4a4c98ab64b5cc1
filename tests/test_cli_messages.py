"""Command-line messages that name the real problem: a bad --port, and the first real remote
failure behind an open circuit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, make_fake_ecology
from loopback import SEND_REMOTE, RawServer, http_reply, with_remote

from edge_eco.cli import main
from edge_eco.manifest import RemoteSpec


@pytest.mark.parametrize("port, needle", [("abc", "--port: not a TCP port number: 'abc'"),
                                          ("70000", "--port: a TCP port is 0-65535, got 70000")])
def test_a_bad_port_says_so(port, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "somewhere", "--port", port])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err and "_port" not in err


def test_run_reports_the_real_failure_behind_an_open_circuit(tmp_path, capsys):
    server = RawServer(lambda conn, body: conn.sendall(http_reply('{"error":"unknown model generalist"}',
                                                                  "404 Not Found")))
    try:
        folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                             RemoteSpec(url=server.url, model="generalist", timeout_ms=500.0))
        reqs = tmp_path / "r.jsonl"
        reqs.write_text("".join(json.dumps({"text": f"send money {i}", "label": "transfer"}) + "\n"
                                for i in range(12)))
        out = tmp_path / "report.json"
        assert main(["run", str(folder), "--requests", str(reqs), "--out", str(out)]) == 0
    finally:
        server.close()
    report = json.loads(out.read_text())
    first = report["baselines"]["remote"]["first_error"]
    assert "circuit open" in first and "HTTP 404" in first and "unknown model generalist" in first, first
    assert "HTTP 404" in capsys.readouterr().out


def test_a_wrong_model_name_says_which_model_the_server_has_and_how_to_name_it():
    from tests.test_serve import FakeEco

    from edge_eco.errors import RemoteStatusError
    from edge_eco.fallback import V2Client
    from edge_eco.serve import InferenceServer

    with InferenceServer(FakeEco()) as srv, V2Client(srv.url, "minilm") as client:
        with pytest.raises(RemoteStatusError) as err:
            client.infer(["hello"])
    message = str(err.value)
    assert "HTTP 404" in message and "this server has model 'intents'" in message
    assert f"{srv.url}/v2/models/intents" in message and "--remote-model intents" in message


def test_run_exits_1_when_every_request_failed(tmp_path, capsys):
    """Found by a fresh-clone trial: `edge-eco run` exited 0 with 0 requests answered."""
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps({"text": "x" * 20_000, "label": "transfer"}) + "\n" for _ in range(3)))
    assert main(["run", str(make_fake_ecology(tmp_path / "eco")), "--requests", str(reqs), "--no-baselines"]) == 1
    err = capsys.readouterr().err
    assert "3 of 3 requests failed; first: " in err and "the limit is 16384" in err


def test_text_for_a_vector_ecology_and_vectors_for_a_text_ecology_say_which_it_takes(tmp_path, capsys):
    """Found by a tester: "window must be an array of numbers shaped [52, 3]" for text sent to a dense
    ecology, "text must be str or bytes, got ndarray" for vectors sent to a text one."""
    from conftest import MODELS

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"walk {i}", "label": "walking"}) + "\n" for i in range(3)))
    vec = tmp_path / "vec.jsonl"
    vec.write_text(json.dumps({"v": [0.5, 1.0, 2.0], "label": "balance"}) + "\n")
    eco = make_fake_ecology(tmp_path / "eco")
    assert main(["eval", str(eco), "--requests", str(vec), "--vector-field", "v"]) == 2
    assert capsys.readouterr().err == ("edge-eco eval: error: fake takes text, not vectors: drop --vector-field v "
                                       "(requests are read from --text-field, default 'text')\n")
    import edge_eco
    from edge_eco.errors import RequestError
    with edge_eco.open(eco) as e, pytest.raises(RequestError, match=r"^fake takes text, not vectors \(got ndarray\)$"):
        e.answer(np.zeros(3))
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
    assert main(["run", str(MODELS / "har"), "--requests", str(text), "--no-baselines"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-eco run: error: har takes windows of [52, 3] numbers (samples x axes), not text: "
                          f"`edge-eco run` read the 'text' field of {text}; "), err
    assert main(["eval", str(MODELS / "har"), "--requests", str(text)]) == 2
    assert capsys.readouterr().err == ("edge-eco eval: error: har takes windows of [52, 3] numbers (samples x axes), "
                                       "not text: name the field holding them with --vector-field FIELD\n")


@pytest.mark.parametrize("argv", [
    ["run", "{clinc}", "--requests", "{requests}", "--out", "/proc/nope/r.json"],
    ["eval", "{clinc}", "--requests", "{requests}", "--out", "/proc/nope/r.json"],
    ["profile", "{clinc}", "--out", "/proc/nope/device.toml"],
    ["assign", "{clinc}", "--platform", "dev-x86-2core", "--plot", "/proc/nope/p.png"],
])
def test_an_unwritable_report_path_is_refused_before_the_job(argv, tmp_path, capsys):
    """A trial: run, eval, profile and assign ran the whole job, then failed on --out/--plot."""
    import time
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"text": "what is my balance", "label": "balance"}\n')
    argv = [a.format(clinc=MODELS / "clinc150", requests=requests) for a in argv]
    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-eco {argv[0]}: error: --") and "/proc/nope/" in err, err
    assert err.endswith("cannot be written (No such file or directory); nothing was run\n"), err
    assert time.perf_counter() - start < 5


def test_a_missing_file_is_named_without_the_errno(capsys):
    """A trial: `edge-eco sign models/har --key /nonexistent.key` printed "[Errno 2] No such file or
    directory: '/nonexistent.key'"."""
    assert main(["sign", str(MODELS / "har"), "--key", "/nonexistent.key"]) == 2
    assert capsys.readouterr().err == "edge-eco sign: error: /nonexistent.key: No such file or directory\n"

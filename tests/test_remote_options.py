"""Remote options reachable without code: the manifest's [remote] ``logprobs``, the model name at
open time (``remote_model``) and on the command line (``--remote-model``, ``--remote-protocol``)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import CLINC, MODELS, make_fake_ecology
from loopback import SEND_REMOTE, OpenAIStub, keyword_llm, with_remote

import edge_eco
from edge_eco.cli import main
from edge_eco.errors import ManifestError
from edge_eco.manifest import RemoteSpec, parse_manifest
from edge_eco.tomlwrite import manifest_to_toml


@pytest.fixture
def stub():
    s = OpenAIStub(keyword_llm, model="tiny-llm")
    yield s
    s.close()


def test_manifest_logprobs_round_trips_and_is_validated(fake_ecology):
    folder = with_remote(fake_ecology, RemoteSpec(protocol="openai", url="http://x/v1", model="m", logprobs=True))
    text = (folder / "ecology.toml").read_text()
    assert "logprobs = true" in text and parse_manifest(text).remote.logprobs is True
    with pytest.raises(ManifestError, match="logprobs"):
        parse_manifest(text.replace("logprobs = true", 'logprobs = "yes"'))


def test_open_overrides_the_model_and_the_manifest_asks_for_logprobs(tmp_path, stub):
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(protocol="openai", url=stub.url, model="not-served", logprobs=True))
    with edge_eco.open(folder, remote_model="tiny-llm") as eco:
        a = eco.answer("send money to mum", deadline_ms=2000)
    assert a.path == "remote" and a.label == "transfer", a.provenance
    assert a.confidence == pytest.approx(math.exp(-0.105))
    assert stub.requests[-1]["model"] == "tiny-llm" and stub.requests[-1]["logprobs"] is True


def test_run_takes_remote_protocol_and_model(tmp_path, stub, capsys):
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE), RemoteSpec(model="generalist"))
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                            [("send money", "transfer"), ("book a flight", "book_flight"), ("set an alarm", "alarm")]))
    out = tmp_path / "report.json"
    assert main(["run", str(folder), "--requests", str(reqs), "--remote", stub.url, "--remote-protocol", "openai",
                 "--remote-model", "tiny-llm", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["paths"]["remote"] == 3 and report["baselines"]["remote"]["accuracy"] == 1.0
    assert {r["model"] for r in stub.requests} == {"tiny-llm"}


def test_bench_routing_takes_remote_protocol_and_model(tmp_path, stub, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "routing", str(MODELS / "clinc150"), "--requests", str(CLINC), "--split", "test",
                 "--limit", "40", "--remote", stub.url, "--remote-protocol", "openai", "--remote-model", "tiny-llm",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["requests"] == 40
    assert len(stub.requests) >= 40 and {r["model"] for r in stub.requests} == {"tiny-llm"}

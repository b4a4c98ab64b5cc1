"""Remote policy: what never leaves the device (local_only, jurisdiction) and the redaction of what
does -- proven on the bytes a loopback socket receives."""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given, strategies as st

import edge_eco
from edge_eco.errors import ManifestError
from edge_eco.datasets import Example
from edge_eco.manifest import Policy, RemoteSpec, parse_manifest
from edge_eco.remote_policy import redact, remote_block_reason
from edge_eco.runjob import RunOptions, run_job
from edge_eco.tomlwrite import manifest_to_toml

from conftest import make_fake_ecology
from loopback import SEND_REMOTE, RawServer, counting_listener, http_reply, with_remote


def v2_ok(conn, body):
    req = json.loads(body)
    n = len(req["inputs"][0]["data"])
    conn.sendall(http_reply(json.dumps({"id": req["id"], "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": ["balance"] * n},
        {"name": "confidence", "datatype": "FP32", "shape": [n], "data": [0.9] * n}]})))


# -- pure rules ---------------------------------------------------------------------------------------

def test_block_reasons():
    p = Policy()
    assert remote_block_reason(p, False) is None
    assert remote_block_reason(p, True) == "local_only"
    assert remote_block_reason(replace(p, remote="forbidden"), False) == "policy forbids remote"
    eu = replace(p, jurisdiction="eu-health", local_jurisdictions=("eu-health",))
    assert remote_block_reason(eu, False) == "jurisdiction 'eu-health' keeps requests local"
    niche = replace(p, local_jurisdictions=("de-bank",))
    assert remote_block_reason(niche, False, [{"domain": "x"}, {"jurisdiction": "de-bank"}]) == \
        "jurisdiction 'de-bank' keeps requests local"
    assert remote_block_reason(niche, False, [{"jurisdiction": "us"}]) is None


def test_redaction_masks():
    assert redact("card 4111 1111, pin 0042", ["digits"]) == "card <num> <num>, pin <num>"
    assert redact("mail ann.lee+x@mail.example.org now", ["emails"]) == "mail <email> now"
    # e-mails first, whatever the declared order: one token, not a mangled address
    assert redact("ann42@x.org paid 30", ["digits", "emails"]) == "<email> paid <num>"
    assert redact("٣٤ arabic-indic digits", ["digits"]) == "<num> arabic-indic digits"
    with pytest.raises(KeyError):
        redact("x", ["names"])


@given(st.text(max_size=60))
def test_digit_redaction_leaves_no_digit(text):
    out = redact(text, ["digits"])
    assert not any(ch.isdecimal() for ch in out)
    assert redact(out, ["digits"]) == out


def test_manifest_remote_section_round_trips_and_is_validated(fake_ecology):
    m = parse_manifest((fake_ecology / "ecology.toml").read_text())
    m2 = replace(m, remote=RemoteSpec(protocol="openai", url="https://api.example/v1", model="m", attempts=3,
                                      redact=("digits", "emails")),
                 policy=replace(m.policy, jurisdiction="eu", local_jurisdictions=("eu",)))
    text = manifest_to_toml(m2)
    assert parse_manifest(text) == m2
    with pytest.raises(ManifestError, match=r"remote.redact: unknown mask\(s\) \['names'\]"):
        parse_manifest(text.replace('redact = ["digits", "emails"]', 'redact = ["names"]'))
    with pytest.raises(ManifestError, match="'grpc' is not one of"):
        parse_manifest(text.replace('protocol = "openai"', 'protocol = "grpc"'))
    with pytest.raises(ManifestError, match="attempts"):
        parse_manifest(text.replace("attempts = 3", "attempts = 0"))


# -- on the wire ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["v2", "openai"])
def test_local_only_sends_no_bytes(tmp_path, protocol):
    listener, count = counting_listener()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(protocol=protocol, url=url, model="g", timeout_ms=100.0))
    try:
        with edge_eco.open(folder) as eco:
            answers = [eco.answer(t, local_only=True) for t in ("zzz qqq", "transfer money 1234", "alarm")]
            assert count() == (0, 0)
            assert all(a.provenance["remote"] == {"skipped": "local_only"} for a in answers)
            eco.answer("zzz qqq", deadline_ms=300)  # control: the same ecology does reach the socket
            connections, sent = count()
    finally:
        listener.close()
    assert connections == 1 and sent > 100


def test_run_local_only_skips_the_remote_baseline(tmp_path):
    # a trial: `edge-eco run ... --remote URL --local-only` sent every text to URL through the always-remote baseline
    listener, count = counting_listener()
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(url=f"http://127.0.0.1:{listener.getsockname()[1]}", model="g", timeout_ms=100.0))
    try:
        with edge_eco.open(folder) as eco:
            report = run_job(eco, [Example("zzz qqq", "oos"), Example("alarm", "alarm")],
                             RunOptions(local_baseline=None, local_only=True))
            assert count() == (0, 0)
    finally:
        listener.close()
    assert "remote" not in report["baselines"]


def test_jurisdiction_of_the_ecology_keeps_everything_local(tmp_path):
    listener, count = counting_listener()
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(url=f"http://127.0.0.1:{listener.getsockname()[1]}", model="g"),
                         jurisdiction="eu-health", local_jurisdictions=("eu-health",))
    try:
        with edge_eco.open(folder) as eco:
            a = eco.answer("zzz qqq")
            assert count() == (0, 0)
    finally:
        listener.close()
    assert a.provenance["remote"] == {"skipped": "jurisdiction 'eu-health' keeps requests local"}
    assert a.path in ("direct", "coalition")


def test_niche_jurisdiction_keeps_its_requests_local(tmp_path):
    srv = RawServer(v2_ok)
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(url=srv.url, model="g"), local_jurisdictions=("de-bank",))
    m = parse_manifest((folder / "ecology.toml").read_text())
    models = tuple(replace(x, niches=MappingProxyType({"jurisdiction": "de-bank"})) if x.id == "money" else x
                   for x in m.models)
    (folder / "ecology.toml").write_text(manifest_to_toml(replace(m, models=models)))
    try:
        with edge_eco.open(folder) as eco:
            money = eco.answer("what is my account balance")
            assert srv.bodies == []
            travel = eco.answer("set an alarm for six")
    finally:
        srv.close()
    assert "money" in [v[0] for v in money.provenance["votes"]]
    assert money.provenance["remote"] == {"skipped": "jurisdiction 'de-bank' keeps requests local"}
    assert [v[0] for v in travel.provenance["votes"]] == ["travel"]
    assert travel.path == "remote" and len(srv.bodies) == 1


def test_redaction_is_applied_to_the_bytes_the_server_receives(tmp_path):
    srv = RawServer(v2_ok)
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(url=srv.url, model="g", redact=("digits", "emails")))
    try:
        with edge_eco.open(folder) as eco:
            a = eco.answer("transfer 2500 to iban DE89370400440532013000 for ann@bank.example")
    finally:
        srv.close()
    assert a.path == "remote" and a.provenance["remote"]["redacted"] == ["digits", "emails"]
    [body] = srv.bodies
    assert json.loads(body)["inputs"][0]["data"] == ["transfer <num> to iban DE<num> for <email>"]
    assert not any(ch.isdigit() for ch in body.decode().split('"data"')[1])
    assert b"ann@bank" not in body

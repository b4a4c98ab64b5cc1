"""The OpenAI-compatible client against a loopback server that follows the documented
chat-completions shapes, and the ecology using it end to end; plus the retry policy."""

from __future__ import annotations

import json
import threading
import time

import pytest

import edge_eco
from edge_eco.errors import ManifestError, RemoteProtocolError, RemoteStatusError, RemoteTLSError, RemoteUnavailable
from edge_eco.fallback import OpenAIClient, V2Client, client_for
from edge_eco.fallback.openai import parse_completion, system_prompt
from edge_eco.fallback.retry import RetryPolicy, retriable
from edge_eco.manifest import RemoteSpec

from conftest import make_fake_ecology
from loopback import SEND_REMOTE, OpenAIStub, RawServer, http_reply, keyword_llm, with_remote

LABELS = ("alarm", "balance", "book_flight", "oos", "transfer")


@pytest.fixture
def stub():
    s = OpenAIStub(keyword_llm, token="sk-test")
    yield s
    s.close()


def test_picks_one_label_and_sends_the_documented_request(stub):
    with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, token="sk-test") as c:
        answers = c.infer(["wake me with an alarm", "how much money do I have"])
        assert c.ready() is True
    assert [(a.label, a.confidence, a.model) for a in answers] == [("alarm", 1.0, "tiny-llm"),
                                                                  ("transfer", 1.0, "tiny-llm")]
    req = stub.requests[0]
    assert req["model"] == "tiny-llm" and req["temperature"] == 0 and req["n"] == 1
    assert [m["role"] for m in req["messages"]] == ["system", "user"]
    assert req["messages"][1]["content"] == "wake me with an alarm"
    assert req["messages"][0]["content"] == system_prompt(LABELS)
    assert all(label in req["messages"][0]["content"] for label in LABELS)


def test_logprobs_become_the_confidence(stub):
    with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, token="sk-test", logprobs=True) as c:
        [a] = c.infer(["book a flight"])
    assert stub.requests[-1]["logprobs"] is True
    assert a.label == "book_flight" and a.confidence == pytest.approx(0.9003, abs=1e-4)  # exp(-0.105)


def test_keep_alive_connection_is_reused(stub):
    with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, token="sk-test") as c:
        c.infer(["alarm"])
        sock = c.transport.connection().sock
        c.infer(["balance"])
        assert sock is not None and c.transport.connection().sock is sock


def test_wrong_token_is_a_401_status_error(stub):
    with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, token="wrong") as c:
        with pytest.raises(RemoteStatusError, match="HTTP 401 .*Incorrect API key") as info:
            c.infer(["alarm"])
    assert info.value.status == 401


@pytest.mark.parametrize("content, needle", [
    ("balance.", "not in the label set"), ("balance transfer", "not in the label set"),
    ("Balance", "not in the label set"), ("", "not in the label set")])
def test_reply_is_parsed_strictly(content, needle):
    stub = OpenAIStub(lambda system, user: content)
    try:
        with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises(RemoteProtocolError, match=needle):
                c.infer(["x"])
            assert c.breaker._failures == 1  # a failed call, counted by the breaker
    finally:
        stub.close()


def test_surrounding_whitespace_is_not_part_of_the_label():
    doc = {"choices": [{"message": {"role": "assistant", "content": "  alarm\n"}, "finish_reason": "stop"}]}
    assert parse_completion(json.dumps(doc).encode(), 0.7) == ("alarm", 0.7, "")


@pytest.mark.parametrize("doc, needle", [
    ({"choices": [{"message": {"content": None, "refusal": "I can't help"}}]}, "refused"),
    ({"choices": [{"message": {"content": "bal"}, "finish_reason": "length"}]}, "cut at max_tokens"),
    ({"choices": [{"message": "alarm"}]}, "message must be an object"),
    ({"choices": [{"message": {"content": "alarm"}, "logprobs": {"content": [{"logprob": 0.5}]}}]}, "not a log-prob"),
    ({"choices": [{"message": {"content": "alarm"}, "logprobs": {"content": [{"tok": 1}]}}]}, "logprobs are malformed"),
    ({"object": "chat.completion"}, "'choices' must be"),
    ({"choices": [{"message": {"content": "alarm"}, "logprobs": {"content": [{"logprob": -10 ** 400}]}}]},
     "logprobs are malformed"),  # OverflowError escaped before the fix
])
def test_malformed_completions(doc, needle):
    with pytest.raises(RemoteProtocolError, match=needle):
        parse_completion(json.dumps(doc).encode(), 1.0)


def test_a_reply_nested_too_deeply_is_not_json():
    with pytest.raises(RemoteProtocolError, match="not valid JSON"):
        parse_completion(b"[" * 100_000 + b"]" * 100_000, 1.0)


def test_bad_configuration():
    with pytest.raises(ManifestError, match="label set"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", labels=())
    with pytest.raises(ManifestError, match="default_confidence"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", labels=LABELS, default_confidence=2.0)
    with pytest.raises(ManifestError, match="protocol 'grpc'"):
        client_for("grpc", "http://127.0.0.1:1", "m")
    c = client_for("v2", "http://127.0.0.1:1/v2/models/gen", "ignored")
    assert isinstance(c, V2Client) and c.model == "gen"


def test_ecology_with_openai_remote_end_to_end(tmp_path, stub):
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(protocol="openai", url=stub.url, model="tiny-llm"))
    with edge_eco.open(folder, remote_token="sk-test") as eco:
        a = eco.answer("please move some money around")
    assert (a.label, a.path) == ("transfer", "remote")
    assert a.provenance["remote"]["model"] == "tiny-llm" and a.provenance["remote"]["tries"] == 1
    # The generalist was offered exactly the ecology's label set.
    assert stub.requests[-1]["messages"][0]["content"] == system_prompt(LABELS)


# -- retries -----------------------------------------------------------------------------------------


def test_retry_schedule_is_jittered_bounded_and_deadline_aware():
    p = RetryPolicy(attempts=3, backoff_s=0.1, max_backoff_s=0.15, min_attempt_s=0.05)
    assert p.next_delay_s(1, 10.0, 0.5) == pytest.approx(0.05)
    assert p.next_delay_s(2, 10.0, 0.5) == pytest.approx(0.075)  # 0.2 capped at 0.15, times u
    assert p.next_delay_s(3, 10.0, 0.0) is None  # attempts spent
    assert p.next_delay_s(1, 0.09, 0.5) is None  # 0.05 wait leaves 0.04 < min_attempt_s
    assert retriable(RemoteUnavailable("x")) and retriable(RemoteStatusError("x", 503))
    assert not retriable(RemoteStatusError("x", 400)) and not retriable(RemoteProtocolError("x"))
    assert not retriable(RemoteTLSError("certificate verify failed"))
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_a_503_then_success_is_retried_once_with_the_injected_jitter():
    calls = []

    def script(conn, body):
        calls.append(time.monotonic())
        if len(calls) == 1:
            conn.sendall(http_reply('{"error": "warming up"}', "503 Service Unavailable"))
        else:
            req = json.loads(body)
            conn.sendall(http_reply(json.dumps({"id": req["id"], "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["alarm"]},
                {"name": "confidence", "datatype": "FP32", "shape": [1], "data": [0.8]}]})))

    srv = RawServer(script)
    draws = []
    try:
        with V2Client(srv.url, "m", labels=LABELS, retry=RetryPolicy(attempts=3, backoff_s=0.1),
                      rng=lambda: draws.append(0.5) or 0.5) as c:
            [a] = c.infer(["x"], timeout_s=2.0)
    finally:
        srv.close()
    assert (a.label, a.attempts) == ("alarm", 2)
    assert draws == [0.5] and calls[1] - calls[0] >= 0.05  # waited u * backoff_s = 50 ms


def test_no_retry_when_the_deadline_would_not_allow_it():
    srv = RawServer(lambda conn, body: conn.sendall(http_reply('{"error": "busy"}', "503 Service Unavailable")))
    try:
        with V2Client(srv.url, "m", retry=RetryPolicy(attempts=5, backoff_s=0.5, max_backoff_s=0.5),
                      rng=lambda: 0.99) as c:
            t0 = time.monotonic()
            with pytest.raises(RemoteStatusError, match="HTTP 503"):
                c.infer(["x"], timeout_s=0.3)
            assert time.monotonic() - t0 < 0.2  # a 0.495 s wait cannot fit: fail now, do not sleep
    finally:
        srv.close()
    assert len(srv.bodies) == 1


def test_one_client_is_shared_by_threads(stub):
    out = {}
    with OpenAIClient(stub.url, "tiny-llm", labels=LABELS, token="sk-test") as c:
        def work(i):
            out[i] = c.infer(["alarm" if i % 2 else "flight"])[0].label
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert out == {i: "alarm" if i % 2 else "book_flight" for i in range(8)}


def test_protocol_chosen_at_open_time_overrides_the_manifest(tmp_path):
    folder = make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE)  # no [remote] table at all
    stub = OpenAIStub(keyword_llm, model="generalist")  # the model name when the manifest names none
    try:
        with edge_eco.open(folder, remote_url=stub.url, remote_protocol="openai") as eco:
            assert isinstance(eco.remote, OpenAIClient) and eco.remote.labels == LABELS
            a = eco.answer("set my alarm")
    finally:
        stub.close()
    assert (a.label, a.path) == ("alarm", "remote")

"""Every remote failure mode answers locally within the deadline, with path and provenance saying why.

One test per mode and protocol, each against a real socket on loopback: the remote is configured in
the ecology's manifest ([remote] protocol/url), the request wants the remote (fallback threshold ~1),
and the answer must be the best local one with path "unavailable".
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

import edge_eco
from edge_eco.manifest import RemoteSpec

from conftest import make_fake_ecology
from loopback import SEND_REMOTE, RawServer, http_reply, reset, with_remote

DEADLINE_MS = 400.0
TEXT = "transfer money to my savings"


def v2_doc(req: dict, label="transfer", conf=0.9, shape=None, conf_type="FP32") -> dict:
    n = len(req["inputs"][0]["data"])
    return {"model_name": "g", "model_version": "1", "id": req["id"], "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": shape or [n], "data": [label] * n},
        {"name": "confidence", "datatype": conf_type, "shape": shape or [n], "data": [conf] * n}]}


def chat_doc(content) -> dict:
    return {"id": "chatcmpl-9", "object": "chat.completion", "created": 0, "model": "g",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def ok(doc_of):
    return lambda conn, body: conn.sendall(http_reply(json.dumps(doc_of(json.loads(body)))))


def status(code: str, body: str):
    return lambda conn, body_: conn.sendall(http_reply(body, code))


def malformed(conn, body):
    conn.sendall(http_reply('{"outputs": [oops'))


def reset_mid_body(conn, body):
    conn.sendall(http_reply("x" * 200)[:-180])  # the headers promise 200 bytes; 20 arrive
    time.sleep(0.02)
    reset(conn)
    conn.close()  # RST now, mid-body


def slow(conn, body):
    time.sleep(1.5)


# (mode, protocol) -> (script, what the provenance must say)
MODES = {
    ("http-4xx", "v2"): (status("400 Bad Request", '{"error": "input text: bad datatype"}'), "HTTP 400 .*bad datatype"),
    ("http-5xx", "v2"): (status("500 Internal Server Error", '{"error": "GPU on fire"}'), "HTTP 500 .*GPU on fire"),
    ("http-503", "v2"): (status("503 Service Unavailable", '{"error": "busy"}'), r"HTTP 503 .*busy \(after 2 tries\)"),
    ("malformed-json", "v2"): (malformed, "not valid JSON"),
    ("wrong-shape", "v2"): (ok(lambda r: v2_doc(r, shape=[2])), r"shape \[2\], expected \[1\]"),
    ("wrong-datatype", "v2"): (ok(lambda r: v2_doc(r, conf_type="BYTES")), "output 'confidence': datatype 'BYTES'"),
    ("label-outside-set", "v2"): (ok(lambda r: v2_doc(r, label="launch_rocket")), "'launch_rocket'.* not in the label set"),
    ("reset-mid-body", "v2"): (reset_mid_body, "dropped mid-reply"),
    ("slow", "v2"): (slow, r"no (complete )?reply .* within 0\.[234]\d* s"),
    ("http-4xx", "openai"): (status("400 Bad Request", '{"error": {"message": "max_tokens too large", "type": "x"}}'),
                             "HTTP 400 .*max_tokens too large"),
    ("http-5xx", "openai"): (status("500 Internal Server Error", '{"error": {"message": "overloaded"}}'),
                             "HTTP 500 .*overloaded"),
    ("http-503", "openai"): (status("503 Service Unavailable", "busy"), r"HTTP 503 .*busy \(after 2 tries\)"),
    ("malformed-json", "openai"): (malformed, "not valid JSON"),
    ("wrong-shape", "openai"): (ok(lambda r: {"id": "x", "object": "chat.completion", "choices": []}),
                                "'choices' must be a non-empty list"),
    ("wrong-datatype", "openai"): (ok(lambda r: chat_doc(42)), "content must be a string, got int"),
    ("label-outside-set", "openai"): (ok(lambda r: chat_doc("I think it is transfer.")),
                                      "'I think it is transfer.'.* not in the label set"),
    ("reset-mid-body", "openai"): (reset_mid_body, "dropped mid-reply"),
    ("slow", "openai"): (slow, r"no (complete )?reply .* within 0\.[234]\d* s"),
}


def open_eco(tmp_path, protocol: str, url: str):
    folder = with_remote(make_fake_ecology(tmp_path / "eco", policy=SEND_REMOTE),
                         RemoteSpec(protocol=protocol, url=url, model="g", timeout_ms=2000.0))
    return edge_eco.open(folder)


def local_answer(eco):
    return eco.answer(TEXT, local_only=True)


def check_unavailable(eco, needle: str):
    local = local_answer(eco)  # cold loads (and their load-time checks) before the timed request
    t0 = time.monotonic()
    a = eco.answer(TEXT, deadline_ms=DEADLINE_MS)
    elapsed_ms = (time.monotonic() - t0) * 1e3
    assert a.path == "unavailable"
    assert (a.label, a.confidence) == (local.label, local.confidence)
    assert elapsed_ms < DEADLINE_MS + 150, f"took {elapsed_ms:.0f} ms, deadline {DEADLINE_MS} ms"

    assert re.search(needle, a.provenance["remote"]["error"]), a.provenance["remote"]
    return a


@pytest.mark.parametrize("mode, protocol", sorted(MODES))
def test_failure_mode_answers_locally(tmp_path, mode, protocol):
    script, needle = MODES[(mode, protocol)]
    srv = RawServer(script)
    url = srv.url + ("/v1" if protocol == "openai" else "")
    try:
        with open_eco(tmp_path, protocol, url) as eco:
            a = check_unavailable(eco, needle)
    finally:
        srv.close()
    assert srv.connections >= 1  # the failure really crossed a socket
    kind = "RemoteUnavailable" if mode in ("slow", "reset-mid-body") else "Remote"
    assert a.provenance["remote"]["error"].startswith(kind)


@pytest.mark.parametrize("protocol", ["v2", "openai"])
def test_server_down_connection_refused(tmp_path, protocol):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connect() is refused
    with open_eco(tmp_path, protocol, f"http://127.0.0.1:{port}/v1") as eco:
        a = check_unavailable(eco, "connection refused")
    assert a.provenance["remote"]["error"].startswith("RemoteUnavailable")


@pytest.mark.parametrize("protocol", ["v2", "openai"])
def test_breaker_opens_and_then_costs_no_socket(tmp_path, protocol):
    srv = RawServer(status("500 Internal Server Error", '{"error": "down"}'))
    try:
        with open_eco(tmp_path, protocol, srv.url + "/v1") as eco:
            for _ in range(5):
                eco.answer(TEXT, deadline_ms=DEADLINE_MS)
            sent = len(srv.bodies)
            t0 = time.perf_counter()
            a = eco.answer(TEXT, deadline_ms=DEADLINE_MS)
            took_ms = (time.perf_counter() - t0) * 1e3
    finally:
        srv.close()
    assert sent == 5 and len(srv.bodies) == 5  # the sixth request never reached the server
    assert a.path == "unavailable" and "circuit open" in a.provenance["remote"]["error"]
    assert took_ms < 50

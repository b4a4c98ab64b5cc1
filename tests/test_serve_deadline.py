"""The request's ``deadline_ms`` on the server bounds queueing and the batch's compute; the
overload replies say what was exceeded (capacity vs the deadline while queued)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from edge_eco.serve import InferenceServer
from tests.test_serve_load import INFER, VecEco, call, texts


class SlowEco(VecEco):
    """Every text takes ``per_text_s`` to answer."""

    def __init__(self, per_text_s: float) -> None:
        super().__init__()
        self.per_text_s, self.answered = per_text_s, 0

    def answer(self, text, *, deadline_ms=None, local_only=False):
        time.sleep(self.per_text_s)
        self.answered += 1
        return super().answer(text, deadline_ms=deadline_ms, local_only=local_only)


def test_a_batch_past_its_deadline_is_504_and_stops_early():
    eco = SlowEco(0.02)
    with InferenceServer(eco) as srv:
        t0 = time.monotonic()
        status, doc, _ = call(srv.port, "POST", INFER, texts(*["hello"] * 40, parameters={"deadline_ms": 50}))
        took_s = time.monotonic() - t0
        assert status == 504 and "deadline_ms 50 passed after" in doc["error"] and "of 40 texts" in doc["error"]
        assert eco.answered < 10 and took_s < 0.4  # not 40 x 20 ms
        status, doc, _ = call(srv.port, "POST", INFER, texts("hello", "hi", parameters={"deadline_ms": 1000}))
        assert status == 200 and doc["outputs"][0]["data"] == ["short", "short"]


def test_overload_messages_say_what_was_exceeded():
    eco = VecEco()
    eco.gate = threading.Event()
    with InferenceServer(eco, max_concurrent=1, max_queue=1) as srv, ThreadPoolExecutor(4) as pool:
        first = pool.submit(call, srv.port, "POST", INFER, texts("a", "b", "c", "d"))
        while eco.running < 1:
            time.sleep(0.005)
        status, doc, _ = call(srv.port, "POST", INFER, texts("e", parameters={"deadline_ms": 60}))
        assert status == 504 and "deadline_ms 60 passed while queued" in doc["error"], doc
        second = pool.submit(call, srv.port, "POST", INFER, texts("f"))  # waits in the queue
        time.sleep(0.05)
        status, doc, resp = call(srv.port, "POST", INFER, texts("g"))
        assert status == 503 and resp.getheader("Retry-After") == "1"
        assert "at capacity: 1 request running and 1 queued" in doc["error"], doc
        eco.gate.set()
        assert first.result()[0] == 200 and second.result()[0] == 200

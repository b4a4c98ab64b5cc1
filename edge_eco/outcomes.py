"""The ecology's recorder: answers and feedback into the outcome store, challengers in shadow.

On the request path :meth:`Recorder.record` only puts a closure on the store's bounded queue
(and, for a sampled request, a job on the shadow queue); hashing, serialisation and the SQLite
write happen in the store's writer thread, challenger runs in the shadow thread.

Shadow evaluation: a challenger registered for capability C (a model id) runs on requests whose
route ranked C among its candidates, sampled at ``shadow_rate``. The shadow thread runs the
champion and the challenger on the same text and records both answers as a pair. Its budget is
a CPU share: when the shadow thread's CPU time exceeds ``cpu_share`` of the wall time since it
started, sampled requests are skipped (counted) until it is back under. Every challenger
registered for a capability is shadowed (they share the one budget); a challenger that fails
(raises) is counted per challenger in the ``shadow_errors`` table, shown by ``population status``.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from . import backends
from ._native import Featurizer
from .inputs import hashed_feeds
from .errors import RequestError
from .judges import Vote, calibrated_vote
from .manifest import ModelEntry
from .store import Store


@dataclass(frozen=True)
class Challenger:
    """A challenger model: its manifest entry and the folder holding its files."""

    entry: ModelEntry
    folder: Path

    @property
    def capability(self) -> str:
        """The model id it would replace."""
        return self.entry.id


def right(entry: ModelEntry, vote_label: str, declined: bool, truth: str) -> bool:
    """Whether a model's answer is right for a request whose true label is ``truth``.

    A model is right when it answers the true label, or, when the true label is outside its own
    labels, when it declines (or answers the reject label).
    """
    own = set(entry.labels) - {entry.decline_label}
    if truth in own:
        return not declined and vote_label == truth
    return declined or vote_label not in own


class Shadow:
    """Runs challengers beside their champions on sampled traffic, within a CPU budget."""

    def __init__(self, eco: Any, store: Store, challengers: list[Challenger], *, rate: float, cpu_share: float,
                 seed: int = 0, queue_jobs: int = 256) -> None:
        self._eco, self._store = eco, store
        self._by_cap: dict[str, list[Challenger]] = {}
        for c in challengers:
            self._by_cap.setdefault(c.capability, []).append(c)
        self._sessions = {(c.capability, c.entry.version): backends.open_model(
            c.entry.backend, c.folder / c.entry.file.path, output=c.entry.output, optimize=False,
            max_run_ms=eco.manifest.policy.max_run_ms) for c in challengers}
        self._champion_ids = {c.capability: eco._model_ids.get(c.capability, "?") for c in challengers}
        self._featurizer = Featurizer(eco.manifest.featurizer)
        self._rate, self._share = rate, cpu_share
        self._rng = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_jobs)
        self.counts = {"offered": 0, "run": 0, "skipped_budget": 0, "dropped_full": 0}
        self._busy_s, self._t0 = 0.0, time.monotonic()
        self._thread = threading.Thread(target=self._run, name="edge_eco-shadow", daemon=True)
        self._thread.start()

    def offer(self, answer: Any, text: str | bytes) -> None:
        """Consider one answered request for shadow evaluation (cheap; never blocks)."""
        cands = answer.provenance.get("route", {}).get("candidates", ())
        caps = [c for c in cands if c in self._by_cap]
        if not caps or self._rng.random() >= self._rate:
            return
        self.counts["offered"] += 1
        if self._busy_s > self._share * (time.monotonic() - self._t0):
            self.counts["skipped_budget"] += 1
            return
        try:
            self._queue.put_nowait((answer.provenance["request_id"], text, caps))
        except queue.Full:
            self.counts["dropped_full"] += 1

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            t = time.thread_time()
            request_id, text, caps = job
            for cap in caps:
                for ch in self._by_cap[cap]:
                    try:
                        self._pair(request_id, text, ch)
                    except Exception as exc:  # a failing challenger must never disturb the ecology
                        self.counts["errors"] = self.counts.get("errors", 0) + 1
                        self._store.submit("shadow_error", (cap, ch.entry.version, f"{type(exc).__name__}: {exc}"[:300],
                                                            time.time()))
            self._busy_s += time.thread_time() - t
            self.counts["run"] += 1
            self._queue.task_done()

    def _pair(self, request_id: str, text: str | bytes, ch: Challenger) -> None:
        cap = ch.capability
        t0 = time.perf_counter()
        champ = self._eco.predict_with(cap, text)
        t1 = time.perf_counter()
        data = text.encode("utf-8") if isinstance(text, str) else text
        logits = self._sessions[(cap, ch.entry.version)].run(hashed_feeds(*self._featurizer(data)))
        vote = calibrated_vote(ch.entry, logits, self._eco.manifest.reject_label)
        t2 = time.perf_counter()
        self._store.submit("shadow", (request_id, cap, self._champion_ids[cap],
                                      f"{ch.entry.version}:{ch.entry.file.sha256[:12]}", _code(champ), _code(vote),
                                      round((t1 - t0) * 1e6, 1), round((t2 - t1) * 1e6, 1), time.time()))

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait until every queued shadow job has run (tests, batch jobs)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Finish queued jobs and stop the thread."""
        self._queue.put(None)
        self._thread.join(30.0)


def _code(v: Vote) -> str:
    """A vote as stored: its label, or ``~label`` when the model declined."""
    return f"~{v.label}" if v.declined else v.label


def decode_vote(code: str) -> tuple[str, bool]:
    """(label, declined) of a stored vote code."""
    return (code[1:], True) if code.startswith("~") else (code, False)


class Recorder:
    """Records an ecology's answers and feedback in a :class:`Store` (and feeds a :class:`Shadow`).

    Args:
        store: the outcome store (closed with the recorder).
        store_text: keep the raw request text (otherwise only its sha256).
        shadow: the shadow evaluator, or None.
    """

    def __init__(self, store: Store, *, store_text: bool = False, shadow: Shadow | None = None,
                 recent_ids: int = 65_536) -> None:
        self.store, self.shadow, self._store_text = store, shadow, store_text
        # ids recorded lately (their rows may still be queued): feedback for them needs no query
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self._recent_max = recent_ids

    def record(self, answer: Any, text: str | bytes) -> None:
        """Queue one answered request (called by ``Ecology.answer``)."""
        ts = time.time()
        self.store.submit("outcome", lambda: _outcome_row(answer, text, ts, self._store_text))
        rid = answer.provenance["request_id"]
        self._recent.add(rid)
        self._recent_order.append(rid)
        if len(self._recent_order) > self._recent_max:
            self._recent.discard(self._recent_order.popleft())
        if self.shadow is not None:
            self.shadow.offer(answer, text)

    def feedback(self, request_id: str, label: str) -> None:
        """Queue the true label of a recorded request (acknowledged at the next ``flush``).

        Repeated feedback for one request: the last label wins.

        Raises:
            RequestError: ``request_id`` is not a string, or no outcome with that id was recorded
                (or it was already removed by retention).
        """
        if not isinstance(request_id, str):
            raise RequestError(f"request_id must be a string, not {type(request_id).__name__}")
        if request_id not in self._recent and not self.store.query(
                "SELECT 1 FROM outcomes WHERE request_id=?", (request_id,)):
            raise RequestError(f"no recorded request {request_id!r} (unknown, or removed by retention)")
        self.store.submit("feedback", (request_id, label, time.time()))

    def flush(self) -> None:
        """Run queued shadow jobs, then commit everything queued (see Store.flush)."""
        if self.shadow is not None:
            self.shadow.drain()
        self.store.flush()

    def close(self) -> None:
        """Stop the shadow, commit what is queued and close the store."""
        if self.shadow is not None:
            self.shadow.close()
        self.store.close()


def _outcome_row(answer: Any, text: str | bytes, ts: float, store_text: bool) -> tuple:
    data = text.encode("utf-8") if isinstance(text, str) else text
    prov = answer.provenance
    return (prov["request_id"], ts, answer.path, answer.label, float(answer.confidence),
            hashlib.sha256(data).hexdigest(), data.decode("utf-8") if store_text else None,
            json.dumps(prov.get("models", {}), sort_keys=True), prov.get("latency_us", {}).get("total"),
            msgpack.packb(prov, use_bin_type=True, default=str))


def export_batch(store: Store, after_rowid: int = 0, limit: int = 1000) -> tuple[bytes, int]:
    """A msgpack batch of outcomes (with feedback labels) after ``after_rowid``, for a fleet collector.

    The first batch of an export (``after_rowid == 0``) first runs a full ``quick_check`` of the file.

    Returns:
        (the msgpack bytes, the last rowid in the batch: pass it as ``after_rowid`` next time).
    """
    if after_rowid == 0:
        store.check()
    rows = store.query(
        "SELECT o.rowid, o.request_id, o.ts, o.path, o.label, o.confidence, o.text_sha256, o.models, o.total_us,"
        " o.provenance, f.label FROM outcomes o LEFT JOIN feedback f USING (request_id)"
        " WHERE o.rowid > ? ORDER BY o.rowid LIMIT ?", (after_rowid, limit))
    keys = ("request_id", "ts", "path", "label", "confidence", "text_sha256", "models", "total_us", "provenance",
            "feedback")
    out = [dict(zip(keys, r[1:])) for r in rows]
    for o in out:
        o["provenance"] = msgpack.unpackb(o["provenance"], raw=False)
        o["models"] = json.loads(o["models"])
    last = rows[-1][0] if rows else after_rowid
    return msgpack.packb({"schema": 1, "after_rowid": after_rowid, "last_rowid": last, "outcomes": out},
                         use_bin_type=True), last

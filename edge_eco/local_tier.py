"""The local tier of the request path: the routed candidates answer a request, one directly when
the route is confident, else several in parallel (a coalition, collected within a timeout); the
local generalist when no specialist can; the judge (:mod:`edge_eco.judges`, pure) picks the answer.
Shell: a thread pool, and model sessions used through the residency manager.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Mapping

from . import backends
from .errors import BackendError, BudgetError, EdgeEcoError, InferenceError, IntegrityError
from .inputs import Feeds
from .judges import Vote, calibrated_vote, judge, settle
from .manifest import Manifest, Policy
from .policy import RISK_LEVELS, risk_allows
from .residency import Residency

# A model that cannot load or run (IntegrityError: a file changed after open): the request goes on
# without it, and it stands in the judge as a decline with no confidence (see LocalTier.answer).
MODEL_FAILURES = (BackendError, BudgetError, IntegrityError)
_SHARED_FEEDS = ("hashed-text", "dense-vector")  # inputs computed once per request for every model


class Excluded(EdgeEcoError):
    """The request's path needs a model the device plan excludes (args[0]: its id)."""


class LocalTier:
    """Runs the models of one ecology and judges their calibrated votes. Call :meth:`close`.

    Args:
        manifest: the ecology's manifest (entries and reject label).
        residency: the residency manager that loads and keeps the models.
        adapters: each ``text-tokens`` model's input adapter (filled as models load).
        excluded: models the device plan excludes.
        workers: threads for coalition members.
    """

    def __init__(self, manifest: Manifest, residency: Residency,
                 adapters: Mapping[str, Callable[[str], Feeds]], excluded: frozenset[str], workers: int) -> None:
        self._manifest, self._residency, self._adapters = manifest, residency, adapters
        self._entries = {m.id: m for m in manifest.models}
        self._excluded = excluded
        generalists = [m.id for m in manifest.models
                       if m.role == "generalist" and m.input in ("hashed-text", "dense-vector")]
        self._generalist = generalists[0] if generalists else None
        # risk levels whose requests the local generalist may answer (when every specialist declines)
        self._generalist_for = frozenset(r for r in RISK_LEVELS if self._generalist
                                         and risk_allows(self._entries[self._generalist].risk, r))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge_eco-coalition")

    def vote(self, model_id: str, text: str, hashed: Feeds | None) -> tuple[Vote, float]:
        """One model's calibrated vote on a request.

        Args:
            model_id: the model to run.
            text: the request's text (read by models with their own input adapter).
            hashed: the feeds shared by every ``hashed-text`` or ``dense-vector`` model, or None.
        Returns:
            ``(vote, microseconds)``, the load (on a miss) included.
        Raises:
            Excluded: the device plan excludes ``model_id``.
            BackendError, BudgetError, IntegrityError: the model cannot load or run.
        """
        if model_id in self._excluded:
            raise Excluded(model_id)
        entry = self._entries[model_id]
        t0 = time.perf_counter()
        with self._residency.use(model_id) as session:
            feeds = hashed if entry.input in _SHARED_FEEDS else self._adapters[model_id](text)
            logits = session.run(feeds)
        vote = calibrated_vote(entry, logits, self._manifest.reject_label)
        return vote, (time.perf_counter() - t0) * 1e6

    def _vote_until(self, deadline: int | None, model_id: str, text: str, hashed: Feeds | None) -> tuple[Vote, float]:
        """:meth:`vote` in a pool thread, its runs stopped at the request's ``deadline``."""
        before = backends.set_run_deadline(deadline)
        try:
            return self.vote(model_id, text, hashed)
        finally:
            backends.set_run_deadline(before)

    def try_vote(self, model_id: str, text: str, hashed: Feeds | None, prov: dict) -> tuple[Vote, float] | None:
        """:meth:`vote`, but a model that cannot load or run is recorded in ``prov["model_errors"]``
        and None returned, so the request falls back to the next candidate or the generalist."""
        try:
            return self.vote(model_id, text, hashed)
        except MODEL_FAILURES as exc:
            prov.setdefault("model_errors", {})[model_id] = f"{type(exc).__name__}: {exc}"
            return None

    def coalition(self, ids: list[str], text: str, hashed: Feeds | None, prov: dict,
                  timeout_s: float) -> list[Vote]:
        """Run ``ids`` in parallel (the first in this thread) and collect votes within the timeout.

        Args:
            ids: the coalition, best-routed first.
            text, hashed: the request, as for :meth:`vote`.
            prov: the request's provenance; ``model_us``, and ``model_errors`` and
                ``coalition_dropped`` for members that failed or were late, are set.
            timeout_s: how long to wait for the members run in the pool.
        Returns:
            The votes that came in time.
        Raises:
            Excluded: the device plan excludes one of ``ids``.
        """
        if self._excluded.intersection(ids):
            raise Excluded(next(m for m in ids if m in self._excluded))
        deadline = backends.run_deadline()  # the request's, for the members run in the pool too
        futures = {self._pool.submit(self._vote_until, deadline, m, text, hashed): m for m in ids[1:]}
        first = self.try_vote(ids[0], text, hashed, prov)
        done, late = wait(futures, timeout=timeout_s)
        results = ([first] if first else []) + [f.result() for f in futures if f in done and f.exception() is None]
        errors = []
        for f in (f for f in futures if f in done and f.exception() is not None):
            exc = f.exception()
            if isinstance(exc, MODEL_FAILURES):  # recorded per model, as try_vote records the first
                prov.setdefault("model_errors", {})[futures[f]] = f"{type(exc).__name__}: {exc}"
            else:
                errors.append(str(exc))
        if late or errors:
            prov["coalition_dropped"] = {"late": len(late), "errors": errors}
        prov["model_us"] = {v.model_id: round(us, 1) for v, us in results}
        return [v for v, _ in results]

    def answer(self, ids: list[str], route_confidence: float, text: str, hashed: Feeds | None, prov: dict,
               policy: Policy, max_risk: str) -> tuple[list[Vote], Vote, str]:
        """The local tier's answer to one routed request.

        Args:
            ids: the candidates, best-routed first.
            route_confidence: the router's confidence in ``ids[0]``; at ``policy.direct_threshold``
                or above, ``ids[0]`` answers alone unless it declines or fails.
            text, hashed: the request, as for :meth:`vote`.
            prov: the request's provenance; ``model_us``, ``model_errors``, ``coalition_dropped`` and
                ``no_features`` are set.
            policy: the ecology's policy (thresholds, coalition size and timeout).
            max_risk: the request's highest risk level (whether the local generalist may answer).
        Returns:
            ``(votes, best, path)``: every vote cast, the judged answer, and ``direct`` or ``coalition``.
        Raises:
            InferenceError: no model could answer.
            Excluded: the answer needs a model the device plan excludes.
        """
        size, timeout_s, reject = policy.coalition_size, policy.coalition_timeout_ms / 1e3, self._manifest.reject_label
        first = None
        if route_confidence >= policy.direct_threshold or len(ids) == 1:
            first = self.try_vote(ids[0], text, hashed, prov)
        if first is None and "model_errors" in prov:  # it failed to load or run: the next candidates
            rest = ids[1:size + 1]
            votes, path = (self.coalition(rest, text, hashed, prov, timeout_s) if rest else []), "coalition"
        elif first is not None:
            vote, us = first
            prov["model_us"] = {ids[0]: round(us, 1)}
            votes, path = [vote], "direct"
            if vote.declined and len(ids) > 1:  # the confident route was wrong: widen
                votes += self.coalition(ids[1:size], text, hashed, prov, timeout_s)
                path = "coalition"
        else:
            votes, path = self.coalition(ids[:size], text, hashed, prov, timeout_s), "coalition"
        if not votes and max_risk in self._generalist_for and self._generalist not in prov.get("model_errors", {}):
            votes = [x[0] for x in filter(None, [self.try_vote(self._generalist, text, hashed, prov)])]
        if not votes:
            raise InferenceError(f"no model could answer: {prov.get('model_errors') or prov.get('coalition_dropped')}")
        # A routed candidate that failed stands in as a decline with no confidence (as a model the
        # device plan excludes does): its niche is unknown, so the others' declines cannot make the
        # reject label confident; the generalist and then the remote decide.
        failed = [Vote(m, reject, 0.0, declined=True) for m in prov.get("model_errors", {}) if m != self._generalist]
        best = judge(failed + votes, reject)
        if hashed is not None and "indices" in hashed and not len(hashed["indices"]):
            # No word byte at all (punctuation, symbols): no local model has evidence. Answer the
            # reject label with no confidence, so the remote generalist is asked when allowed.
            best = Vote(best.model_id, reject, 0.0, declined=True)
            prov["no_features"] = True
        elif best.declined and max_risk in self._generalist_for and all(v.model_id != self._generalist for v in votes):
            # Every specialist asked said "not mine": the local generalist is asked too, and the
            # judge compares calibrated confidences: the generalist's answer against the reject
            # label backed by the least confident decline.
            asked = self.try_vote(self._generalist, text, hashed, prov)
            if asked is not None:
                vote, us = asked
                votes.append(vote)
                prov.setdefault("model_us", {})[self._generalist] = round(us, 1)
                best, path = settle(best, vote), "coalition"
        return votes, best, path

    def close(self) -> None:
        """Wait for coalition members still running, then stop the threads."""
        self._pool.shutdown(wait=True)

"""The embeddable runtime: ``edge_eco.open(path)`` -> :class:`Ecology`; ``eco.answer(text)``.

Request path (DESIGN.md section 3): featurize once (C) -> eligible candidates (pure) -> route
(pure) -> the top model directly when the route is confident, else the top-k in parallel and
the judge -> the remote generalist when the best calibrated confidence is under the fallback
threshold and policy allows -> Answer with provenance.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import backends
from .artifacts import probe
from .backends import isolated
from ._native import Featurizer, RouterKernel
from .bundle import read_bundle
from .errors import (BackendError, BudgetError, EdgeEcoError, FallbackError, InferenceError, IntegrityError,
                     ManifestError, RequestError,
                     RoutingError)
from .dense import describe as describe_dense
from .inputs import Feeds, dense_adapter, hashed_feeds, token_adapter
from .judges import Vote, calibrated_vote, judge, settle
from .manifest import Manifest, RemoteSpec
from .policy import RISK_LEVELS, RequestContract, deadline_mask, eligible_mask, risk_allows, validate_text
from .remote_policy import redact, remote_block_reason
from .residency import SESSION_OVERHEAD_BYTES, Residency
from .residency.footprint import drop_file_pages, read_footprint
from .residency.meter import ANON_PER_FILE_BYTE
from .deferral import Deferral, RemoteRateController
from .router import DeferralWeights, Route, RouterWeights, route, route_reference
from .routerfile import read_router

PATHS = ("direct", "coalition", "remote", "unavailable")


@dataclass(frozen=True)
class Answer:
    """The ecology's answer to one request.

    ``path`` is one of ``direct`` (one local model), ``coalition`` (several, judged),
    ``remote`` (the remote generalist) or ``unavailable`` (the remote was wanted but could not
    answer; this is the best local answer). ``provenance`` says which models, scores and
    latencies led to it.
    """

    label: str
    confidence: float
    path: str
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)


class Ecology:
    """A loaded population of models answering requests under its manifest's policy.

    Thread-safe. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, root: Path, manifest: Manifest, *, remote_url: str | None = None,
                 remote_token: str | None = None, budget_bytes: int | None = None,
                 use_native: bool | None = None, remote_client: Any = None,
                 remote_protocol: str | None = None, remote_model: str | None = None,
                 excluded: frozenset[str] = frozenset(), cold_state: bool = True) -> None:
        self.root, self.manifest = root, manifest
        # Models a device plan excludes (edge_eco.plan): a request whose path needs one goes remote.
        self._excluded = frozenset(excluded)
        self._pins = ExitStack()
        self.name, self.version = manifest.name, manifest.version
        self.labels = manifest.labels
        self.policy = manifest.policy
        self._label_set = frozenset(self.labels)
        self._entries = {m.id: m for m in manifest.models}
        # Provenance names each model by version and content hash: "1:sha256-prefix".
        self._model_ids = {m.id: f"{m.version}:{m.file.sha256[:12]}" for m in manifest.models}
        self._featurizer = Featurizer(manifest.featurizer, use_native=use_native) \
            if manifest.featurizer else None
        self._adapters: dict[str, Callable[[str], Feeds]] = {}
        generalists = [m.id for m in manifest.models
                       if m.role == "generalist" and m.input in ("hashed-text", "dense-vector")]
        self._dense = dense_adapter(root, manifest)
        self._generalist = generalists[0] if generalists else None
        # risk levels whose requests the local generalist may answer (when every specialist declines)
        self._generalist_for = frozenset(r for r in RISK_LEVELS if self._generalist
                                         and risk_allows(self._entries[self._generalist].risk, r))
        if manifest.router is not None:
            header, arrays = read_router(root / manifest.router.file.path)
            built_for = header.get("featurizer_spec")
            if built_for is not None and built_for != _spec_dict(manifest.featurizer):
                raise IntegrityError(f"{manifest.router.file.path} was built for featurizer {built_for}, but "
                                     f"ecology.toml declares {_spec_dict(manifest.featurizer)}: the manifest "
                                     "was edited or belongs to other models")
            kind = manifest.router.kind
            expected = "deferral-linear" if kind == "correctness" else kind
            if header.get("kind") != expected:
                raise IntegrityError(f"{manifest.router.file.path} holds a {header.get('kind')!r} router; "
                                     f"ecology.toml declares kind {kind!r}")
            try:
                if kind == "correctness":  # per-model correctness, ranked by p - lambda x cost
                    self._router = DeferralWeights(arrays["weight"], arrays["scale"], arrays["bias"],
                                                   arrays["cost"])
                    self._route_mode, self._route_param = 1, manifest.router.lam
                else:  # a domain router, ranked by tempered softmax
                    self._router = RouterWeights(arrays["weight"], arrays["scale"], arrays["bias"],
                                                 manifest.router.temperature)
                    self._route_mode, self._route_param = 0, manifest.router.temperature
            except KeyError as exc:
                raise ManifestError(f"router file lacks array {exc}") from exc
            in_dim = manifest.featurizer.dim if self._dense is None else self._dense.dim
            if self._router.weight.shape != (in_dim, len(manifest.router.candidates)):
                raise ManifestError(f"router weight shape {self._router.weight.shape} does not match "
                                    f"featurizer dim {in_dim} x "
                                    f"{len(manifest.router.candidates)} candidates")
            self._candidates = manifest.router.candidates
            self._kernel = RouterKernel(self._router) if self._featurizer and self._featurizer.native else None
        else:
            self._router, self._candidates, self._kernel = None, (manifest.models[0].id,), None
            self._route_mode, self._route_param = 0, 1.0
        self._deferral = self._load_deferral(root, manifest)
        p = manifest.policy
        # The remote rule scores each local answer; above the margin it goes remote.
        self._use_deferral = p.remote_rule == "deferral"
        # Score the learned deferral even when another rule decides (bench/diagnostics only:
        # it costs ~6 us a request).
        self.trace_deferral = False
        margin = manifest.deferral.margin if self._use_deferral else 1.0 - p.fallback_threshold
        self.controller = RemoteRateController(margin, p.target_remote_rate, p.controller_gain, p.max_adjust) \
            if p.target_remote_rate > 0 else None
        self._candidate_entries = tuple(self._entries[c] for c in self._candidates)
        # The risk part of eligibility, once per contract level (the default contract: "medium").
        self._risk_masks = {r: eligible_mask(self._candidate_entries, RequestContract(max_risk=r), frozenset())
                            for r in RISK_LEVELS}
        self._risk_masks_u8 = {r: m.astype(np.uint8) for r, m in self._risk_masks.items()}
        self._default_mask = self._risk_masks[RequestContract.max_risk]
        self._default_mask_u8 = self._risk_masks_u8[RequestContract.max_risk]
        self._candidate_costs = tuple((e.id, e.cost.load_ms, e.cost.p95_us / 1e3) for e in self._candidate_entries)
        budget = manifest.budget_bytes if budget_bytes is None else budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ManifestError(f"budget_bytes must be a non-negative integer (0 = unlimited), got {budget!r}")
        if budget:
            need = max(((self._predict_bytes(m), m) for m in self._entries if m not in self._excluded),
                       default=(0, ""))  # every model excluded: nothing is loaded, no budget check
            if need[0] > budget:
                raise BudgetError(f"model {need[1]!r} needs {need[0]} bytes; the memory budget of "
                                  f"{budget} bytes cannot hold it")
        self.residency = Residency(self._load, self._predict_bytes, budget, measure=read_footprint,
                                   policy="cost_aware", cost=self._miss_cost, paths=self._model_paths,
                                   demote=drop_file_pages if cold_state else None, runtime_of=self._runtime_of,
                                   anon_cap=self._anon_cap)
        self._pool = ThreadPoolExecutor(max_workers=max(2, 2 * manifest.policy.coalition_size),
                                        thread_name_prefix="edge_eco-coalition")
        self._ids = itertools.count(1)
        # Request ids stay unique across restarts (the outcome memory keys on them).
        self._session = os.urandom(4).hex()
        self.recorder: Any = None  # set by attach_recorder (edge_eco.outcomes)
        self._remote = remote_client
        spec = manifest.remote or RemoteSpec()
        if self._remote is None and manifest.policy.remote == "allowed":
            url = remote_url or spec.url
            if url:
                from .fallback import client_for
                from .fallback.retry import RetryPolicy

                protocol = remote_protocol or spec.protocol
                self._remote = client_for(protocol, url, remote_model or spec.model or "generalist",
                                          labels=self.labels, token=remote_token,
                                          default_timeout_s=spec.timeout_ms / 1e3,
                                          retry=RetryPolicy(attempts=spec.attempts),
                                          **({"logprobs": spec.logprobs} if protocol == "openai" else {}))
        self._remote_timeout_ms = spec.timeout_ms
        self._redact = spec.redact
        self._closed = False
        self._in_flight = 0
        self.before_load: Callable[[str], None] | None = None
        self._cond = threading.Condition()

    def _load_deferral(self, root: Path, manifest: Manifest) -> Deferral | None:
        spec = manifest.deferral
        if spec is None:
            return None
        _, arrays = read_router(root / spec.file.path)
        try:
            weights = DeferralWeights(arrays["weight"], arrays["scale"], arrays["bias"],
                                      np.zeros(arrays["weight"].shape[1], np.float32))
        except KeyError as exc:
            raise ManifestError(f"{spec.file.path} lacks array {exc}") from exc
        kernel = RouterKernel(weights) if self._featurizer.native else None
        return Deferral(weights, manifest.featurizer.dim, kernel)

    # -- loading -------------------------------------------------------------------------------
    def _predict_bytes(self, model_id: str) -> int:
        """Measured resident bytes from the manifest, else the model's files plus a session."""
        entry = self._entries[model_id]
        if entry.cost.resident_bytes:
            return entry.cost.resident_bytes
        file_bytes = self._file_bytes(model_id)
        # LiteRT's default XNNPACK delegate packs the weights into private memory next to the
        # mapped file (tools/bench_backends.py): reserve both until the first load is measured.
        return file_bytes * (2 if entry.backend == "tflite" else 1) + SESSION_OVERHEAD_BYTES \
            + (isolated.WORKER_OVERHEAD_BYTES if entry.risk == "high" else 0)

    def _file_bytes(self, model_id: str) -> int:
        entry = self._entries[model_id]
        paths = [entry.file.path] + [f.path for f in self.manifest.files
                                     if f.path.startswith(entry.file.path + ".")]  # x.onnx.data
        try:
            return sum((self.root / p).stat().st_size for p in paths)
        except OSError as exc:  # removed after open: refused like a file that changed (edge_eco.ondisk)
            raise IntegrityError(f"{self.root.name}: {Path(exc.filename or '?').name!r} cannot be read at load "
                                 f"({exc.strerror}): it was removed or replaced after the ecology was opened") from exc

    def _runtime_of(self, model_id: str) -> str:
        return self._entries[model_id].backend

    def _anon_cap(self, model_id: str) -> int:
        """The most anonymous bytes one load is charged (residency.meter: weights copied once
        plus a session's buffers; larger readings are other threads' growth)."""
        return self._file_bytes(model_id) * ANON_PER_FILE_BYTE + SESSION_OVERHEAD_BYTES

    def _model_paths(self, model_id: str) -> set[str]:
        """Absolute paths of a model's files (its graph and any external-data file)."""
        entry = self._entries[model_id]
        return {str((self.root / p).resolve()) for p in [entry.file.path] + [
            f.path for f in self.manifest.files if f.path.startswith(entry.file.path + ".")]}

    def _miss_cost(self, model_id: str) -> tuple[float, float]:
        """(reload ms, fallback ms) of a miss: measured load time when there is one."""
        times = self.residency.stats.load_times.get(model_id)
        load_ms = times if times is not None else (self._entries[model_id].cost.load_ms or 1.0)
        return load_ms, 0.0

    def _load(self, model_id: str) -> backends.Session:
        entry = self._entries[model_id]
        if self.before_load is not None:
            self.before_load(model_id)  # e.g. hash the files again (signed populations)
        if entry.input == "text-tokens" and model_id not in self._adapters:
            self._adapters[model_id] = token_adapter(self.root, entry)
        if entry.risk == "high":  # in a sandboxed worker process (no network, memory/CPU limits)
            session = isolated.open(self.root / entry.file.path, backend=entry.backend, output=entry.output,
                                    optimize=entry.input != "hashed-text")
        else:
            session = backends.open_model(entry.backend, self.root / entry.file.path, output=entry.output,
                                          optimize=entry.input != "hashed-text")
        try:  # one run on the manifest's input contract before the model is marked ready
            if entry.input == "hashed-text":
                feeds = hashed_feeds(*self._featurizer(b"probe"))
            elif entry.input == "dense-vector":
                feeds = {"x": np.zeros((1, self._dense.dim), np.float32)}  # the mean window
            else:
                feeds = self._adapters[model_id]("probe")
            probe(session, feeds, len(entry.labels), entry.file.path)
        except BaseException:
            session.close()
            raise
        return session

    # -- running models ------------------------------------------------------------------------
    def _vote(self, model_id: str, text: str, hashed: Feeds | None) -> tuple[Vote, float]:
        if model_id in self._excluded:
            raise _Excluded(model_id)
        entry = self._entries[model_id]
        t0 = time.perf_counter()
        with self.residency.use(model_id) as session:
            feeds = hashed if entry.input in _SHARED_FEEDS else self._adapters[model_id](text)
            logits = session.run(feeds)
        vote = calibrated_vote(entry, logits, self.manifest.reject_label)
        return vote, (time.perf_counter() - t0) * 1e6

    def _try_vote(self, model_id: str, text: str, hashed: Feeds | None, prov: dict) -> tuple[Vote, float] | None:
        """``_vote``, but a model that cannot load or run is recorded in ``prov["model_errors"]``
        and None returned, so the request falls back to the next candidate or the generalist."""
        try:
            return self._vote(model_id, text, hashed)
        except _MODEL_FAILURES as exc:
            prov.setdefault("model_errors", {})[model_id] = f"{type(exc).__name__}: {exc}"
            return None

    def predict_with(self, model_id: str, text: str | bytes) -> Vote:
        """One model's calibrated answer to ``text`` (for baselines and diagnostics)."""
        entry = self.manifest.model(model_id)
        if self._dense is not None:
            return self._vote(model_id, "", self._dense.feeds(text))[0]
        data = validate_text(text, self.policy.max_text_bytes)
        hashed = hashed_feeds(*self._featurizer(data)) if entry.input == "hashed-text" else None
        return self._vote(model_id, data.decode("utf-8"), hashed)[0]

    def model_logits(self, model_id: str, text: str | bytes) -> np.ndarray:
        """One model's raw (uncalibrated) logits for ``text``, in its label order."""
        entry = self.manifest.model(model_id)
        if self._dense is not None:
            with self.residency.use(model_id) as session:
                return np.asarray(session.run(self._dense.feeds(text))).reshape(-1)
        data = validate_text(text, self.policy.max_text_bytes)
        hashed = hashed_feeds(*self._featurizer(data)) if entry.input == "hashed-text" else None
        with self.residency.use(model_id) as session:
            feeds = hashed if hashed is not None else self._adapters[model_id](data.decode("utf-8"))
            return np.asarray(session.run(feeds)).reshape(-1)

    def route_candidates(self, text: str | bytes) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """The router's ranking of candidate models for ``text`` (ids best first, probabilities); for a
        dense ecology ``text`` is the sensor window, routed as :meth:`answer` routes it."""
        if self._dense is not None:
            r = route(self._router, self._dense.indices, self._dense.feeds(text)["x"][0], self._default_mask)
            return tuple(self._candidates[i] for i in r.order), r.probs
        data = validate_text(text, self.policy.max_text_bytes)
        r = self._featurize_route(data, None)[1]
        return tuple(self._candidates[i] for i in r.order), r.probs

    def _coalition(self, ids: list[str], text: str, hashed: Feeds | None,
                   prov: dict) -> list[Vote]:
        """Run ``ids`` in parallel (the first in this thread) and collect votes within the timeout."""
        if self._excluded.intersection(ids):
            raise _Excluded(next(m for m in ids if m in self._excluded))
        futures = {self._pool.submit(self._vote, m, text, hashed): m for m in ids[1:]}
        first = self._try_vote(ids[0], text, hashed, prov)
        done, late = wait(futures, timeout=self.policy.coalition_timeout_ms / 1e3)
        results = ([first] if first else []) + [f.result() for f in futures if f in done and f.exception() is None]
        errors = []
        for f in (f for f in futures if f in done and f.exception() is not None):
            exc = f.exception()
            if isinstance(exc, _MODEL_FAILURES):  # recorded per model, as _try_vote records the first
                prov.setdefault("model_errors", {})[futures[f]] = f"{type(exc).__name__}: {exc}"
            else:
                errors.append(str(exc))
        if late or errors:
            prov["coalition_dropped"] = {"late": len(late), "errors": errors}
        prov["model_us"] = {v.model_id: round(us, 1) for v, us in results}
        return [v for v, _ in results]

    # -- the request path ----------------------------------------------------------------------
    @property
    def feature_dim(self) -> int | None:
        """Length of a flattened sensor window for a dense ecology (None for a text ecology)."""
        return None if self._dense is None else self._dense.spec.samples * self._dense.spec.axes

    @property
    def takes(self) -> str:
        """What one request is, in words: ``text``, or e.g. ``vectors of 24 floats`` (for messages)."""
        return "text" if self._dense is None else describe_dense(self._dense.spec)

    def answer_features(self, row: Any, *, deadline_ms: float | None = None,
                        local_only: bool = False, max_risk: str = "medium") -> Answer:
        """Answer one flattened sensor window (``feature_dim`` floats, row-major [samples, axes]);
        what ``edge-eco serve`` calls for an FP32 ``features`` input.

        Raises:
            RequestError: a text ecology, or a row of the wrong length or with non-finite values.
        """
        if self._dense is None:
            raise RequestError(f"{self.name} takes text, not feature vectors")
        a = np.asarray(row)  # dtype checked by validate_window (real numbers only)
        if a.shape != (self.feature_dim,):
            raise RequestError(f"expected {self.feature_dim} features ({self._dense.spec.samples} samples x "
                               f"{self._dense.spec.axes} axes), got shape {list(a.shape)}")
        return self.answer(a.reshape(self._dense.spec.samples, self._dense.spec.axes),
                           deadline_ms=deadline_ms, local_only=local_only, max_risk=max_risk)

    def answer(self, text: str | bytes, *, deadline_ms: float | None = None,
               local_only: bool = False, max_risk: str = "medium") -> Answer:
        """Answer one request.

        Args:
            text: the request (str, or UTF-8 bytes).
            deadline_ms: time budget for the whole answer; bounds the remote call's timeout.
            local_only: never send this request off the device.
            max_risk: the highest manifest risk level that may answer ("low", "medium", "high");
                a model of risk ``high`` (run in a sandboxed worker) answers only under "high".

        Returns:
            An :class:`Answer`; with no network the best local answer (path ``unavailable``).

        Raises:
            RequestError: empty text, text over ``policy.max_text_bytes``, invalid UTF-8.
        """
        _check_options(deadline_ms, local_only, max_risk)
        with self._cond:
            if self._closed:
                raise EdgeEcoError("ecology is closed")
            self._in_flight += 1
        try:
            try:
                answer = self._answer(text, deadline_ms, local_only, max_risk)
            except _Excluded as exc:
                answer = self._answer_excluded(text, exc.args[0], deadline_ms, local_only)
            if self.recorder is not None:  # queues the outcome; the write happens off this path
                self.recorder.record(answer, text)
            return answer
        finally:
            with self._cond:
                self._in_flight -= 1
                if not self._in_flight:
                    self._cond.notify_all()

    def _answer(self, text: str | bytes, deadline_ms: float | None, local_only: bool,
                max_risk: str = "medium") -> Answer:
        t0 = time.perf_counter()
        prov: dict[str, Any] = {"request_id": f"{self.name}-{self._session}-{next(self._ids)}"}
        if self._dense is not None:  # a sensor window: standardized features, routed in numpy
            hashed = self._dense.feeds(text)
            base = self._risk_masks[max_risk]
            r = route(self._router, self._dense.indices, hashed["x"][0],
                      base if deadline_ms is None else self._mask(deadline_ms, base))
            text = ""
        else:
            if isinstance(text, (np.ndarray, list, tuple)):
                raise RequestError(f"{self.name} takes text, not vectors (got {type(text).__name__})")
            data = validate_text(text, self.policy.max_text_bytes)
            text = data.decode("utf-8")
            hashed, r = self._featurize_route(data, deadline_ms, max_risk)
        t_route = time.perf_counter()
        ids = [self._candidates[i] for i in r.order]
        if len(ids) > 1:  # the router's runners-up are a look-ahead for the residency policy
            self.residency.hint(ids[1:self.policy.coalition_size + 1])
        prov["route"] = {"candidates": ids[:self.policy.coalition_size],
                         "probs": [round(p, 4) for p in r.probs[:self.policy.coalition_size]]}
        first = None
        if r.confidence >= self.policy.direct_threshold or len(ids) == 1:
            first = self._try_vote(ids[0], text, hashed, prov)
        if first is None and "model_errors" in prov:  # it failed to load or run: the next candidates
            rest = ids[1:self.policy.coalition_size + 1]
            votes, path = (self._coalition(rest, text, hashed, prov) if rest else []), "coalition"
        elif first is not None:
            vote, us = first
            prov["model_us"] = {ids[0]: round(us, 1)}
            votes, path = [vote], "direct"
            if vote.declined and len(ids) > 1:  # the confident route was wrong: widen
                votes += self._coalition(ids[1:self.policy.coalition_size], text, hashed, prov)
                path = "coalition"
        else:
            votes, path = self._coalition(ids[:self.policy.coalition_size], text, hashed, prov), "coalition"
        if not votes and max_risk in self._generalist_for and self._generalist not in prov.get("model_errors", {}):
            votes = [x[0] for x in filter(None, [self._try_vote(self._generalist, text, hashed, prov)])]
        if not votes:
            raise InferenceError(f"no model could answer: {prov.get('model_errors') or prov.get('coalition_dropped')}")
        # A routed candidate that failed stands in as a decline with no confidence (as a model the
        # device plan excludes does): its niche is unknown, so the others' declines cannot make the
        # reject label confident; the generalist and then the remote decide.
        failed = [Vote(m, self.manifest.reject_label, 0.0, declined=True)
                  for m in prov.get("model_errors", {}) if m != self._generalist]
        best = judge(failed + votes, self.manifest.reject_label)
        if hashed is not None and "indices" in hashed and not len(hashed["indices"]):
            # No word byte at all (punctuation, symbols): no local model has evidence. Answer the
            # reject label with no confidence, so the remote generalist is asked when allowed.
            best = Vote(best.model_id, self.manifest.reject_label, 0.0, declined=True)
            prov["no_features"] = True
        elif best.declined and max_risk in self._generalist_for and all(v.model_id != self._generalist for v in votes):
            # Every specialist asked said "not mine": the local generalist is asked too, and the
            # judge compares calibrated confidences: the generalist's answer against the reject
            # label backed by the least confident decline.
            asked = self._try_vote(self._generalist, text, hashed, prov)
            if asked is not None:
                vote, us = asked
                votes.append(vote)
                prov.setdefault("model_us", {})[self._generalist] = round(us, 1)
                best, path = settle(best, vote), "coalition"
        t_local = time.perf_counter()
        prov["votes"] = [(v.model_id, v.label, round(v.confidence, 4), v.declined) for v in votes]
        prov["models"] = {v.model_id: self._model_ids[v.model_id] for v in votes}
        label, conf = best.label, best.confidence
        score = 1.0 - conf
        if self._deferral is not None and (self._use_deferral or self.trace_deferral):
            gain = self._deferral.score(hashed["indices"], hashed["values"], conf,
                                        label == self.manifest.reject_label)
            prov["remote_gain"] = round(gain, 5)
            if self._use_deferral:
                score = gain
        prov["remote_score"] = round(score, 5)
        if self.controller is not None:
            want_remote = score > self.controller.margin
            if not local_only and self.policy.remote == "allowed":
                self.controller.update(want_remote)
        elif self._use_deferral:
            want_remote = score > self.manifest.deferral.margin
        else:
            want_remote = conf < self.policy.fallback_threshold
        if want_remote:
            label, conf, path = self._fallback(text, best, path, prov, local_only, deadline_ms, t0)
        t_end = time.perf_counter()
        prov["latency_us"] = {"route": round((t_route - t0) * 1e6, 1),  # validate + featurize + route
                              "local": round((t_local - t_route) * 1e6, 1),
                              "total": round((t_end - t0) * 1e6, 1)}
        return Answer(label, conf, path, prov)

    def _answer_excluded(self, text: str | bytes, model_id: str, deadline_ms: float | None,
                         local_only: bool) -> Answer:
        """The path needs a model the device plan excludes: ask the remote; without one, the reject
        label with no confidence (the device does not serve this niche)."""
        t0 = time.perf_counter()
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        # The excluded model stands as the voter, so its niches' jurisdiction rules still apply.
        prov: dict[str, Any] = {"request_id": f"{self.name}-{next(self._ids)}", "excluded": model_id,
                                "votes": [(model_id, self.manifest.reject_label, 0.0, True)]}
        none = Vote(model_id, self.manifest.reject_label, 0.0, declined=True)
        label, conf, path = self._fallback(text, none, "unavailable", prov, local_only, deadline_ms, t0)
        prov["latency_us"] = {"total": round((time.perf_counter() - t0) * 1e6, 1)}
        return Answer(label, conf, path, prov)

    def check_models(self) -> dict[str, str]:
        """Load every model once (the backend's file checks, then one probe run on its input
        contract), one at a time within the memory budget.

        Returns:
            ``{model_id: "ErrorType: message"}`` for each model that cannot load or run (empty when
            every model works); the bundle's sha256 check does not catch these (e.g. a Git LFS
            pointer committed in place of the weights, with its own hash in the manifest).
        """
        failed = {}
        for model_id in self._entries:
            if model_id in self._excluded:
                continue
            try:
                with self.residency.use(model_id):
                    pass
            except _MODEL_FAILURES as exc:
                failed[model_id] = f"{type(exc).__name__}: {exc}"
        return failed

    def pin(self, model_ids: Sequence[str]) -> None:
        """Load ``model_ids`` now and keep them resident (never evicted) until :meth:`close`."""
        for model_id in model_ids:
            self._pins.enter_context(self.residency.use(model_id))

    def _featurize_route(self, data: bytes, deadline_ms: float | None,
                         max_risk: str = "medium") -> tuple[Feeds | None, Route]:
        """Features and route of one request: one C call when the kernel is compiled."""
        if self._kernel is None:
            hashed = hashed_feeds(*self._featurizer(data)) if self._featurizer else None
            return hashed, self._route(hashed, deadline_ms, max_risk)
        mask = self._risk_masks_u8[max_risk] if deadline_ms is None else \
            self._mask(deadline_ms, self._risk_masks[max_risk]).astype(np.uint8)
        if not mask.any():
            raise RoutingError("no model is eligible for this request")
        idx, val, order, probs = self._kernel.route_text(self._featurizer, data, mask, self._route_param,
                                                         self._route_mode)
        return hashed_feeds(idx, val), Route(tuple(order), tuple(probs))

    def _mask(self, deadline_ms: float, base: np.ndarray | None = None) -> np.ndarray:
        # A model that is not resident costs its cold load: the measured one once it has loaded
        # (and still the manifest's before), so a deadline can rule out a cold model. The static
        # parts (risk, manifest costs) are computed once (was ~50-60 us a request, rebuilt each time).
        times, resident = self.residency.stats.load_times, self.residency.resident_set()
        return deadline_mask(self._default_mask if base is None else base, [
            p95_ms if c in resident else p95_ms + max(load_ms, times.get(c, 0.0))
            for c, load_ms, p95_ms in self._candidate_costs], deadline_ms)

    def _route(self, hashed: Feeds | None, deadline_ms: float | None, max_risk: str = "medium") -> Route:
        if self._router is None:
            return Route((0,), (1.0,))
        base = self._risk_masks[max_risk]
        mask = base if deadline_ms is None else self._mask(deadline_ms, base)
        if self._route_mode == 0:
            return route(self._router, hashed["indices"], hashed["values"], mask)  # numpy path
        if not mask.any():
            raise RoutingError("no model is eligible for this request")
        d = route_reference(self._router, hashed["indices"], hashed["values"], mask, self._route_param)
        return Route(d.order, d.probs)

    def _fallback(self, text: str, best: Vote, path: str, prov: dict, local_only: bool,
                  deadline_ms: float | None, t0: float) -> tuple[str, float, str]:
        """Ask the remote generalist; on any failure keep the best local answer."""
        # The models that failed count with those that voted: a request for a niche whose
        # jurisdiction keeps it local stays local even when that niche's model could not answer.
        voters = [v[0] for v in prov.get("votes", ())] + list(prov.get("model_errors", ()))
        blocked = remote_block_reason(self.policy, local_only, (self._entries[m].niches for m in voters))
        if blocked is not None:
            prov["remote"] = {"skipped": blocked}
            return best.label, best.confidence, path
        if self._remote is None:
            prov["remote"] = {"error": "no remote generalist configured (offline)"}
            return best.label, best.confidence, "unavailable"
        timeout_ms = self._remote_timeout_ms
        if deadline_ms is not None:
            timeout_ms = min(timeout_ms, deadline_ms - (time.perf_counter() - t0) * 1e3)
        if timeout_ms < 1.0:
            prov["remote"] = {"error": "deadline leaves no time for the remote call"}
            return best.label, best.confidence, "unavailable"
        t = time.perf_counter()
        sent = redact(text, self._redact) if self._redact else text
        try:
            reply = self._remote.infer([sent], timeout_s=timeout_ms / 1e3)[0]
            if reply.label not in self._label_set:
                raise FallbackError(f"remote answered {reply.label!r}, which is not in the label set")
        except FallbackError as exc:
            prov["remote"] = {"error": f"{type(exc).__name__}: {exc}",
                              "ms": round((time.perf_counter() - t) * 1e3, 2)}
            return best.label, best.confidence, "unavailable"
        prov["remote"] = {"model": reply.model, "version": reply.model_version,
                          "ms": round((time.perf_counter() - t) * 1e3, 2), "tries": getattr(reply, "attempts", 1)}
        if self._redact:
            prov["remote"]["redacted"] = list(self._redact)
        return reply.label, reply.confidence, "remote"

    def attach_recorder(self, recorder: Any) -> None:
        """Record every answer with ``recorder.record(answer, text)`` (see edge_eco.outcomes);
        the ecology closes it on :meth:`close`."""
        self.recorder = recorder

    def feedback(self, request_id: str, label: str) -> None:
        """Record the true label of an answered request (needs an attached recorder).

        Raises:
            RequestError: no recorder is attached, or ``label`` is not in the label space.
        """
        if self.recorder is None:
            raise RequestError("feedback needs an outcome recorder (edge_eco.population.attach)")
        if label not in self._label_set:
            raise RequestError(f"feedback label {label!r} is not in the ecology's label space")
        self.recorder.feedback(request_id, label)

    @property
    def remote(self) -> Any:
        """The remote generalist client, or None when there is none (offline or forbidden)."""
        return self._remote

    # -- lifecycle -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Loads, evictions, demotions to cold and resident bytes so far."""
        s = self.residency.stats
        out = {"loads": s.loads, "evictions": s.evictions, "demotions": s.demotions, "resident_bytes": self.residency.resident_bytes,
               "resident": self.residency.resident(), "budget_bytes": self.residency.budget_bytes,
               "eviction_rule": self.residency.eviction_rule,
               "runtime_bytes": {k: v.total_bytes for k, v in self.residency.meter.runtime_bytes.items()}}
        if self.controller is not None:
            c = self.controller
            out["deferral"] = {"margin": round(c.margin, 5), "initial_margin": c.initial, "target": c.target,
                               "decisions": c.decisions, "remote_wanted": c.remote}
        return out

    def close(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to ``drain_timeout_s``), then
        release every model, thread and connection. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.wait_for(lambda: self._in_flight == 0, timeout=drain_timeout_s)
        self._pool.shutdown(wait=True)
        self._pins.close()
        if self.recorder is not None:
            self.recorder.close()
        self.residency.close()
        if self._remote is not None and hasattr(self._remote, "close"):
            self._remote.close()

    def __enter__(self) -> "Ecology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A model that cannot load or run (IntegrityError: a file changed after open): the request goes on
# without it, and it stands in the judge as a decline with no confidence (see _answer).
_MODEL_FAILURES = (BackendError, BudgetError, IntegrityError)
_SHARED_FEEDS = ("hashed-text", "dense-vector")  # inputs computed once per request for every model


class _Excluded(EdgeEcoError):
    """The request's path needs a model the device plan excludes (args[0]: its id)."""


def _spec_dict(spec: Any) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def _check_options(deadline_ms: Any, local_only: Any, max_risk: Any = "medium") -> None:
    """RequestError unless deadline_ms is None or a positive finite number, local_only a bool and
    max_risk a risk level."""
    if deadline_ms is not None:
        # a comparison, not math.isfinite (OverflowError on an int past float range); NaN fails it too
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) \
                or not 0 < deadline_ms <= sys.float_info.max:
            raise RequestError(f"deadline_ms must be a positive number of milliseconds or None, got {deadline_ms!r}")
    if not isinstance(local_only, bool):
        raise RequestError(f"local_only must be True or False, got {local_only!r}")
    if max_risk not in RISK_LEVELS:
        raise RequestError(f"max_risk must be one of {list(RISK_LEVELS)}, got {max_risk!r}")


def open(path: str | Path, *, trust: Any = None, **options: Any) -> Ecology:  # noqa: A001 - the public entry point
    """Open the ecology bundle at ``path`` (verifying every file's sha256).

    Keyword options: ``remote_url``, ``remote_token``, ``remote_protocol`` ("v2" or "openai", overrides
    the manifest's), ``remote_model`` (overrides the manifest's model name), ``budget_bytes``,
    ``use_native``, ``remote_client`` (any object with ``infer(texts, timeout_s=...)``), ``cold_state``
    (default True: under budget pressure idle models are first demoted to cold, their file pages
    dropped and their sessions kept; False: room is only made by unloading); ``trust``: a
    :class:`edge_eco.signing.Trust` or the path of a trust file / ``.pub`` key: the manifest's Ed25519
    signature is checked (required unless the trust says otherwise) and, with a signature required,
    each model file is hashed again when it loads; without one, a model file that changed on disk
    since open (device, inode, size, mtime) is hashed again before it loads (:mod:`edge_eco.ondisk`).

    Raises:
        ManifestError, IntegrityError: the bundle is malformed, incomplete or corrupt.
        SignatureError: (an IntegrityError) the signature is missing, untrusted or does not match.
    """
    from .ondisk import FileGuard, stamps

    data, signed = None, False
    if trust is not None:
        from .signing import as_trust, verified_manifest

        trust = as_trust(trust)
        data, signed = verified_manifest(path, trust)
    try:
        opened = stamps(Path(path))  # before the hashes: a file changed while hashed reads as changed
    except OSError:
        opened = {}  # read_bundle names what is wrong with the folder
    root, manifest = read_bundle(path, manifest_bytes=data)
    eco = Ecology(root, manifest, **options)
    if signed and trust.require_signature:
        from .signing import recheck_model_files

        eco.before_load = lambda model_id: recheck_model_files(root, manifest, model_id)
    else:  # a stat per file; hashed again only when it changed on disk
        eco.before_load = FileGuard(root, manifest, opened).check
    return eco

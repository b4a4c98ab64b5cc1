"""The embeddable runtime: ``edge_eco.open(path)`` -> :class:`Ecology`; ``eco.answer(text)``.

Request path (DESIGN.md section 3): featurize once (C) -> eligible candidates (pure) -> route
(pure) -> the top model directly when the route is confident, else the top-k in parallel and
the judge -> the remote generalist when the best calibrated confidence is under the fallback
threshold and policy allows -> Answer with provenance.

Shell: :class:`Ecology` owns the models, threads and remote client and wires the steps, each in its
own module: :mod:`edge_eco.routing` (route), :mod:`edge_eco.local_tier` (run and judge the local
models), :mod:`edge_eco.remote_fallback` (defer and ask the remote); :mod:`edge_eco.modelload`
loads the models for the residency manager.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import backends
from ._native import Featurizer
from .bundle import read_bundle
from .deferral import RemoteRateController
from .dense import describe as describe_dense
from .errors import EdgeEcoError, RequestError
from .inputs import Feeds, dense_adapter, hashed_feeds
from .judges import Vote
from .local_tier import MODEL_FAILURES, Excluded, LocalTier
from .manifest import Manifest, RemoteSpec
from .modelload import ModelLoader
from .policy import RISK_LEVELS, RequestContract, validate_text
from .remote_fallback import RemoteCall, load_deferral, remote_client_for
from .remote_policy import remote_block_reason
from .residency import Residency
from .residency.footprint import drop_file_pages, read_footprint
from .residency.meter import PROCESS_RUNTIME_BYTES
from .router import Route
from .routing import Routing

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


# A model whose load failed (its probe run stopped at max_run_ms, a file that no longer matches, a
# runtime that refuses it) is not loaded again for 1 s, then 2, 4, ... up to 60 s while its files
# are unchanged: the requests routed to it meanwhile go to the others at once.
LOAD_BACKOFF_S = (1.0, 60.0)


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
        self._dense = dense_adapter(root, manifest)
        self._routing = routing = Routing(root, manifest, self._featurizer, self._dense)
        # Under these names for edge_eco.bench_routing and the tests.
        self._router, self._route_mode, self._route_param = routing.weights, routing.mode, routing.param
        self._candidates, self._kernel = routing.candidates, routing.kernel
        self._deferral = load_deferral(root, manifest, self._featurizer)
        p = manifest.policy
        # The remote rule scores each local answer; above the margin it goes remote.
        self._use_deferral = p.remote_rule == "deferral"
        # Score the learned deferral even when another rule decides (bench/diagnostics only:
        # it costs ~6 us a request).
        self.trace_deferral = False
        margin = manifest.deferral.margin if self._use_deferral else 1.0 - p.fallback_threshold
        self.controller = RemoteRateController(margin, p.target_remote_rate, p.controller_gain, p.max_adjust) \
            if p.target_remote_rate > 0 else None
        loader = self._loader = ModelLoader(root, manifest, self._featurizer, self._dense)
        # Under these names for the residency benches and tests (edge_eco.bench_residency, tools/).
        self._adapters, self._predict_bytes, self._file_bytes = loader.adapters, loader.predict_bytes, loader.file_bytes
        self._runtime_of, self._anon_cap, self._model_paths = loader.runtime_of, loader.anon_cap, loader.model_paths
        budget = manifest.budget_bytes if budget_bytes is None else budget_bytes
        loader.check_budget(budget, self._excluded)
        self.residency = Residency(loader.open, self._predict_bytes, budget, measure=read_footprint,
                                   policy="cost_aware", cost=self._miss_cost, paths=self._model_paths,
                                   demote=drop_file_pages if cold_state else None, runtime_of=self._runtime_of,
                                   anon_cap=self._anon_cap, check=self._check_files,
                                   runtime_bytes=PROCESS_RUNTIME_BYTES,  # a runtime starts once per process
                                   backoff=LOAD_BACKOFF_S,
                                   warm=False)  # the loader's probe run is each load's first run
        self._local = LocalTier(manifest, self.residency, loader.adapters, self._excluded,
                                workers=max(2, 2 * manifest.policy.coalition_size))
        self._ids = itertools.count(1)
        # Request ids stay unique across restarts (the outcome memory keys on them).
        self._session = os.urandom(4).hex()
        self.recorder: Any = None  # set by attach_recorder (edge_eco.outcomes)
        self._remote = remote_client if remote_client is not None else remote_client_for(
            manifest, self.labels, url=remote_url, token=remote_token, protocol=remote_protocol, model=remote_model)
        spec = manifest.remote or RemoteSpec()
        self._remote_call = RemoteCall(spec.timeout_ms, spec.redact, self._label_set)
        self._closed = False
        self._in_flight = 0
        self.before_load: Callable[[str], None] | None = None
        self._cond = threading.Condition()

    # -- loading (edge_eco.modelload) ----------------------------------------------------------
    def _load(self, model_id: str) -> backends.Session:
        """A checked load outside the residency manager (benches, tools)."""
        self._check_files(model_id)
        return self._loader.open(model_id)

    def _check_files(self, model_id: str) -> None:
        """``before_load`` (set by :func:`open`: the files' stamps, or their hashes for a signed
        bundle); the residency manager calls it before it measures a load."""
        if self.before_load is not None:
            self.before_load(model_id)

    def _miss_cost(self, model_id: str) -> tuple[float, float]:
        return self._loader.miss_cost(model_id, self.residency.stats.load_times)

    # -- one model or one route (baselines and diagnostics) ------------------------------------
    def predict_with(self, model_id: str, text: str | bytes) -> Vote:
        """One model's calibrated answer to ``text`` (for baselines and diagnostics)."""
        entry = self.manifest.model(model_id)
        if self._dense is not None:
            return self._local.vote(model_id, "", self._dense.feeds(text))[0]
        data = validate_text(text, self.policy.max_text_bytes)
        hashed = hashed_feeds(*self._featurizer(data)) if entry.input == "hashed-text" else None
        return self._local.vote(model_id, data.decode("utf-8"), hashed)[0]

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
            r = self._routing.route_window(self._dense.feeds(text)["x"][0], None, RequestContract.max_risk,
                                           self.residency)
            return tuple(self._candidates[i] for i in r.order), r.probs
        data = validate_text(text, self.policy.max_text_bytes)
        r = self._featurize_route(data, None)[1]
        return tuple(self._candidates[i] for i in r.order), r.probs

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
        if isinstance(row, (str, bytes)):
            raise RequestError(f"{self.name} takes a row of {self.feature_dim} numbers, not text")
        a = np.asarray(row)  # dtype checked by validate_window (real numbers only)
        if a.shape != (self.feature_dim,):
            spec = self._dense.spec
            raise RequestError(f"expected a flat row of {self.feature_dim} features ({spec.samples} samples x "
                               f"{spec.axes} axes, row-major), got shape {list(a.shape)}"
                               + (" (answer() takes the window as it is)" if a.shape == (spec.samples, spec.axes)
                                  else ""))
        return self.answer(a.reshape(self._dense.spec.samples, self._dense.spec.axes),
                           deadline_ms=deadline_ms, local_only=local_only, max_risk=max_risk)

    def answer(self, text: str | bytes, *, deadline_ms: float | None = None,
               local_only: bool = False, max_risk: str = "medium") -> Answer:
        """Answer one request.

        Args:
            text: the request (str, or UTF-8 bytes).
            deadline_ms: time budget for the whole answer: models whose cold load would miss it
                are not routed to, a local run still going when it passes is stopped (ONNX
                Runtime, at the run watchdog's next wake-up), and it bounds the remote call.
            local_only: never send this request off the device.
            max_risk: the highest manifest risk level that may answer ("low", "medium", "high");
                a model of risk ``high`` (run in a sandboxed worker) answers only under "high".

        Returns:
            An :class:`Answer`; with no network the best local answer (path ``unavailable``).

        Raises:
            RequestError: empty text, text over ``policy.max_text_bytes``, invalid UTF-8.
        """
        deadline_ms = _check_options(deadline_ms, local_only, max_risk)
        with self._cond:
            if self._closed:
                raise EdgeEcoError("ecology is closed")
            self._in_flight += 1
        try:
            try:
                answer = self._answer(text, deadline_ms, local_only, max_risk)
            except Excluded as exc:
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
        end_ns = backends.deadline_in(deadline_ms)
        prov: dict[str, Any] = {"request_id": f"{self.name}-{self._session}-{next(self._ids)}"}
        if self._dense is not None:  # a sensor window: standardized features, routed in numpy
            hashed = self._dense.feeds(text)
            r = self._routing.route_window(hashed["x"][0], deadline_ms, max_risk, self.residency)
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
        # a local run still going when the deadline passes is stopped (ONNX Runtime; see max_run_ms)
        before = backends.set_run_deadline(end_ns)
        try:
            votes, best, path = self._local.answer(ids, r.confidence, text, hashed, prov, self.policy, max_risk)
        finally:
            backends.set_run_deadline(before)
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
            except MODEL_FAILURES as exc:
                failed[model_id] = f"{type(exc).__name__}: {exc}"
        return failed

    def pin(self, model_ids: Sequence[str]) -> None:
        """Load ``model_ids`` now and keep them resident (never evicted) until :meth:`close`."""
        for model_id in model_ids:
            self._pins.enter_context(self.residency.use(model_id))

    # -- routing (edge_eco.routing) ------------------------------------------------------------
    # (methods, not aliases: a test replaces _featurize_route on one ecology)
    def _featurize_route(self, data: bytes, deadline_ms: float | None,
                         max_risk: str = "medium") -> tuple[Feeds | None, Route]:
        return self._routing.featurize_route(data, deadline_ms, max_risk, self.residency)

    def _mask(self, deadline_ms: float, base: np.ndarray | None = None) -> np.ndarray:
        return self._routing.mask(deadline_ms, self.residency, base)

    # -- the remote (edge_eco.remote_fallback) -------------------------------------------------
    def _fallback(self, text: str, best: Vote, path: str, prov: dict, local_only: bool,
                  deadline_ms: float | None, t0: float) -> tuple[str, float, str]:
        """Ask the remote generalist unless a rule keeps the request local; on any failure keep the
        best local answer."""
        # The models that failed count with those that voted: a request for a niche whose
        # jurisdiction keeps it local stays local even when that niche's model could not answer.
        voters = [v[0] for v in prov.get("votes", ())] + list(prov.get("model_errors", ()))
        blocked = remote_block_reason(self.policy, local_only, (self._entries[m].niches for m in voters))
        if blocked is not None:
            prov["remote"] = {"skipped": blocked}
            return best.label, best.confidence, path
        return self._remote_call.ask(self._remote, text, best, prov, deadline_ms, t0)

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
        """Loads, evictions, demotions to cold and resident bytes so far; ``resident`` lists every
        loaded model, ``cold`` those of them whose file pages were dropped (not in ``resident_bytes``);
        ``failed_loads`` counts loads that raised, ``refused_loads`` the misses answered at once with
        the error of a failed load while it backs off (``backing_off``: those models now)."""
        s = self.residency.stats
        out = {"loads": s.loads, "evictions": s.evictions, "demotions": s.demotions, "resident_bytes": self.residency.resident_bytes,
               "failed_loads": s.failed_loads, "refused_loads": s.refused_loads,
               "backing_off": self.residency.backing_off(),
               "resident": self.residency.resident(), "cold": self.residency.cold(),
               "budget_bytes": self.residency.budget_bytes,
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
        self._local.close()
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


def _check_options(deadline_ms: Any, local_only: Any, max_risk: Any = "medium") -> float | None:
    """RequestError unless deadline_ms is None or a positive finite number (a numpy scalar too),
    local_only a bool and max_risk a risk level; returns deadline_ms as a float (or None)."""
    if deadline_ms is not None:
        # a numpy scalar as a float first: float32 compared with float_info.max casts the max to inf
        value = float(deadline_ms) if isinstance(deadline_ms, (np.integer, np.floating)) else deadline_ms
        # a comparison, not math.isfinite (OverflowError on an int past float range); NaN fails it too
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= sys.float_info.max:
            raise RequestError(f"deadline_ms must be a positive number of milliseconds or None, got {deadline_ms!r}")
        deadline_ms = float(value)
    if not isinstance(local_only, bool):
        raise RequestError(f"local_only must be True or False, got {local_only!r}")
    if max_risk not in RISK_LEVELS:
        raise RequestError(f"max_risk must be one of {list(RISK_LEVELS)}, got {max_risk!r}")
    return deadline_ms


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

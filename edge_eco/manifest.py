"""Ecology manifest (``ecology.toml``): parsing and validation. Pure: no file I/O here.

The manifest lists every file of the bundle with its sha256, the featurizer, the policy
(thresholds), the router and the population of models. Unknown fields are errors, so a
typo never silently falls back to a default. ``edge_eco.bundle`` does the file checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from . import tomlread
from .tomlread import Table as _Table
from .errors import ManifestError
from .featurizer import FeaturizerSpec

SCHEMA = 1
ROLES = ("specialist", "generalist")
BACKENDS = ("ort", "tflite", "fake")
INPUTS = ("hashed-text", "text-tokens", "dense-vector")
RISKS = ("low", "medium", "high")
REMOTE_POLICIES = ("allowed", "forbidden")
REMOTE_PROTOCOLS = ("v2", "openai")
REDACTIONS = ("digits", "emails")
MAX_RUN_MS = 600_000.0  # the longest [policy] max_run_ms (ten minutes): the backends refuse more too
_SHA_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle, relative to the bundle folder, with its expected sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling, plus an optional floor under which the answer is the reject label.

    ``reject_bias`` is added to the reject label's temperature-scaled logit: a prior correction for
    a reject class that training saw less often than held-out traffic has it (only models whose
    labels include the ecology's reject label may carry one).
    """

    temperature: float = 1.0
    reject_below: float = 0.0
    reject_bias: float = 0.0


@dataclass(frozen=True)
class Cost:
    """Measured cost of a model (filled by the build or by ``edge-eco profile``)."""

    resident_bytes: int = 0
    load_ms: float = 0.0
    p50_us: float = 0.0
    p95_us: float = 0.0


@dataclass(frozen=True)
class ModelEntry:
    """One member of the population."""

    id: str
    version: str
    role: str
    backend: str
    file: FileEntry
    input: str
    labels: tuple[str, ...]
    output: str = "logits"
    decline_label: str | None = None
    tokenizer: str | None = None
    max_tokens: int = 128
    niches: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    calibration: Calibration = Calibration()
    cost: Cost = Cost()
    risk: str = "low"


@dataclass(frozen=True)
class Policy:
    """Thresholds and remote policy of the request path."""

    direct_threshold: float = 0.9
    fallback_threshold: float = 0.5
    coalition_size: int = 2
    coalition_timeout_ms: float = 50.0
    # One local run (ONNX Runtime) past this is stopped and counts as the model failing: a graph
    # that loops for ever cannot hold a request, a load's probe run or a governance job.
    max_run_ms: float = 1000.0
    max_text_bytes: int = 16384
    remote: str = "allowed"
    # "cascade": remote when the calibrated local confidence < fallback_threshold;
    # "deferral": remote when the learned deferral's expected gain > its margin.
    remote_rule: str = "cascade"
    # When > 0, an online controller moves the rule's threshold (within +/- max_adjust) so that
    # the realised share of requests sent remote stays at this target under drift.
    target_remote_rate: float = 0.0
    controller_gain: float = 0.01
    max_adjust: float = 0.5
    # The ecology's own jurisdiction, and the jurisdictions whose requests never leave the device:
    # remote is off when the ecology's jurisdiction, or a niche ``jurisdiction`` of a model that
    # answered the request, is listed in local_jurisdictions.
    jurisdiction: str = ""
    local_jurisdictions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteSpec:
    """Where the remote generalist lives and how to talk to it (the URL can be overridden at open time).

    ``protocol``: "v2" (Open Inference Protocol REST) or "openai" (chat completions; ``url`` is the
    API base, e.g. ``http://host:8000/v1``). ``attempts``: tries per call (retries with jitter while
    the deadline allows). ``redact``: masks applied to the text before it is sent ("digits": every
    run of digits becomes ``<num>``; "emails": every e-mail address becomes ``<email>``).
    ``logprobs`` (openai only): ask for token log-probabilities and derive the confidence from them.
    """

    protocol: str = "v2"
    url: str = ""
    model: str = ""
    timeout_ms: float = 2000.0
    attempts: int = 2
    redact: tuple[str, ...] = ()
    logprobs: bool = False  # openai: ask for token log-probabilities and use them as the confidence


@dataclass(frozen=True)
class RouterSpec:
    """The router: a weights file and the model id of each of its outputs.

    ``linear-softmax`` scores candidates with one linear layer and ranks them by softmax at
    ``temperature``; ``correctness`` holds one logistic predictor per candidate of "this model
    answers this request correctly" and ranks by utility = p - ``lam`` x cost (``lambda`` in TOML).
    """

    file: FileEntry
    kind: str
    candidates: tuple[str, ...]
    temperature: float = 1.0
    lam: float = 0.0


@dataclass(frozen=True)
class DeferralSpec:
    """The learned remote deferral: predicts, after the local answer, whether asking the remote
    generalist gains (remote right, local wrong) or loses (local right, remote wrong) accuracy.

    With ``policy.remote_rule = "deferral"`` a request goes remote when P(gain) - P(loss) >
    ``margin``: the expected accuracy change must pay for the remote call.
    """

    file: FileEntry
    kind: str
    margin: float


@dataclass(frozen=True)
class Governance:
    """Population governance (``[governance]``): what the controller may do alone, the promotion
    rule's thresholds, shadow budget, outcome retention and archive bound. See edge_eco.population."""

    auto_apply: tuple[str, ...] = ("reject",)  # proposal kinds applied without `edge-eco population approve`
    min_pairs: int = 200
    looks: int = 5
    alpha: float = 0.01
    slice_alpha: float = 0.01
    min_gain: float = 0.005
    cooldown_s: float = 86400.0
    shadow_rate: float = 0.1
    shadow_cpu_share: float = 0.05
    store_text: bool = False
    max_rows: int = 1_000_000
    max_bytes: int = 256 << 20
    archive_bytes: int = 64 << 20
    retire_after_s: float = 30 * 86400.0  # an undecided challenger or watch is retired after this


PROPOSAL_KINDS = ("promote", "reject", "rollback", "retire")


@dataclass(frozen=True)
class DenseInput:
    """The dense featurizer of a sensor ecology (``edge_eco.dense``): window shape, sensor range
    and the file with the training mean/std used to standardize features."""

    file: FileEntry
    kind: str
    samples: int
    axes: int
    max_abs: float


@dataclass(frozen=True)
class Manifest:
    """A validated ecology manifest."""

    name: str
    version: str
    description: str
    reject_label: str
    featurizer: FeaturizerSpec | None
    policy: Policy
    remote: RemoteSpec | None
    router: RouterSpec | None
    models: tuple[ModelEntry, ...]
    files: tuple[FileEntry, ...]
    budget_bytes: int = 0
    deferral: DeferralSpec | None = None
    governance: Governance = Governance()
    dense: DenseInput | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The ecology's label space: every model label except decline labels, sorted."""
        out = set()
        for m in self.models:
            out.update(label for label in m.labels if label != m.decline_label)
        out.add(self.reject_label)
        return tuple(sorted(out))

    def label_niches(self) -> dict[str, str]:
        """Label -> niche from the specialists: a specialist's ``niches.domain`` (else its id) for each
        of its labels; the reject label is its own niche. A label two niches claim is left out. Pure."""
        claims: dict[str, set[str]] = {}
        for m in self.models:
            if m.role == "specialist":
                for lab in m.labels:
                    if lab != m.decline_label:
                        claims.setdefault(lab, set()).add(m.niches.get("domain", m.id))
        out = {lab: next(iter(n)) for lab, n in claims.items() if len(n) == 1}
        out[self.reject_label] = self.reject_label
        return out

    def all_files(self) -> tuple[FileEntry, ...]:
        """Every file the bundle must contain, models and router included."""
        extra = [m.file for m in self.models] + ([self.router.file] if self.router else []) \
            + ([self.deferral.file] if self.deferral else []) + ([self.dense.file] if self.dense else [])
        return tuple(extra) + self.files

    def model(self, model_id: str) -> ModelEntry:
        """The entry of ``model_id``; raises ManifestError when there is none."""
        for m in self.models:
            if m.id == model_id:
                return m
        raise ManifestError(f"no model with id {model_id!r} in ecology {self.name!r}")


def _file(t: _Table) -> FileEntry:
    path = t.get("path", str)
    sha = t.get("sha256", str)
    if path.startswith("/") or ".." in path.split("/") or not path:
        raise ManifestError(f"{t.where}.path: {path!r} must be a relative path inside the bundle")
    if len(sha) != 64 or not set(sha) <= _SHA_HEX:
        raise ManifestError(f"{t.where}.sha256: {sha!r} is not 64 lowercase hex digits")
    return FileEntry(path, sha)


def _file_entry(raw: Any, i: int) -> FileEntry:
    t = _Table(raw, f"files[{i}]")
    entry = _file(t)
    t.done()
    return entry


def _strings(t: _Table, key: str, default: Any = ...) -> tuple[str, ...]:
    value = t.get(key, list, default)
    if not all(isinstance(v, str) and v for v in value):
        raise ManifestError(f"{t.where}.{key}: expected a list of non-empty strings")
    if len(set(value)) != len(value):
        raise ManifestError(f"{t.where}.{key}: duplicate entries")
    return tuple(value)


def _model(raw: Any, i: int) -> ModelEntry:
    t = _Table(raw, f"models[{i}]")
    model_id = t.get("id", str)
    t.where = f"models[{i}] ({model_id})"
    labels = _strings(t, "labels")
    if len(labels) < 2:
        raise ManifestError(f"{t.where}.labels: a classifier needs at least 2 labels")
    cal = t.table("calibration")
    calibration = Calibration(cal.get("temperature", float, 1.0, lo=1e-3, hi=1e3),
                              cal.get("reject_below", float, 0.0, lo=0.0, hi=1.0),
                              cal.get("reject_bias", float, 0.0, lo=-50.0, hi=50.0)) if cal else Calibration()
    if cal:
        cal.done()
    ct = t.table("cost")
    cost = Cost(ct.get("resident_bytes", int, 0, lo=0), ct.get("load_ms", float, 0.0, lo=0),
                ct.get("p50_us", float, 0.0, lo=0), ct.get("p95_us", float, 0.0, lo=0)) if ct else Cost()
    if ct:
        ct.done()
    nt = t.table("niches")
    niches = {}
    if nt:
        for key in list(nt.data):
            niches[key] = nt.get(key, str)
        nt.done()
    entry = ModelEntry(
        id=model_id, version=t.get("version", str), role=t.choice("role", ROLES),
        backend=t.choice("backend", BACKENDS),
        file=FileEntry(t.get("path", str), t.get("sha256", str)),
        input=t.choice("input", INPUTS), labels=labels, output=t.get("output", str, "logits"),
        decline_label=t.get("decline_label", str, None), tokenizer=t.get("tokenizer", str, None),
        max_tokens=t.get("max_tokens", int, 128, lo=1, hi=4096), niches=MappingProxyType(niches),
        calibration=calibration, cost=cost, risk=t.choice("risk", RISKS, "low"))
    _file(_Table({"path": entry.file.path, "sha256": entry.file.sha256}, t.where))
    if entry.decline_label is not None and entry.decline_label not in labels:
        raise ManifestError(f"{t.where}.decline_label: {entry.decline_label!r} is not one of its labels")
    if entry.input == "text-tokens" and not entry.tokenizer:
        raise ManifestError(f"{t.where}: input 'text-tokens' needs a 'tokenizer' file")
    t.done()
    return entry


def model_entry(raw: Any) -> ModelEntry:
    """Parse one ``[[models]]`` table (e.g. a challenger's entry). Raises ManifestError."""
    return _model(raw, 0)


def _governance(t: _Table | None) -> Governance:
    if t is None:
        return Governance()
    auto = _strings(t, "auto_apply", ["reject"]) if "auto_apply" in t.data else ("reject",)
    bad = [k for k in auto if k not in PROPOSAL_KINDS]
    if bad:
        raise ManifestError(f"{t.where}.auto_apply: {bad} not among {list(PROPOSAL_KINDS)}")
    g = Governance(auto_apply=tuple(auto), min_pairs=t.get("min_pairs", int, 200, lo=1, hi=10**9),
                   looks=t.get("looks", int, 5, lo=1, hi=20), alpha=t.get("alpha", float, 0.01, lo=1e-9, hi=0.5),
                   slice_alpha=t.get("slice_alpha", float, 0.01, lo=1e-9, hi=0.5),
                   min_gain=t.get("min_gain", float, 0.005, lo=0.0, hi=1.0),
                   cooldown_s=t.get("cooldown_s", float, 86400.0, lo=0.0),
                   shadow_rate=t.get("shadow_rate", float, 0.1, lo=0.0, hi=1.0),
                   shadow_cpu_share=t.get("shadow_cpu_share", float, 0.05, lo=0.0, hi=1.0),
                   store_text=t.get("store_text", bool, False), max_rows=t.get("max_rows", int, 1_000_000, lo=0),
                   max_bytes=t.get("max_bytes", int, 256 << 20, lo=0),
                   archive_bytes=t.get("archive_bytes", int, 64 << 20, lo=0),
                   retire_after_s=t.get("retire_after_s", float, 30 * 86400.0, lo=0.0))
    t.done()
    return g


def _policy(t: _Table | None) -> Policy:
    if t is None:
        return Policy()
    p = Policy(direct_threshold=t.get("direct_threshold", float, 0.9, lo=0.0, hi=1.0),
               fallback_threshold=t.get("fallback_threshold", float, 0.5, lo=0.0, hi=1.0),
               coalition_size=t.get("coalition_size", int, 2, lo=1, hi=8),
               coalition_timeout_ms=t.get("coalition_timeout_ms", float, 50.0, lo=0.1, hi=60000),
               max_run_ms=t.get("max_run_ms", float, 1000.0, lo=1.0, hi=MAX_RUN_MS),
               max_text_bytes=t.get("max_text_bytes", int, 16384, lo=16, hi=1 << 24),
               remote=t.choice("remote", REMOTE_POLICIES, "allowed"),
               remote_rule=t.choice("remote_rule", ("cascade", "deferral"), "cascade"),
               target_remote_rate=t.get("target_remote_rate", float, 0.0, lo=0.0, hi=1.0),
               controller_gain=t.get("controller_gain", float, 0.01, lo=0.0, hi=1.0),
               max_adjust=t.get("max_adjust", float, 0.5, lo=0.0, hi=2.0),
               jurisdiction=t.get("jurisdiction", str, ""),
               local_jurisdictions=_strings(t, "local_jurisdictions", []))
    t.done()
    return p


def parse_manifest(text: str) -> Manifest:
    """Parse and validate the text of an ``ecology.toml``.

    Raises:
        ManifestError: malformed TOML, a missing or unknown field, a value out of range,
            or references between entries that do not resolve.
    """
    try:
        data = tomlread.loads(text)
    except tomlread.TOMLDecodeError as exc:
        raise ManifestError(f"ecology.toml is not valid TOML: {exc}") from exc
    top = _Table(data, "ecology.toml")
    schema = top.get("schema", int)
    if schema != SCHEMA:
        raise ManifestError(f"ecology.toml: schema {schema} is not supported (this runtime reads {SCHEMA})")
    ft = top.table("featurizer")
    featurizer = None
    if ft:
        kwargs = {k: ft.get(k, str if k == "version" else int) for k in list(ft.data)}
        known = set(FeaturizerSpec.__dataclass_fields__)
        if set(kwargs) - known:
            raise ManifestError(f"ecology.toml.featurizer: unknown field(s) {sorted(set(kwargs) - known)}")
        featurizer = FeaturizerSpec(**kwargs)
    remote = None
    if (rt := top.table("remote")) is not None:
        remote = RemoteSpec(rt.choice("protocol", REMOTE_PROTOCOLS, "v2"), rt.get("url", str, ""),
                            rt.get("model", str, ""), rt.get("timeout_ms", float, 2000.0, lo=1, hi=600000),
                            rt.get("attempts", int, 2, lo=1, hi=10), _strings(rt, "redact", []),
                            rt.get("logprobs", bool, False))
        unknown = [r for r in remote.redact if r not in REDACTIONS]
        if unknown:
            raise ManifestError(f"ecology.toml.remote.redact: unknown mask(s) {unknown}; known: {list(REDACTIONS)}")
        rt.done()
    router = None
    if (rr := top.table("router")) is not None:
        router = RouterSpec(_file(rr), rr.choice("kind", ("linear-softmax", "correctness")),
                            _strings(rr, "candidates"), rr.get("temperature", float, 1.0, lo=1e-3, hi=1e3),
                            rr.get("lambda", float, 0.0, lo=0.0, hi=1e3))
        rr.done()
    deferral = None
    if (dt := top.table("deferral")) is not None:
        deferral = DeferralSpec(_file(dt), dt.choice("kind", ("gain-loss",)),
                                dt.get("margin", float, lo=-1.0, hi=1.0))
        dt.done()
    dense = None
    if (dn := top.table("dense")) is not None:
        dense = DenseInput(_file(dn), dn.choice("kind", ("accel-window-v1", "vector-v1")), dn.get("samples", int, lo=2, hi=1 << 16),
                           dn.get("axes", int, lo=1, hi=64), dn.get("max_abs", float, lo=0.0))
        dn.done()
    raw_models = top.get("models", list)
    models = tuple(_model(m, i) for i, m in enumerate(raw_models))
    files = tuple(_file_entry(f, i) for i, f in enumerate(top.get("files", list, [])))
    m = Manifest(name=top.get("name", str), version=top.get("version", str),
                 description=top.get("description", str, ""), reject_label=top.get("reject_label", str),
                 featurizer=featurizer, policy=_policy(top.table("policy")), remote=remote, router=router,
                 models=models, files=files, budget_bytes=top.get("budget_bytes", int, 0, lo=0),
                 deferral=deferral, governance=_governance(top.table("governance")),
                 dense=dense)
    top.done()
    _check_references(m)
    return m


def _check_references(m: Manifest) -> None:
    if not m.models:
        raise ManifestError("ecology.toml: the population has no models")
    ids = [x.id for x in m.models]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"ecology.toml: duplicate model ids {sorted({i for i in ids if ids.count(i) > 1})}")
    paths = [f.path for f in m.all_files()]
    if len(set(paths)) != len(paths):
        raise ManifestError("ecology.toml: a file is listed twice")
    for x in m.models:
        if x.input == "hashed-text" and m.featurizer is None:
            raise ManifestError(f"model {x.id!r} takes 'hashed-text' but the manifest has no [featurizer]")
        if x.input == "dense-vector" and m.dense is None:
            raise ManifestError(f"model {x.id!r} takes 'dense-vector' but the manifest has no [dense]")
        if x.calibration.reject_bias != 0.0 and m.reject_label not in x.labels:
            raise ManifestError(f"model {x.id!r}: calibration.reject_bias needs the reject label "
                                f"{m.reject_label!r} among its labels")
        if x.tokenizer and x.tokenizer not in paths:
            raise ManifestError(f"model {x.id!r}: tokenizer {x.tokenizer!r} is not listed in [[files]]")
    if m.policy.remote_rule == "deferral" and m.deferral is None:
        raise ManifestError("policy.remote_rule = 'deferral' needs a [deferral] table")
    if m.deferral and m.featurizer is None:
        raise ManifestError("deferral: needs a [featurizer] to read requests")
    if m.router:
        unknown = [c for c in m.router.candidates if c not in ids]
        if unknown:
            raise ManifestError(f"router.candidates: unknown model id(s) {unknown}")
        if m.featurizer is None and m.dense is None:
            raise ManifestError("router: needs a [featurizer] or [dense] to read requests")
    elif len(m.models) > 1:
        raise ManifestError("ecology.toml: a population of several models needs a [router]")

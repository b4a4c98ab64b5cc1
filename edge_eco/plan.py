"""Device plans (``plan.toml``, written by ``edge-eco assign``) and how the runtime honours them.

A plan names, for one ecology on one platform, which models are pinned, on demand or excluded,
the memory budget, the cascade's threshold and remote-rate target, and the figures expected
from the validation replay. ``open_with_plan`` opens the ecology so that excluded models are
never loaded (a request whose path needs one goes remote), pinned models are loaded at once and
never evicted, the budget is the platform's and model footprints are the profiled ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import tomlread
from .assign import DECISIONS, Expectation, ModelCost
from .bundle import read_bundle
from .ecology import Ecology
from .errors import ManifestError
from .manifest import Cost, Manifest
from .platform import Platform

PLAN_SCHEMA = 1
EXPECTED_KEYS = ("accuracy", "remote_rate", "forced_rate", "cascade_rate", "local_p50_ms", "local_p95_ms", "p95_ms",
                 "cold_loads")


@dataclass(frozen=True)
class ModelPlan:
    """One model's decision and the costs it was decided with."""

    id: str
    decision: str
    resident_bytes: int
    load_ms: float


@dataclass(frozen=True)
class DevicePlan:
    """An ecology's assignment to a platform."""

    ecology: str
    ecology_version: str
    platform: str
    memory_budget_bytes: int
    latency_budget_ms: float
    remote_budget_rate: float
    cpu_factor: float
    network: str
    remote_policy: str  # "allowed" or "forbidden": what the device may do, decided at assign time
    fallback_threshold: float
    target_remote_rate: float
    region: tuple[str, ...]
    requests: int
    models: tuple[ModelPlan, ...]
    expected: Mapping[str, float]
    feasible: bool = True  # False: the optimiser found no assignment within the platform's budgets

    def ids(self, decision: str) -> tuple[str, ...]:
        """Ids of the models with ``decision``."""
        return tuple(m.id for m in self.models if m.decision == decision)


def make_plan(manifest: Manifest, platform: Platform, costs: list[ModelCost], decisions: Mapping[str, str],
              e: Expectation, region: frozenset[str] | None, requests: int,
              remote_allowed: bool = True) -> DevicePlan:
    """Assemble a plan from the optimiser's result. Pure."""
    return DevicePlan(
        ecology=manifest.name, ecology_version=manifest.version, platform=platform.name,
        memory_budget_bytes=platform.memory_budget_bytes, latency_budget_ms=platform.latency_budget_ms,
        remote_budget_rate=platform.remote_budget_rate, cpu_factor=platform.cpu_factor, network=platform.network,
        remote_policy="allowed" if remote_allowed and platform.network != "offline" else "forbidden",
        fallback_threshold=round(e.fallback_threshold, 6), target_remote_rate=round(e.cascade_rate, 6),
        region=tuple(sorted(region or ())), requests=requests,
        models=tuple(ModelPlan(c.id, decisions[c.id], c.bytes, round(c.load_ms, 4)) for c in costs),
        expected={k: round(float(getattr(e, k)), 6) for k in EXPECTED_KEYS}, feasible=bool(e.feasible))


def plan_to_toml(p: DevicePlan) -> str:
    """The plan as TOML text. Pure."""
    def val(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)
    lines = ["# edge-eco device plan: written by `edge-eco assign`; `edge-eco run --plan` honours it.",
             f"schema = {PLAN_SCHEMA}"]
    for f in dataclasses.fields(p):
        if f.name not in ("models", "expected"):
            lines.append(f"{f.name} = {val(getattr(p, f.name))}")
    lines += ["", "[expected]"] + [f"{k} = {val(v)}" for k, v in p.expected.items()]
    for m in p.models:
        lines += ["", "[[models]]"] + [f"{f.name} = {val(getattr(m, f.name))}" for f in dataclasses.fields(m)]
    return "\n".join(lines) + "\n"


def parse_plan(text: str, where: str = "plan") -> DevicePlan:
    """Parse a plan written by :func:`plan_to_toml`.

    Raises:
        ManifestError: invalid TOML, wrong schema, a missing or malformed field, an unknown decision.
    """
    try:
        d = tomlread.loads(text)
    except tomlread.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from exc
    if d.get("schema") != PLAN_SCHEMA:
        raise ManifestError(f"{where}: schema {d.get('schema')!r} is not {PLAN_SCHEMA}")
    try:
        models = tuple(ModelPlan(str(m["id"]), str(m["decision"]), int(m["resident_bytes"]), float(m["load_ms"]))
                       for m in d["models"])
        plan = DevicePlan(
            ecology=str(d["ecology"]), ecology_version=str(d["ecology_version"]), platform=str(d["platform"]),
            memory_budget_bytes=int(d["memory_budget_bytes"]), latency_budget_ms=float(d["latency_budget_ms"]),
            remote_budget_rate=float(d["remote_budget_rate"]), cpu_factor=float(d["cpu_factor"]),
            network=str(d["network"]), remote_policy=str(d["remote_policy"]),
            fallback_threshold=float(d["fallback_threshold"]),
            target_remote_rate=float(d["target_remote_rate"]), region=tuple(str(x) for x in d["region"]),
            requests=int(d["requests"]), models=models,
            expected={k: float(d["expected"][k]) for k in EXPECTED_KEYS}, feasible=d.get("feasible", True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: missing or malformed field ({exc!r})") from exc
    if not isinstance(plan.feasible, bool):
        raise ManifestError(f"{where}: feasible must be true or false, got {plan.feasible!r}")
    known = {f.name for f in dataclasses.fields(DevicePlan)} | {"schema"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}")
    negative = [f"{m.id}.{k}" for m in plan.models for k in ("resident_bytes", "load_ms")
                if not math.isfinite(getattr(m, k)) or getattr(m, k) < 0]
    negative += [f"expected.{k}" for k, v in plan.expected.items() if not math.isfinite(v) or v < 0]
    negative += [k for k in ("latency_budget_ms", "remote_budget_rate", "cpu_factor")
                 if not math.isfinite(getattr(plan, k)) or getattr(plan, k) < 0]
    if negative:
        raise ManifestError(f"{where}: negative or non-finite value(s) {negative[:5]}")
    if plan.cpu_factor <= 0:  # run --plan divides the expected latency by it
        raise ManifestError(f"{where}: cpu_factor must be > 0, got {plan.cpu_factor!r}")
    bad = [m.id for m in plan.models if m.decision not in DECISIONS]
    if bad:
        raise ManifestError(f"{where}: model(s) {bad} have a decision that is not one of {list(DECISIONS)}")
    if not 0.0 <= plan.fallback_threshold <= 1.0 or not 0.0 <= plan.target_remote_rate <= 1.0:
        raise ManifestError(f"{where}: fallback_threshold and target_remote_rate must lie in [0, 1]")
    if plan.remote_policy not in ("allowed", "forbidden"):
        raise ManifestError(f"{where}: remote_policy must be 'allowed' or 'forbidden', got {plan.remote_policy!r}")
    if plan.memory_budget_bytes < 0:
        raise ManifestError(f"{where}: memory_budget_bytes must be >= 0")
    return plan


def read_plan(path: str | Path) -> DevicePlan:
    """Read a plan file. Raises ManifestError when it is unreadable or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"plan {path}: cannot read it ({exc})") from exc
    return parse_plan(text, str(path))


def apply_plan(manifest: Manifest, plan: DevicePlan) -> Manifest:
    """The manifest as the plan runs it: profiled footprints and load times, the plan's cascade
    threshold, remote-rate target and remote policy (jurisdiction rules stay as they are). Pure.

    Raises:
        ManifestError: the plan is for another ecology or does not list exactly its models.
    """
    if plan.ecology != manifest.name:
        raise ManifestError(f"the plan is for ecology {plan.ecology!r}, not {manifest.name!r}")
    if plan.ecology_version != manifest.version:
        raise ManifestError(f"the plan is for version {plan.ecology_version!r} of {manifest.name}, this bundle is "
                            f"version {manifest.version!r}; run `edge-eco assign` again")
    planned = {m.id: m for m in plan.models}
    ids = [m.id for m in manifest.models]
    if set(planned) != set(ids):
        raise ManifestError(f"the plan lists models {sorted(planned)}, the ecology has {sorted(ids)}")
    models = tuple(dataclasses.replace(m, cost=Cost(planned[m.id].resident_bytes, planned[m.id].load_ms,
                                                    m.cost.p50_us, m.cost.p95_us)) for m in manifest.models)
    policy = dataclasses.replace(manifest.policy, fallback_threshold=plan.fallback_threshold,
                                 target_remote_rate=plan.target_remote_rate,
                                 remote=plan.remote_policy)
    return dataclasses.replace(manifest, models=models, policy=policy, budget_bytes=plan.memory_budget_bytes)


def _warm_runtime(root: Path, entries: list) -> None:
    """Load and close one model before the ecology measures any: the model runtime's one-time start-up
    (its library pages and arenas, tens of MB with ONNX Runtime) would otherwise be charged to the first
    model loaded against the plan's budget."""
    from .profile import _open

    if entries:
        _open(root, entries[0]).close()


def open_with_plan(path: str | Path, plan: DevicePlan, **options: Any) -> Ecology:
    """Open the ecology at ``path`` honouring ``plan`` (see the module docstring).

    Raises:
        ManifestError, IntegrityError: as :func:`edge_eco.open`, or a plan that does not fit the ecology.
        BudgetError: the pinned models do not fit the plan's budget.
    """
    root, manifest = read_bundle(path)
    excluded = frozenset(plan.ids("excluded"))
    _warm_runtime(root, [m for m in manifest.models if m.id not in excluded])
    eco = Ecology(root, apply_plan(manifest, plan), excluded=excluded, **options)
    try:
        eco.pin(plan.ids("pinned"))
    except BaseException:
        eco.close()
        raise
    return eco

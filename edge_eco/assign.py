"""Niche assignment: which models live on a device class. Pure: no I/O, no clock.

Input: outcomes replayed on the validation split (per request: the local models its path ran, in
order, whether the local and the remote answers were right, the calibrated local confidence, the
warm local latency on the profiling machine), per-model costs (bytes, cold-load ms) and a
platform's budgets. Output: per model ``pinned`` (preloaded, never evicted), ``on_demand``
(loaded on use, LRU under the rest of the budget) or ``excluded``, and the expected figures.

How a plan is scored (the runtime honours the same rules, see ``edge_eco.plan``):
- a request whose path would run an excluded model goes remote ("forced");
- the other requests run locally; the cascade sends the least confident of them remote too, as
  many as raise accuracy within the remote budget (forced calls count against it first);
- local latency = (warm latency + cold loads met on the way) x the platform's CPU factor, with
  cold loads found by simulating the LRU of on-demand models over the requests in order;
- a plan is feasible when pinned bytes fit the memory budget with room for every request's
  on-demand models, the forced remote share fits the remote budget, and the local p95 fits the
  latency budget. Feasible plans are ranked by accuracy, then fewer remote calls, fewer bytes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

DECISIONS = ("pinned", "on_demand", "excluded")


@dataclass(frozen=True)
class Outcome:
    """One replayed validation request."""

    models: tuple[int, ...]  # indices (into the cost list) of the local models its path ran
    local_ok: bool
    remote_ok: bool
    confidence: float        # calibrated local confidence: the cascade sends the lowest remote
    local_ms: float          # warm local latency on the profiling machine
    remote_ms: float = 0.0   # the remote generalist's own time (network added per platform)
    niche: str = ""          # the request's niche (domain, language) for per-niche figures
    stages: tuple[int, ...] = ()  # how many of ``models`` ran at each step (a coalition runs together);
                                  # empty: one at a time


def _touched(o: Outcome, allowed: frozenset[int]) -> tuple[int, ...]:
    """The models a request loads: all of them when allowed, else the steps before the first step that
    needs an excluded model (the runtime stops there and sends the request remote)."""
    stages = o.stages or (1,) * len(o.models)
    out, at = [], 0
    for size in stages:
        step = o.models[at:at + size]
        if any(m not in allowed for m in step):
            break
        out.extend(step)
        at += size
    return tuple(out)


@dataclass(frozen=True)
class ModelCost:
    """What a model costs on the device."""

    id: str
    bytes: int
    load_ms: float
    niches: frozenset[str] = frozenset()  # niche values; empty for a generalist


@dataclass(frozen=True)
class Budgets:
    """A platform's budgets as the optimiser sees them."""

    memory_bytes: int
    latency_ms: float
    remote_rate: float
    cpu_factor: float = 1.0
    remote_rtt_ms: float | None = 1.0  # None: offline


@dataclass(frozen=True)
class Expectation:
    """Expected figures of a plan on the replayed requests."""

    accuracy: float
    remote_rate: float
    forced_rate: float            # share sent remote because their path needs an excluded model
    cascade_rate: float           # share of the locally eligible requests the cascade sends remote
    fallback_threshold: float     # the cascade's confidence threshold (remote when below)
    local_p50_ms: float
    local_p95_ms: float
    p95_ms: float                 # over all requests, remote ones with network round trip
    pinned_bytes: int
    cold_loads: int
    feasible: bool
    violation: float              # 0 when feasible; the summed relative excesses otherwise
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Decisions per model id and what to expect from them."""

    decisions: Mapping[str, str]
    expected: Expectation


def _lru_cold_ms(outcomes: Sequence[Outcome], allowed: frozenset[int], costs: Sequence[ModelCost],
                 pinned: frozenset[int], capacity: int) -> tuple[np.ndarray, int, bool]:
    """Cold-load ms per request from an LRU of on-demand models holding ``capacity`` bytes."""
    cold = np.zeros(len(outcomes))
    lru: OrderedDict[int, int] = OrderedDict()
    used, loads, fits = 0, 0, True
    for i, o in enumerate(outcomes):
        for m in _touched(o, allowed):
            if m in pinned:
                continue
            if m in lru:
                lru.move_to_end(m)
                continue
            loads += 1
            cold[i] += costs[m].load_ms
            need = costs[m].bytes
            for victim in [v for v in lru if v not in o.models]:  # idle models only, LRU first
                if used + need <= capacity:
                    break
                used -= lru.pop(victim)
            if used + need > capacity:
                fits = False
            lru[m] = need
            used += need
    return cold, loads, fits


def _cascade(outcomes: Sequence[Outcome], eligible: np.ndarray, slots: int) -> tuple[int, float, np.ndarray]:
    """How many of the least confident eligible requests to send remote (<= slots) to maximise
    accuracy; returns (count, threshold, bool mask of those requests)."""
    idx = np.flatnonzero(eligible)
    conf = np.array([outcomes[i].confidence for i in idx])
    order = idx[np.argsort(conf, kind="stable")]
    gain = np.array([int(outcomes[i].remote_ok) - int(outcomes[i].local_ok) for i in order])
    best_k = 0
    if slots > 0 and len(order):
        cum = np.concatenate([[0], np.cumsum(gain[:slots])])
        best_k = int(np.argmax(cum))  # first maximum: the fewest calls for the best accuracy
    mask = np.zeros(len(outcomes), bool)
    mask[order[:best_k]] = True
    if best_k == 0:
        threshold = 0.0
    elif best_k == len(order):
        threshold = 1.0
    else:
        lo, hi = outcomes[order[best_k - 1]].confidence, outcomes[order[best_k]].confidence
        threshold = (lo + hi) / 2 if hi > lo else lo
    return best_k, float(threshold), mask


def _simulate(outcomes: Sequence[Outcome], costs: Sequence[ModelCost], decisions: Mapping[str, str],
              budgets: Budgets, remote_rate: float | None, region: frozenset[str] | None):
    if not outcomes:
        raise ValueError("evaluate needs at least one replayed outcome")
    bad = {d for d in decisions.values() if d not in DECISIONS}
    if bad:
        raise ValueError(f"unknown decision(s) {sorted(bad)}; expected one of {DECISIONS}")
    n = len(outcomes)
    rate = budgets.remote_rate if remote_rate is None else remote_rate
    if budgets.remote_rtt_ms is None:
        rate = 0.0
    state = [decisions.get(c.id, "excluded") for c in costs]
    allowed = frozenset(i for i, d in enumerate(state) if d != "excluded")
    pinned = frozenset(i for i, d in enumerate(state) if d == "pinned")
    eligible = np.array([bool(o.models) and all(m in allowed for m in o.models) for o in outcomes])
    forced = ~eligible
    # Requests outside the region are meant to go remote: they do not spend the remote budget.
    inside = np.array([region is None or o.niche in region for o in outcomes])
    n_forced = int((forced & inside).sum())
    n_inside = int(inside.sum())
    problems, violation = [], 0.0
    slots = math.floor(rate * n_inside + 1e-9) - n_forced
    if slots < 0:
        of = "requests" if region is None else "the region's requests"
        problems.append(f"{n_forced / max(1, n_inside):.1%} of {of} need excluded models; "
                        f"the remote budget is {rate:.0%} of {of}")
        violation += (n_forced / max(1, n_inside) - rate) / max(rate, 0.01)
    k, threshold, cascaded = _cascade(outcomes, eligible, max(0, slots))
    pinned_bytes = sum(costs[i].bytes for i in pinned)
    capacity = budgets.memory_bytes - pinned_bytes
    if capacity < 0:
        problems.append(f"pinned models need {pinned_bytes} bytes; the budget is {budgets.memory_bytes}")
        violation += -capacity / budgets.memory_bytes
    cold, loads, fits = _lru_cold_ms(outcomes, allowed, costs, pinned, max(0, capacity))
    if not fits and capacity >= 0:
        problems.append("a request's on-demand models do not fit beside the pinned ones")
        violation += 0.5
    remote_now = forced | cascaded
    if budgets.remote_rtt_ms is None:  # offline: forced requests get no right answer
        remote_now = np.zeros(n, bool)
        ok = np.array([eligible[i] and o.local_ok for i, o in enumerate(outcomes)])
    else:
        ok = np.array([o.remote_ok if remote_now[i] else o.local_ok for i, o in enumerate(outcomes)])
    local_ms = (np.array([o.local_ms for o in outcomes]) + cold) * budgets.cpu_factor
    local = local_ms[eligible & ~remote_now]
    p50, p95 = (float(np.percentile(local, 50)), float(np.percentile(local, 95))) if len(local) else (0.0, 0.0)
    if p95 > budgets.latency_ms:
        problems.append(f"local p95 {p95:.2f} ms exceeds the latency budget {budgets.latency_ms} ms")
        violation += p95 / budgets.latency_ms - 1
    rtt = budgets.remote_rtt_ms or 0.0
    total_ms = np.where(remote_now, np.array([o.remote_ms for o in outcomes]) + rtt
                        + np.where(eligible, local_ms, 0.0), local_ms)
    e = Expectation(
        accuracy=float(ok.mean()), remote_rate=float(remote_now.mean()), forced_rate=int(forced.sum()) / n,
        cascade_rate=k / max(1, int(eligible.sum())), fallback_threshold=threshold, local_p50_ms=p50,
        local_p95_ms=p95, p95_ms=float(np.percentile(total_ms, 95)), pinned_bytes=pinned_bytes, cold_loads=loads,
        feasible=not problems, violation=violation, problems=tuple(problems))
    return e, {"ok": ok, "remote": remote_now, "local": eligible & ~remote_now, "local_ms": local_ms,
               "total_ms": total_ms}


def evaluate(outcomes: Sequence[Outcome], costs: Sequence[ModelCost], decisions: Mapping[str, str],
             budgets: Budgets, remote_rate: float | None = None,
             region: frozenset[str] | None = None) -> Expectation:
    """Expected figures of ``decisions`` on the replayed ``outcomes`` under ``budgets``.

    Args:
        outcomes: replayed requests (indices in ``models`` refer to ``costs``).
        costs: per-model costs, in the index order the outcomes use.
        decisions: model id -> one of DECISIONS (a missing id counts as excluded).
        budgets: the platform's budgets.
        remote_rate: overrides ``budgets.remote_rate`` (for curves).
        region: niche values served; requests of other niches go remote outside the remote budget.

    Returns:
        The expectation (``feasible`` False with ``problems`` when a budget is broken).

    Raises:
        ValueError: no outcomes, or an unknown decision.
    """
    return _simulate(outcomes, costs, decisions, budgets, remote_rate, region)[0]


def _rank(e: Expectation) -> tuple:
    return (-round(e.violation, 9), round(e.accuracy, 9), -round(e.remote_rate, 9), -e.pinned_bytes)


def pin_for(allowed: Iterable[int], outcomes: Sequence[Outcome], costs: Sequence[ModelCost],
            memory_bytes: int) -> frozenset[int]:
    """Which allowed models to pin: all when they fit together, else the ones that save the most
    cold-load time per byte, keeping room for the largest request's other models."""
    allowed = sorted(set(allowed))
    if sum(costs[i].bytes for i in allowed) <= memory_bytes:
        return frozenset(allowed)
    demand = {i: 0 for i in allowed}
    for o in outcomes:
        if all(m in demand for m in o.models):
            for m in set(o.models):
                demand[m] += 1
    order = sorted(allowed, key=lambda i: (-demand[i] * costs[i].load_ms / max(1, costs[i].bytes), i))
    pinned: set[int] = set()
    for i in order:
        rest = [j for j in allowed if j not in pinned and j != i]
        # room for two on-demand models at once (a coalition), the largest ones
        room = sum(sorted((costs[j].bytes for j in rest), reverse=True)[:2])
        if sum(costs[j].bytes for j in pinned) + costs[i].bytes + room <= memory_bytes:
            pinned.add(i)
    return frozenset(pinned)


def _decide(allowed: frozenset[int], outcomes, costs, budgets, region) -> tuple[dict[str, str], Expectation]:
    pinned = pin_for(allowed, outcomes, costs, budgets.memory_bytes)
    decisions = {c.id: "pinned" if i in pinned else "on_demand" if i in allowed else "excluded"
                 for i, c in enumerate(costs)}
    return decisions, evaluate(outcomes, costs, decisions, budgets, region=region)


def optimise(outcomes: Sequence[Outcome], costs: Sequence[ModelCost], budgets: Budgets,
             region: frozenset[str] | None = None) -> Plan:
    """Choose pinned / on-demand / excluded for every model to maximise expected accuracy.

    Greedy forward selection from the empty set and backward elimination from every candidate,
    each followed by single add/remove moves while they help; the better end point wins. A model
    is never allowed when it alone exceeds the memory budget, or (with ``region``) when it has
    niches and none of them is in the region.

    Args:
        outcomes, costs, budgets: as for :func:`evaluate`.
        region: the niche values this device serves (None: all).

    Returns:
        The best plan found, feasible whenever any plan tried was.
    """
    candidates = frozenset(i for i, c in enumerate(costs) if c.bytes <= budgets.memory_bytes
                           and (region is None or not c.niches or c.niches & region))
    cache: dict[frozenset[int], tuple[dict[str, str], Expectation]] = {}

    def score(allowed: frozenset[int]):
        if allowed not in cache:
            cache[allowed] = _decide(allowed, outcomes, costs, budgets, region)
        return cache[allowed]

    def climb(start: frozenset[int]) -> frozenset[int]:
        current = start
        while True:
            moves = [current | {i} for i in candidates - current] + [current - {i} for i in current]
            if not moves:
                return current
            best = max(moves, key=lambda a: (_rank(score(a)[1]), -len(a)))
            if _rank(score(best)[1]) <= _rank(score(current)[1]):
                return current
            current = best

    ends = [climb(frozenset()), climb(candidates)]
    best = max(ends, key=lambda a: _rank(score(a)[1]))
    decisions, expected = score(best)
    return Plan(decisions, expected)


def curve(outcomes: Sequence[Outcome], costs: Sequence[ModelCost], decisions: Mapping[str, str],
          budgets: Budgets, rates: Sequence[float],
          region: frozenset[str] | None = None) -> list[tuple[float, float]]:
    """(realised remote rate, expected accuracy) of fixed ``decisions`` as the remote budget varies."""
    out = []
    for r in rates:
        e = evaluate(outcomes, costs, decisions, budgets, remote_rate=r, region=region)
        out.append((e.remote_rate, e.accuracy))
    return out


def per_niche(outcomes: Sequence[Outcome], costs: Sequence[ModelCost], decisions: Mapping[str, str],
              budgets: Budgets, region: frozenset[str] | None = None) -> dict[str, dict[str, float]]:
    """Expected accuracy, remote rate and local p95 of a plan per request niche (one global cascade)."""
    _, arrays = _simulate(outcomes, costs, decisions, budgets, None, region)
    niches = np.array([o.niche for o in outcomes])
    out = {}
    for name in sorted(set(niches.tolist())):
        sel = niches == name
        local = arrays["local_ms"][sel & arrays["local"]]
        out[name] = {"requests": int(sel.sum()), "accuracy": float(arrays["ok"][sel].mean()),
                     "remote_rate": float(arrays["remote"][sel].mean()),
                     "local_p95_ms": float(np.percentile(local, 95)) if len(local) else 0.0}
    return out

"""Replay request traces against eviction policies under a byte budget. Pure: no I/O or clock.

A trace is a sequence of (time_s, model_id). ``replay`` runs an online policy (``lru``, the
runtime's ``cost_aware`` policy from :mod:`.policy` — the loss rule or LRU, whichever of the two
:class:`~.policy.Experts` says lost less lately —, ``cost_aware_only`` (the loss rule alone), or ``belady``: evict the model needed furthest
in the future, optimal in misses when sizes are equal) and counts misses, missed bytes, miss cost
and thrash (reloads within ``thrash_window_s`` of the model's eviction). ``optimum_cost`` is the
exact offline minimum of total miss cost for any sizes and costs (dynamic programming over
resident sets; demand loading is optimal, so only evictions are chosen), for up to 16 models.
``online_optimum_cost`` is the best an online policy can do in expectation when requests are drawn
independently from known probabilities (a Markov decision process, solved exactly): the gap
between the two is what not seeing the future costs any policy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .policy import Entry, Experts, ModelCost, belady_victim, choose_victims, decayed, lru_victims, on_access

POLICIES = ("cost_aware", "lru", "belady", "cost_aware_only")


@dataclass(frozen=True)
class ReplayResult:
    """Counters of one replay."""

    requests: int
    misses: int
    miss_bytes: int
    request_bytes: int
    miss_cost_ms: float
    reloads_in_window: int

    def as_dict(self) -> dict:
        return {"miss_ratio": round(self.misses / max(self.requests, 1), 5),
                "byte_miss_ratio": round(self.miss_bytes / max(self.request_bytes, 1), 5),
                "miss_cost_ms": round(self.miss_cost_ms, 3),
                "thrash_rate": round(self.reloads_in_window / max(self.misses, 1), 5),
                "misses": self.misses}


def _next_uses(ids: Sequence[str]) -> list[int]:
    """For each position, the position of the next request of the same model (or 'never')."""
    nxt, last = [0] * len(ids), {}
    for i in range(len(ids) - 1, -1, -1):
        nxt[i] = last.get(ids[i], 1 << 62)
        last[ids[i]] = i
    return nxt


def replay(trace: Sequence[tuple[float, str]], costs: dict[str, ModelCost], budget_bytes: int,
           policy: str, thrash_window_s: float = 10.0) -> ReplayResult:
    """Replay ``trace`` under ``policy``; every model must fit the budget on its own."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
    ids = [m for _, m in trace]
    nxt = _next_uses(ids) if policy == "belady" else None
    resident: OrderedDict[str, None] = OrderedDict()
    entries: dict[str, Entry] = {}
    next_use: dict[str, int] = {}
    evicted_at: dict[str, float] = {}
    ghost: dict[str, tuple[float, int]] = {}  # model -> (demand, request number when counted)
    experts = Experts(budget_bytes) if policy == "cost_aware" else None
    used = 0
    misses = miss_bytes = request_bytes = thrash = 0
    cost_ms = 0.0
    for i, (t, m) in enumerate(trace):
        c = costs[m]
        request_bytes += c.size_bytes
        if nxt is not None:
            next_use[m] = nxt[i]
        demand, seen = ghost.get(m, (0.0, i))
        hit = m in resident
        if hit:
            resident.move_to_end(m)
            entries[m] = on_access(decayed(demand, seen, i), c)
            ghost[m] = (entries[m].demand, i)
            if experts is not None:
                experts.access(m, c, entries[m])
            continue
        misses += 1
        miss_bytes += c.size_bytes
        cost_ms += c.miss_cost
        if m in evicted_at and t - evicted_at[m] <= thrash_window_s:
            thrash += 1
        free = budget_bytes - used
        if experts is not None:
            victims = experts.victims(list(resident), entries, {k: costs[k].size_bytes for k in resident},
                                      c.size_bytes, free)
            if victims is None:
                raise ValueError(f"model {m!r} does not fit the budget of {budget_bytes} bytes")
        elif policy == "lru":
            victims = lru_victims(resident, {k: costs[k].size_bytes for k in resident}, c.size_bytes, free) or []
        elif policy == "belady":
            victims, pool = [], list(resident)
            while free < c.size_bytes:
                v = belady_victim(pool, next_use)
                pool.remove(v)
                victims.append(v)
                free += costs[v].size_bytes
        else:
            victims = choose_victims({k: entries[k] for k in resident}, {k: costs[k].size_bytes for k in resident},
                                     (), c.size_bytes, free)
            if victims is None:
                raise ValueError(f"model {m!r} does not fit the budget of {budget_bytes} bytes")
        for v in victims:
            del resident[v]
            entries.pop(v, None)
            used -= costs[v].size_bytes
            evicted_at[v] = t
        resident[m] = None
        used += c.size_bytes
        entries[m] = on_access(decayed(demand, seen, i), c)
        ghost[m] = (entries[m].demand, i)
        if experts is not None:
            experts.access(m, c, entries[m])
    return ReplayResult(len(trace), misses, miss_bytes, request_bytes, cost_ms, thrash)


def optimum_cost(trace: Sequence[tuple[float, str]], costs: dict[str, ModelCost], budget_bytes: int) -> float:
    """Exact minimum total miss cost of ``trace`` over all eviction schedules (offline).

    DP over resident sets S: after serving request r, ``D[S] = min(M[S], M[S - r] + cost(r))`` for
    feasible S holding r, where M is the superset minimum of the previous D (evicting is free).
    O(len(trace) * n * 2^n); n <= 16 models.
    """
    models = sorted({m for _, m in trace})
    bit, sets, feasible = _resident_sets(models, costs, budget_bytes, "the exact optimum")
    d = np.full(len(sets), np.inf)
    d[0] = 0.0
    for _, m in trace:
        sup = _min_over(d, len(models), supersets=True)  # sup[S] = min over P >= S of d[P]
        b = bit[m]
        has = (sets & b) != 0
        new = np.full(len(sets), np.inf)
        idx = sets[has & feasible]
        new[idx] = np.minimum(sup[idx], sup[idx ^ b] + costs[m].miss_cost)
        d = new
    return float(d.min())


def online_optimum_cost(trace: Sequence[tuple[float, str]], costs: dict[str, ModelCost], budget_bytes: int,
                        phases: Sequence[tuple[int, dict[str, float]]], tol: float = 1e-7,
                        max_iter: int = 5000) -> float:
    """Miss cost of the best *online* policy on ``trace`` when requests are drawn independently
    from known probabilities: the reference no policy without sight of the future can beat in
    expectation (the exact offline optimum sees every future request).

    Each phase is an average-cost Markov decision process over resident sets: a request for a
    resident model costs 0; a miss on m costs ``miss_cost(m)`` and moves to the best feasible
    subset of S + {m} holding m. Solved by relative value iteration (damped by 1/2, which makes
    it converge on periodic chains), then the optimal decisions are replayed on the trace.

    Args:
        phases: (first request index, model -> probability) in order; the policy switches its
            decisions at each phase's start (it knows when popularity shifts, a generous oracle).

    Raises:
        ValueError: more than 16 models, or a phase whose probabilities do not sum to 1 (a model a
            phase does not name has probability 0).
    """
    models = sorted(costs)
    bit, sets, feasible = _resident_sets(models, costs, budget_bytes, "the online optimum")
    miss = np.array([costs[m].miss_cost for m in models])
    values = [_relative_values(len(models), sets, feasible, miss, np.array([p.get(m, 0.0) for m in models]),
                               tol, max_iter) for _, p in phases]
    starts = [s for s, _ in phases]
    state, total, phase = 0, 0.0, 0
    for i, (_, m) in enumerate(trace):
        while phase + 1 < len(starts) and i >= starts[phase + 1]:
            phase += 1
        b = bit[m]
        if state & b:
            continue
        total += costs[m].miss_cost
        grown = state | b
        if feasible[grown]:
            state = grown
            continue
        h = values[phase]
        options = sets[((sets & ~grown) == 0) & ((sets & b) != 0) & feasible]
        state = int(options[np.argmin(h[options])])
    return total


def _relative_values(n: int, sets: np.ndarray, feasible: np.ndarray, miss: np.ndarray, prob: np.ndarray,
                     tol: float, max_iter: int) -> np.ndarray:
    """Relative values h(S) of the average-cost process (see :func:`online_optimum_cost`)."""
    if np.any(prob < 0) or not np.isclose(prob.sum(), 1.0):
        raise ValueError("phase probabilities must be >= 0 and sum to 1")
    h = np.where(feasible, 0.0, np.inf)
    for _ in range(max_iter):
        step = np.zeros_like(h)
        for i in range(n):
            b = 1 << i
            has = (sets & b) != 0
            best = _min_over(np.where(has & feasible, h, np.inf), n, supersets=False)  # over subsets holding i
            step += prob[i] * np.where(has, h, miss[i] + best[sets | b])
        step = np.where(feasible, step - step[0], np.inf)
        new = 0.5 * h + 0.5 * step
        diff = new[feasible] - h[feasible]
        h = new
        if diff.max() - diff.min() < tol:
            break
    return h


def _resident_sets(models: list[str], costs: dict[str, ModelCost], budget_bytes: int,
                   what: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Every resident set as a bit mask: (model -> its bit, the masks, which fit the budget)."""
    if len(models) > 16:
        raise ValueError(f"{what} handles at most 16 models, there are {len(models)}")
    bit = {m: 1 << i for i, m in enumerate(models)}
    sets = np.arange(1 << len(models))
    size = np.zeros(len(sets))
    for m, b in bit.items():
        size += ((sets & b) != 0) * costs[m].size_bytes
    return bit, sets, size <= budget_bytes


def _min_over(values: np.ndarray, n: int, supersets: bool) -> np.ndarray:
    """For every set S, the minimum of ``values`` over the supersets (or the subsets) of S."""
    out = values.copy()
    for i in range(n):
        v = out.reshape(-1, 2, 1 << i)
        if supersets:
            np.minimum(v[:, 0, :], v[:, 1, :], out=v[:, 0, :])
        else:
            np.minimum(v[:, 1, :], v[:, 0, :], out=v[:, 1, :])
    return out

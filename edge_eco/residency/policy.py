"""Eviction policy: cost-aware GreedyDual-Size-Frequency (GDSF). Pure: no I/O, clock or globals.

Each resident model carries a priority ``H = L + demand * miss_cost / size``: ``miss_cost`` is what
a later miss of the model would cost (its reload time plus, when the reload would make a request
miss its deadline, the fallback penalty), ``size`` its footprint, ``demand`` its request count
(halving every ``HALF_LIFE_REQUESTS``, kept after eviction; router look-ahead adds to it) and ``L`` the inflation value: the
priority of the last victim. Victims are the idle models of lowest priority; ``L`` rising to the
victims' priority ages models that are no longer asked for (Cao & Irani 1997; Cherkasova 1998).
With equal sizes and costs and demand 1 this is LRU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class ModelCost:
    """What a model costs to keep and to miss."""

    size_bytes: int
    load_ms: float
    fallback_ms: float = 0.0  # paid on a miss when load + inference would break the deadline

    @property
    def miss_cost(self) -> float:
        return self.load_ms + self.fallback_ms


@dataclass(frozen=True)
class Entry:
    """A model's policy state: its priority and decayed demand."""

    priority: float
    demand: float


def miss_cost_ms(load_ms: float, run_ms: float, deadline_ms: float | None, fallback_ms: float) -> float:
    """Cost of a miss: the reload, plus the fallback penalty when reload + run misses the deadline."""
    late = deadline_ms is not None and load_ms + run_ms > deadline_ms
    return load_ms + (fallback_ms if late else 0.0)


HALF_LIFE_REQUESTS = 2000.0  # demand halves every 2,000 requests to the runtime (popularity shifts)


def decayed(demand: float, last_seen: int, now: int, half_life: float = HALF_LIFE_REQUESTS) -> float:
    """``demand`` counted at request number ``last_seen``, aged to request number ``now``."""
    return demand * 0.5 ** (max(now - last_seen, 0) / half_life)


def on_access(demand: float, cost: ModelCost, inflation: float, weight: float = 1.0) -> Entry:
    """The entry of a model after a request for it (hit or load).

    Args:
        demand: its decayed demand so far (kept across evictions: a ghost record), 0 if new.
        inflation: the policy's current L.
        weight: 1 for a request; less for a look-ahead (the router ranked it among candidates).
    """
    demand = demand + weight
    return Entry(inflation + demand * cost.miss_cost / max(cost.size_bytes, 1), demand)


def choose_victims(entries: dict[str, Entry], sizes: dict[str, int], pinned: Iterable[str],
                   need_bytes: int, free_bytes: int) -> tuple[list[str], float] | None:
    """Idle models to evict, lowest priority first, until ``need_bytes`` fit.

    Args:
        entries: resident model -> policy state.
        sizes: resident model -> bytes it frees when evicted.
        pinned: models that may not be evicted (in use, loading, or the one being loaded).
        free_bytes: bytes free in the budget now.

    Returns:
        (victims, new inflation) or None when evicting every idle model would not be enough.
    """
    if need_bytes <= free_bytes:
        return [], None
    blocked = set(pinned)
    order = sorted((e.priority, k) for k, e in entries.items() if k not in blocked)
    chosen, free, inflation = [], free_bytes, None
    for priority, key in order:
        chosen.append(key)
        free += sizes[key]
        inflation = priority
        if need_bytes <= free:
            return chosen, inflation
    return None


def belady_victim(resident: Sequence[str], next_use: dict[str, int]) -> str:
    """The resident model whose next request is furthest away (never: infinitely far)."""
    return max(resident, key=lambda k: (next_use.get(k, 1 << 62), k))

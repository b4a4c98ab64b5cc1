"""Eviction policy: expected miss cost per byte. Pure: no I/O, clock or globals.

Each resident model carries a priority ``demand * miss_cost / size``: ``miss_cost`` is what a
later miss of the model would cost (its reload time plus, when reload + inference would break
the request's deadline, the fallback penalty), ``size`` its footprint and ``demand`` its request
count, halving every ``HALF_LIFE_REQUESTS`` and kept after eviction (a ghost record), to which the
router's look-ahead candidates add. Victims are the idle models of lowest priority, ties in LRU
order. This is GreedyDual-Size-Frequency (Cherkasova 1998) with exponential decay in place of
its inflation value: on the traces of ``edge-eco bench residency`` the decay alone came closer to
the offline optimum in 9 of 12 trace/budget pairs (it ages models as well, without forgetting a
model's history when it is evicted).
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


def on_access(demand: float, cost: ModelCost, weight: float = 1.0) -> Entry:
    """The entry of a model after a request for it (hit or load).

    Args:
        demand: its decayed demand so far (kept across evictions: a ghost record), 0 if new.
        weight: 1 for a request; less for a look-ahead (the router ranked it among candidates).
    """
    demand = demand + weight
    return Entry(demand * cost.miss_cost / max(cost.size_bytes, 1), demand)


def choose_victims(entries: dict[str, Entry], sizes: dict[str, int], pinned: Iterable[str],
                   need_bytes: int, free_bytes: int) -> list[str] | None:
    """Idle models to evict, lowest priority first, until ``need_bytes`` fit.

    Args:
        entries: resident model -> policy state.
        sizes: resident model -> bytes it frees when evicted.
        pinned: models that may not be evicted (in use, loading, or the one being loaded).
        free_bytes: bytes free in the budget now.

    Returns:
        The victims, or None when evicting every idle model would not be enough. Ties go to the
        model listed first in ``entries`` (callers list least recently used first).
    """
    if need_bytes <= free_bytes:
        return []
    blocked = set(pinned)
    order = sorted((e.priority, i, k) for i, (k, e) in enumerate(entries.items()) if k not in blocked)
    chosen, free = [], free_bytes
    for _, _, key in order:
        chosen.append(key)
        free += sizes[key]
        if need_bytes <= free:
            return chosen
    return None


def belady_victim(resident: Sequence[str], next_use: dict[str, int]) -> str:
    """The resident model whose next request is furthest away (never: infinitely far)."""
    return max(resident, key=lambda k: (next_use.get(k, 1 << 62), k))

"""State records of the residency manager: a model's slot and the counters. No behaviour."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..backends import Session
from ..errors import BudgetError
from .footprint import Footprint


class _Busy(BudgetError):
    """The model fits the budget, but the models that would make room are in use right now."""


@dataclass(eq=False)  # slots are compared by identity
class _Slot:
    session: Session | None = None
    bytes: int = 0            # charged to the ledger now
    reserved: int = 0         # what the last load reserved (the prediction the measurement checks)
    file_bytes: int = 0       # of which file-backed (freed by demotion)
    cold: bool = False
    users: int = 0
    loading: threading.Event | None = None
    error: BaseException | None = None
    paths: frozenset[str] = frozenset()


@dataclass
class ResidencyStats:
    """Counters of loads, evictions and demotions, with their times in ms and the accounting error
    of every load whose footprint was measured (|charged - measured| / measured)."""

    loads: int = 0
    evictions: int = 0
    demotions: int = 0
    overshoots: int = 0
    load_ms: list[float] = field(default_factory=list)
    evict_ms: list[float] = field(default_factory=list)
    accounting_error: list[float] = field(default_factory=list)
    measured: dict[str, Footprint] = field(default_factory=dict)
    load_times: dict[str, float] = field(default_factory=dict)  # model -> last load ms
    failed_loads: int = 0   # loads that raised (each one tried: not the refusals while backing off)
    refused_loads: int = 0  # misses refused at once while their model's failed load backs off

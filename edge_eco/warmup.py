"""Warming an ecology before it serves: load every model and run one request through each.

A server that reports ready before its models are loaded makes its first clients pay the loads
(0.68 s for models/minilm measured here), so their first low-confidence requests miss a 200 ms
deadline, and a device's half-open breaker probe against a freshly restarted server fails and
doubles its cool-down. ``edge-eco serve`` therefore warms before it binds its port: until then
clients see "connection refused" (a fast, honest failure), afterwards a warm server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EdgeEcoError

__all__ = ["WarmReport", "warm"]

WARM_TEXT = "hello, what can you do"


@dataclass(frozen=True)
class WarmReport:
    """What warming did."""

    models: int
    warm_ms: float
    resident_bytes: int


def warm(eco: Any, text: str | None = None) -> WarmReport:
    """Load every model of ``eco`` (within its memory budget) and run one request through each,
    then one through the whole request path (featurizer, router, judge), never sent remote.

    Models are visited in manifest order; when the budget cannot hold them all, the residency
    evicts the least recently used as usual, so what stays resident is what the budget allows.

    Args:
        eco: an open Ecology.
        text: the warming request; by default ``WARM_TEXT``, or for an ecology that takes sensor
            windows an all-zero window (inside every sensor range).
    Returns:
        A WarmReport (models visited, time taken, resident bytes afterwards).
    Raises:
        EdgeEcoError: a model cannot be loaded or run (better now than on a client's request).
    """
    t0 = time.perf_counter()
    if text is None:  # a dense ecology's request is a window of numbers, not text
        text = WARM_TEXT if eco.feature_dim is None else np.zeros(eco.feature_dim, np.float32)
    ids = [m.id for m in eco.manifest.models]
    for model_id in ids:
        try:
            eco.predict_with(model_id, text)
        except EdgeEcoError as exc:  # a run error does not name its model; say which one
            raise type(exc)(f"model {model_id!r} fails the warm-up request: {exc}") from exc
    eco.answer(text, local_only=True)
    return WarmReport(len(ids), (time.perf_counter() - t0) * 1e3, int(eco.stats()["resident_bytes"]))

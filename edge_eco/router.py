"""The router's decision: a pure function of the request features and the router weights.

A linear-softmax router scores every candidate model (int8 weights [dim, K], per-candidate
scale and bias), masks the ineligible ones, and returns candidates best first with calibrated
probabilities. A later issue moves this into the C kernel; this numpy form is its reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import IntegrityError, RoutingError


@dataclass(frozen=True)
class RouterWeights:
    """Router arrays (usually views of a memory-mapped file)."""

    weight: np.ndarray  # int8 [dim, K]
    scale: np.ndarray   # float32 [K]
    bias: np.ndarray    # float32 [K]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        k = self.weight.shape[1] if self.weight.ndim == 2 else -1
        if self.weight.dtype != np.int8 or self.scale.shape != (k,) or self.bias.shape != (k,):
            raise IntegrityError("router weights: expected int8 weight [dim, K], scale [K] and bias [K]")


@dataclass(frozen=True)
class Route:
    """Candidates (indices into the router's candidate list) best first, with probabilities."""

    order: tuple[int, ...]
    probs: tuple[float, ...]

    @property
    def confidence(self) -> float:
        """Probability of the best candidate."""
        return self.probs[0]


def route(w: RouterWeights, indices: np.ndarray, values: np.ndarray, eligible: np.ndarray) -> Route:
    """Score candidates for one request and rank the eligible ones.

    Args:
        indices: int32 [nnz] feature indices in [0, dim).
        values: float32 [nnz] feature values.
        eligible: bool [K] mask of candidates allowed for this request.

    Raises:
        RoutingError: no candidate is eligible.
    """
    if not eligible.any():
        raise RoutingError("no model is eligible for this request")
    logits = (values @ w.weight[indices].astype(np.float32)) * w.scale + w.bias
    allowed = np.flatnonzero(eligible)
    z = logits[allowed] / w.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    rank = np.argsort(-z, kind="stable")  # by logit: ties broken by index, never by underflow
    return Route(tuple(int(allowed[i]) for i in rank), tuple(float(p[i]) for i in rank))

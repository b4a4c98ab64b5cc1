"""The router's decision: a pure function of the request features and the router weights.

A linear-softmax router scores every candidate model (int8 weights [dim, K], per-candidate
scale and bias), masks the ineligible ones, and returns candidates best first with calibrated
probabilities. Scoring is fixed-point (values rounded to 1/32768, integer accumulation), so the
C kernel (``ee_router_route``) and :func:`linear_logits` give bit-identical logits in any order.
"""

from __future__ import annotations

import math
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
    """Score candidates for one request and rank the eligible ones (numpy reference path).

    Args:
        indices: int32 [nnz] feature indices in [0, dim).
        values: float32 [nnz] feature values.
        eligible: bool [K] mask of candidates allowed for this request.

    Raises:
        RoutingError: no candidate is eligible.
    """
    return softmax_route(linear_logits(w, indices, values), eligible, w.temperature)


def softmax_route(logits: np.ndarray, eligible: np.ndarray, temperature: float) -> Route:
    """Rank eligible candidates by logit (ties by index) with tempered softmax probabilities.

    Plain Python over K <= 64 floats: for arrays this small numpy's per-call overhead is most of
    the cost (measured 19 us with numpy, ~3 us like this).
    """
    flags = eligible.tolist()
    allowed = [i for i, ok in enumerate(flags) if ok]
    if not allowed:
        raise RoutingError("no model is eligible for this request")
    values = logits.tolist()
    z = [values[i] / temperature for i in allowed]
    top = max(z)
    ex = [math.exp(v - top) for v in z]
    total = sum(ex)
    rank = sorted(range(len(allowed)), key=lambda j: -z[j])  # stable: equal logits keep index order
    return Route(tuple(allowed[j] for j in rank), tuple(ex[j] / total for j in rank))


# -- "deferral-linear": one logistic correctness predictor per candidate ------------------------

FIXED_ONE = np.float32(32768.0)


@dataclass(frozen=True)
class DeferralWeights:
    """Weights of the deferral router (views of a memory-mapped file, usually).

    Each candidate c has a logistic predictor of "c answers this request correctly":
    p = sigmoid(scale[c] * sum_i q_i W[idx_i, c] / 32768 + bias[c]) with q_i = rint(value_i * 32768);
    candidates are ranked by utility = p - lambda * cost[c].
    """

    weight: np.ndarray  # int8 [dim, K]
    scale: np.ndarray   # float32 [K]
    bias: np.ndarray    # float32 [K]
    cost: np.ndarray    # float32 [K]

    def __post_init__(self) -> None:
        k = self.weight.shape[1] if self.weight.ndim == 2 else -1
        if (self.weight.dtype != np.int8 or not 1 <= k <= 64
                or any(a.shape != (k,) or a.dtype != np.float32 for a in (self.scale, self.bias, self.cost))):
            raise IntegrityError("deferral router: expected int8 weight [dim, K<=64] and float32 "
                                 "scale, bias, cost [K]")


@dataclass(frozen=True)
class Decision:
    """Eligible candidates by utility (best first), their predicted correctness, and all logits."""

    order: tuple[int, ...]
    probs: tuple[float, ...]
    logits: np.ndarray


def linear_logits(w: RouterWeights | DeferralWeights, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 [K] logits, exactly as the C kernel computes them (integer accumulation)."""
    q = np.rint(values.astype(np.float32) * FIXED_ONE).astype(np.int64)
    acc = (w.weight[indices].astype(np.int64) * q[:, None]).sum(axis=0)
    return acc.astype(np.float32) * (w.scale * (np.float32(1.0) / FIXED_ONE)) + w.bias


def route_reference(w: DeferralWeights, indices: np.ndarray, values: np.ndarray, eligible: np.ndarray,
                    lam: float) -> Decision:
    """The numpy reference of ``ee_router_route``: same logits, order and probabilities."""
    logits = linear_logits(w, indices, values)
    allowed = np.flatnonzero(eligible)
    p = 1.0 / (1.0 + np.exp(-logits[allowed].astype(np.float64)))
    u = p - lam * w.cost[allowed].astype(np.float64)
    rank = np.argsort(-u, kind="stable")
    return Decision(tuple(int(allowed[i]) for i in rank), tuple(float(p[i]) for i in rank), logits)

"""Learned remote deferral and the controller that holds the remote-call rate on target.

After the local tier has answered, two logistic predictors read the request's sparse features
plus three meta-features of the local answer (1 - confidence, "answer is the reject label", and
their product) and estimate P(gain) (the remote would be right where the local answer is wrong)
and P(loss) (the local answer is right and the remote would be wrong). The expected accuracy
change of a remote call is P(gain) - P(loss): the utility of going remote minus the utility of
staying local. The request goes remote when it exceeds the margin, the price of a remote call.

Both predictors run in the C router kernel (``ee_router_route``, K = 2, the meta-features as
three extra feature rows after ``dim``), with :func:`edge_eco.router.linear_logits` as the
bit-identical numpy reference.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .errors import IntegrityError
from .router import DeferralWeights, linear_logits

N_META = 3


def meta_features(dim: int, confidence: float, is_reject: bool) -> tuple[np.ndarray, np.ndarray]:
    """The three meta-features of a local answer as extra (indices, values) after ``dim``."""
    low = min(1.0, max(0.0, 1.0 - confidence))
    rej = 1.0 if is_reject else 0.0
    return (np.array([dim, dim + 1, dim + 2], np.int32), np.array([low, rej, low * rej], np.float32))


def gain_score(logits: np.ndarray) -> float:
    """P(gain) - P(loss) from the two logits [gain, loss]."""
    gain, loss = logits.tolist()
    return _sigmoid(gain) - _sigmoid(loss)


def _sigmoid(x: float) -> float:
    """Logistic function without overflow for any finite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass
class Deferral:
    """Scores one request's local answer; uses the C kernel when given one."""

    weights: DeferralWeights
    dim: int
    kernel: object | None = None

    def __post_init__(self) -> None:
        if self.weights.weight.shape != (self.dim + N_META, 2):
            raise IntegrityError(f"deferral weights have shape {self.weights.weight.shape}; expected "
                                 f"({self.dim + N_META}, 2) for featurizer dim {self.dim}")

    def score(self, indices: np.ndarray, values: np.ndarray, confidence: float, is_reject: bool) -> float:
        """Expected accuracy change of asking the remote: P(gain) - P(loss)."""
        mi, mv = meta_features(self.dim, confidence, is_reject)
        idx, val = np.concatenate([indices, mi]), np.concatenate([values, mv])
        logits = self.kernel.logits(idx, val) if self.kernel is not None else linear_logits(self.weights, idx, val)
        return gain_score(logits)


class RemoteRateController:
    """Moves the deferral margin so that the share of requests sent remote tracks a target.

    Stochastic approximation: after each decision, margin += gain * (went_remote - target).
    At equilibrium the remote rate equals the target whatever the input distribution; the
    margin never leaves [initial - max_adjust, initial + max_adjust] (bounded authority).
    """

    def __init__(self, margin: float, target: float, gain: float, max_adjust: float) -> None:
        self.initial, self.target, self.gain, self.max_adjust = margin, target, gain, max_adjust
        self._margin = margin
        self._lock = threading.Lock()
        self.decisions = 0
        self.remote = 0

    @property
    def margin(self) -> float:
        """The current margin."""
        return self._margin

    def update(self, went_remote: bool) -> None:
        """Record one decision that could have gone remote."""
        with self._lock:
            self.decisions += 1
            self.remote += went_remote
            m = self._margin + self.gain * (float(went_remote) - self.target)
            self._margin = min(self.initial + self.max_adjust, max(self.initial - self.max_adjust, m))

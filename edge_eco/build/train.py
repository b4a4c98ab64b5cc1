"""Multinomial logistic regression on sparse features, full-batch L-BFGS (build-time only).

Deterministic: no sampling, fixed iteration budget, the same arithmetic for the same inputs.
"""

from __future__ import annotations

import numpy as np

from . import require


def csr_from_features(rows: list[tuple[np.ndarray, np.ndarray]], dim: int):
    """Stack featurizer outputs (indices, values) into a scipy CSR matrix [n, dim]."""
    sp = require("scipy.sparse")
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(i) for i, _ in rows])
    idx = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, np.int32)
    val = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
    return sp.csr_matrix((val.astype(np.float64), idx, indptr), shape=(len(rows), dim))


def fit_softmax(x, y: np.ndarray, n_classes: int, *, l2: float = 1e-4, max_iter: int = 300,
                sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit W [dim, C], b [C] minimising weighted mean NLL + l2/2 ||W||^2.

    Args:
        x: CSR features [n, dim]; y: class index per row [n]; n_classes: C.
        l2: ridge strength; max_iter: L-BFGS iterations; sample_weight: per-row weights [n].

    Returns:
        (W float32 [dim, C], b float32 [C]).
    """
    optimize = require("scipy.optimize")
    n, full_dim = x.shape
    # Columns no training row touches keep weight 0 (their gradient is l2 * 0): optimise only the
    # active ones (about half of a 65,536-wide hashed space on CLINC150), then scatter back.
    active = np.unique(x.indices)
    x = x[:, active]
    dim = len(active)
    sw = np.ones(n) if sample_weight is None else sample_weight.astype(np.float64)
    sw = sw / sw.sum()
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    xt = x.T.tocsr()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:dim * n_classes].reshape(dim, n_classes)
        b = theta[dim * n_classes:]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -(sw * (onehot * logp).sum(axis=1)).sum() + 0.5 * l2 * (w * w).sum()
        g = (np.exp(logp) - onehot) * sw[:, None]
        gw = xt @ g + l2 * w
        return loss, np.concatenate([gw.ravel(), g.sum(axis=0)])

    theta0 = np.zeros(dim * n_classes + n_classes)
    res = optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "maxcor": 10})
    w = np.zeros((full_dim, n_classes), np.float32)
    w[active] = res.x[:dim * n_classes].reshape(dim, n_classes)
    return w, res.x[dim * n_classes:].astype(np.float32)


def fit_temperature(logits: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on held-out data (rounded to 5 digits).

    ``weight``: optional per-row weights [n]; without them every row counts the same.
    """
    optimize = require("scipy.optimize")

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        picked = logp[np.arange(len(y)), y]
        return float(-picked.mean()) if weight is None else float(-(weight * picked).sum() / weight.sum())
    res = optimize.minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded",
                                   options={"xatol": 1e-5})
    return float(round(np.exp(res.x), 5))


def reject_share_weights(y: np.ndarray, reject: int, share: float) -> np.ndarray:
    """Per-row weights [n] that make the reject class ``share`` of the total weight (label shift).

    Rows of one class keep equal weights; the other classes keep their relative proportions.
    """
    is_reject = y == reject
    n_reject = int(is_reject.sum())
    if n_reject == 0 or n_reject == len(y):
        raise ValueError(f"reweighting to a reject share needs rows of both kinds, got {n_reject} of {len(y)}")
    return np.where(is_reject, share / n_reject, (1.0 - share) / (len(y) - n_reject)) * len(y)


def fit_temperature_reject_bias(logits: np.ndarray, y: np.ndarray, reject: int,
                                weight: np.ndarray | None = None) -> tuple[float, float]:
    """(T, b) minimising the weighted NLL of softmax(logits / T + b e_reject) on held-out data.

    Temperature scaling plus one bias on the reject class: the reject class' prior in the training
    data need not be its prior in held-out traffic, and a temperature alone cannot move one class'
    prior. Deterministic (L-BFGS-B from T = 1, b = 0, analytic gradient); both rounded to 5 digits.

    Args:
        logits: [n, C] raw logits; y: gold class index [n]; reject: the reject class' index;
        weight: optional per-row weights [n] (e.g. :func:`reject_share_weights`).
    """
    optimize = require("scipy.optimize")
    n = len(y)
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    w = w / w.sum()
    z64 = np.asarray(logits, np.float64)
    onehot = np.zeros_like(z64)
    onehot[np.arange(n), y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = np.exp(theta[0])
        z = z64 / t
        z[:, reject] += theta[1]
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -float((w * logp[np.arange(n), y]).sum())
        g = (np.exp(logp) - onehot) * w[:, None]  # d loss / d z
        d_log_t = float((g * (-z64 / t)).sum())
        return loss, np.array([d_log_t, float(g[:, reject].sum())])

    res = optimize.minimize(objective, np.zeros(2), jac=True, method="L-BFGS-B",
                            bounds=[(np.log(0.02), np.log(50.0)), (-20.0, 20.0)],
                            options={"maxiter": 200, "ftol": 1e-12, "gtol": 1e-9})
    return float(round(np.exp(res.x[0]), 5)), float(round(res.x[1], 5))


def softmax(z: np.ndarray, t: float, reject: int | None = None, bias: float = 0.0) -> np.ndarray:
    """Row-wise softmax of logits z / t (+ ``bias`` on column ``reject``, as the runtime calibrates)."""
    z = z / t
    if reject is not None and bias != 0.0:
        z[:, reject] += bias
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: returns (int8 [dim, C], float32 scale [C])."""
    scale = np.abs(weight).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale

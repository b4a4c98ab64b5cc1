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


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on held-out data (rounded to 5 digits)."""
    optimize = require("scipy.optimize")

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())
    res = optimize.minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded",
                                   options={"xatol": 1e-5})
    return float(round(np.exp(res.x), 5))


def softmax(z: np.ndarray, t: float) -> np.ndarray:
    """Row-wise softmax of logits z / t."""
    z = z / t
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: returns (int8 [dim, C], float32 scale [C])."""
    scale = np.abs(weight).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale

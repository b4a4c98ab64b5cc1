"""The ``mlp`` model family on dense features: train (scikit-learn), quantize to int8 and write as
``.tflite`` (LiteRT) or ``.onnx`` (ONNX Runtime), then read its logits back through the runtime's own
backend, so calibration and thresholds see exactly what serving will. Build-time only.

Deterministic: a fixed ``random_state``, full-batch-free Adam with a seed, and BLAS held to one
thread while training (the caller wraps the build in :func:`one_thread`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from . import require
from .recipe import ModelFamily

MISSING_BIAS = -30.0  # a class with no training example is never predicted


def one_thread():
    """A context in which BLAS and OpenMP use one thread (bit-for-bit repeatable sums)."""
    tp = require("threadpoolctl")
    return tp.threadpool_limits(1)


def weights_count(family: ModelFamily, n_in: int, n_out: int) -> int:
    """Number of weights of an MLP of ``family`` (its cost rank among specialists)."""
    sizes = [n_in, *family.hidden, n_out]
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


def fit_mlp(x: np.ndarray, y: np.ndarray, n_classes: int, family: ModelFamily, seed: int,
            sample_weight: np.ndarray | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train an MLP classifier; returns float64 weights [in, out] and biases per layer, the last layer
    with exactly ``n_classes`` logits (classes absent from ``y`` get a bias of -30).

    Args:
        x: float32 [n, dim] standardized features; y: class index per row [n].
        family: hidden sizes, ``l2`` (alpha), ``max_iter`` epochs, ``learning_rate``.
        seed: scikit-learn's random_state.
    """
    nn = require("sklearn.neural_network")
    clf = nn.MLPClassifier(hidden_layer_sizes=family.hidden, alpha=family.l2, max_iter=family.max_iter,
                           random_state=seed, early_stopping=False, learning_rate_init=family.learning_rate)
    with warnings_quiet():
        clf.fit(x, y, sample_weight=sample_weight) if sample_weight is not None else clf.fit(x, y)
    ws = [w.astype(np.float64) for w in clf.coefs_]
    bs = [b.astype(np.float64) for b in clf.intercepts_]
    if len(clf.classes_) == 2:  # scikit-learn writes one logistic unit for 2 classes: make it 2 logits
        ws[-1] = np.concatenate([-ws[-1] / 2, ws[-1] / 2], axis=1)
        bs[-1] = np.concatenate([-bs[-1] / 2, bs[-1] / 2])
    if len(clf.classes_) != n_classes:
        w = np.zeros((ws[-1].shape[0], n_classes))
        b = np.full(n_classes, MISSING_BIAS)
        w[:, clf.classes_], b[clf.classes_] = ws[-1], bs[-1]
        ws[-1], bs[-1] = w, b
    return ws, bs


@contextlib.contextmanager
def warnings_quiet():
    """Hide scikit-learn's ConvergenceWarning: the recipe's ``max_iter`` is the deliberate budget."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Maximum iterations.*")
        yield


def write_mlp(ws: list[np.ndarray], bs: list[np.ndarray], calib: np.ndarray, out: Path, name: str,
              backend: str, description: str) -> str:
    """Quantize and write the MLP as ``name.tflite`` (full int8; activation ranges from ``calib``) or
    ``name.onnx`` (int8 weights, dynamic int8 activations); returns the file name."""
    if backend == "tflite":
        from .tflite_mlp import quantize_mlp, write_tflite
        q = quantize_mlp(ws, bs, calib)
        (out / f"{name}.tflite").write_bytes(write_tflite(q, description))
        return f"{name}.tflite"
    require("onnx")
    from .onnx_mlp import int8_mlp, save
    save(int8_mlp([w.astype(np.float32) for w in ws], [b.astype(np.float32) for b in bs], name),
         out / f"{name}.onnx", external=False)
    return f"{name}.onnx"


def backend_logits(path: Path, backend: str, xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Logits [n, C] per split of a written model, run one row at a time through the runtime's backend."""
    from ..backends import open_model

    session = open_model(backend, path)
    try:
        return {k: np.stack([np.asarray(session.run({"x": row[None]})).reshape(-1) for row in v])
                for k, v in xs.items()}
    finally:
        session.close()

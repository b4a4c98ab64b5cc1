"""Optional learned remote deferral, fitted on calibration-split outcomes -> ``deferral.bin``.

Each calibration request is answered by the bundle's local tier and by the remote generalist;
it is labelled gain (remote right, local wrong) or loss (local right, remote wrong), and two L2
logistic predictors are fitted on the featurizer's sparse output plus three meta-features of the
local answer (:mod:`edge_eco.deferral`). Weights are int8 per predictor; the margin sends the
target share of calibration requests remote. Deterministic (full-batch L-BFGS, no sampling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .._native import Featurizer
from ..bundle import read_bundle, sha256_file
from ..deferral import N_META, gain_score, meta_features
from ..manifest import DeferralSpec, FileEntry
from ..router import DeferralWeights, linear_logits
from ..routerfile import write_router
from .recipe import DeferralSpec as DeferralRecipe
from .train import csr_from_features, fit_softmax, quantize_columns


def fit_deferral(bundle: Path, texts: Sequence[str], gold: Sequence[str], remote_label: Callable[[str], str],
                 spec: DeferralRecipe, target_remote_rate: float) -> tuple[DeferralSpec, dict]:
    """Fit the gain/loss deferral of ``bundle`` and write ``deferral.bin`` into it.

    Args:
        bundle: the bundle folder (its ecology.toml is read, not rewritten here).
        texts, gold: the calibration split.
        remote_label: the remote generalist's label for a text.
        spec: the recipe's [deferral] settings; target_remote_rate: share of requests to send remote.

    Returns:
        (the manifest's [deferral] entry, a report of counts and the margin).
    """
    import edge_eco

    _, manifest = read_bundle(bundle, verify=False)
    feat = Featurizer(manifest.featurizer)
    dim = manifest.featurizer.dim
    with edge_eco.open(bundle) as eco:
        local = [eco.answer(t, local_only=True) for t in texts]
    local_ok = np.array([a.label == g for a, g in zip(local, gold)])
    remote_ok = np.array([remote_label(t) == g for t, g in zip(texts, gold)])
    rows = []
    for t, a in zip(texts, local):
        idx, val = feat(t.encode())
        mi, mv = meta_features(dim, float(a.confidence), a.label == manifest.reject_label)
        rows.append((np.concatenate([idx, mi]), np.concatenate([val, mv])))
    x = csr_from_features(rows, dim + N_META)
    cols, biases = [], []
    for y in (remote_ok & ~local_ok, local_ok & ~remote_ok):
        w, b = fit_softmax(x, y.astype(int), 2, l2=spec.l2, max_iter=spec.max_iter)
        cols.append(w[:, 1] - w[:, 0])
        biases.append(b[1] - b[0])
    q, scale = quantize_columns(np.stack(cols, axis=1))
    weights = DeferralWeights(q, scale, np.array(biases, np.float32), np.zeros(2, np.float32))
    write_router(bundle / "deferral.bin", "deferral-gain-loss",
                 {"weight": weights.weight, "scale": weights.scale, "bias": weights.bias},
                 {"dim": dim, "meta": N_META})
    scores = np.sort(np.array([gain_score(linear_logits(weights, i, v)) for i, v in rows]), kind="stable")
    margin = float(np.round(scores[min(len(scores) - 1, int(np.searchsorted(
        np.arange(1, len(scores) + 1) / len(scores), 1.0 - target_remote_rate)))], 4))
    entry = DeferralSpec(FileEntry("deferral.bin", sha256_file(bundle / "deferral.bin")), "gain-loss", margin)
    return entry, {"val_requests": len(texts), "val_gain": int((remote_ok & ~local_ok).sum()),
                   "val_loss": int((local_ok & ~remote_ok).sum()), "margin": margin, "l2": spec.l2}

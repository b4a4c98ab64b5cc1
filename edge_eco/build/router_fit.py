"""Router fitting: the one step that turns training features into ``router.bin``.

Kept behind :func:`fit_router` so that another fitting method (e.g. per-model correctness
predictors) can replace it without touching the rest of the build. The file format is
``edge_eco.routerfile``'s ``linear-softmax``: int8 weight [dim, K], float32 scale [K], bias [K].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..featurizer import FeaturizerSpec
from ..routerfile import write_router
from .recipe import ModelFamily
from .train import fit_softmax, fit_temperature, quantize_columns


@dataclass(frozen=True)
class RouterFit:
    """What fitting the router measured: its temperature and its accuracy on the calibration split."""

    temperature: float
    val_accuracy: float


def fit_router(x_train, targets_train: np.ndarray, x_val, targets_val: np.ndarray, *,
               candidates: tuple[str, ...], featurizer: FeaturizerSpec | None, model: ModelFamily,
               out_path: Path, dense_kind: str | None = None) -> RouterFit:
    """Fit a linear-softmax router that picks, per request, the candidate that owns it.

    Args:
        x_train, x_val: CSR featurizer outputs [n, dim] of the train and calibration splits (a dense
            ecology's standardized features, as CSR).
        targets_train, targets_val: index into ``candidates`` of the right model per row.
        candidates: model ids, one per router output.
        featurizer: the text featurizer the features came from (recorded in the file header), or None
            with ``dense_kind`` naming the dense featurizer.
        model: family and training settings from the recipe's [router.model].
        out_path: where ``router.bin`` is written.

    Returns:
        A :class:`RouterFit`; the temperature is fitted on the calibration split.
    """
    w, b = fit_softmax(x_train, targets_train, len(candidates), l2=model.l2, max_iter=model.max_iter)
    q, scale = quantize_columns(w)
    meta = {"dim": int(x_train.shape[1]), "n_out": len(candidates), "featurizer": dense_kind} if featurizer is None \
        else {"dim": featurizer.dim, "n_out": len(candidates), "featurizer": featurizer.version,
              "featurizer_spec": {f: getattr(featurizer, f) for f in featurizer.__dataclass_fields__}}
    write_router(out_path, "linear-softmax", {"weight": q, "scale": scale, "bias": b}, meta)
    z = np.asarray((x_val @ (q.astype(np.float32) * scale)) + b)
    return RouterFit(fit_temperature(z, targets_val), float((z.argmax(1) == targets_val).mean()))

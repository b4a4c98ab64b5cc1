"""Build an ecology bundle from labelled data and a recipe (``edge-eco build``).

Build-time only: the heavy dependencies (scipy for training, onnx for writing models, torch for the
embedding-head export) are
imported inside the functions that need them, through :func:`require`, so the on-device runtime
never imports them and a missing one is reported with the extra that installs it.

Modules: ``recipe`` (the TOML recipe), ``data`` (loading, validation, splits), ``train`` (sparse
logistic regression), ``export`` (int8 ONNX), ``calibrate`` (temperatures, thresholds),
``router_fit`` (the router: one call, swappable), ``deferral_fit`` (optional learned deferral),
``finish`` (test-split metrics, build.json), ``card`` (MODEL_CARD.md), ``pipeline`` (the whole build).
Dense-vector recipes: ``recipe_dense`` (``[dense]``, ``[data.windows]``, the ``mlp`` family),
``recordings`` (raw sensor recordings -> windows), ``train_dense`` (scikit-learn MLPs written by
``tflite_mlp`` or ``onnx_mlp``), ``dense_build`` (the build of a dense bundle).
Embedding-head recipes (``[bundle] kind = "embedding-head"``, the remote generalist): ``recipe_embedding``
(``[encoder]``, ``[head]``), ``embedding_export`` (torch export, int8 quantization, the head appended to the
ONNX graph), ``embedding_head`` (the build of that bundle).
"""

from __future__ import annotations

import importlib

from ..errors import BuildError


def require(module: str):
    """Import a build-only dependency, or say which extra installs it.

    Raises:
        BuildError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BuildError(f"edge-eco build needs {module!r}, which is not installed; install the build extra: "
                         "pip install 'edge_eco[build]'") from exc

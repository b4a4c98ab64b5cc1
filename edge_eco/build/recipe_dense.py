"""The dense-vector parts of a build recipe: ``[dense]`` (the runtime featurizer of the bundle),
``[data.windows]`` (cutting raw recordings into fixed-size windows) and the ``mlp`` model family's
settings. Pure; used by :mod:`edge_eco.build.recipe`.

A dense recipe's rows carry a vector field: the request exactly as the runtime will receive it (a
flattened sensor window, or any fixed-length vector). ``[dense] featurizer`` names how the bundle turns
that request into model features, at build time and at serving time alike (``edge_eco.dense``):
``vector-v1`` uses the vector itself, ``accel-window-v1`` computes per-axis window statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dense import KINDS
from ..errors import RecipeError

BACKENDS = ("tflite", "ort")


@dataclass(frozen=True)
class WindowSpec:
    """``format = "recordings"``: every data file is one recording (rows of ``axes`` numbers), cut into
    windows of ``samples`` rows every ``hop`` rows (``train_hop`` in the train split: overlapping
    windows augment training; val and test windows never overlap)."""

    samples: int
    axes: int
    hop: int
    train_hop: int
    delimiter: str = ","


@dataclass(frozen=True)
class DenseRecipe:
    """``[dense]``: the bundle's dense featurizer. ``samples`` x ``axes`` is the request's shape
    (``vector-v1``: ``samples`` is the vector's length, found from the data when 0, and ``axes`` 1);
    ``max_abs``: readings beyond it are malformed requests."""

    featurizer: str = "vector-v1"
    samples: int = 0
    axes: int = 1
    max_abs: float = 1e9


def parse_windows(t) -> WindowSpec:
    """``[data.windows]`` from a recipe table reader (``recipe._T``)."""
    w = WindowSpec(samples=t.get("samples", int, lo=2, hi=1 << 16), axes=t.get("axes", int, lo=1, hi=64),
                   hop=t.get("hop", int, lo=1), train_hop=t.get("train_hop", int, 0, 0), delimiter=t.get("delimiter", str, ","))
    t.done()
    w = WindowSpec(w.samples, w.axes, w.hop, w.train_hop or w.hop, w.delimiter)
    if w.hop % w.train_hop:
        raise RecipeError(f"data.windows: hop {w.hop} must be a multiple of train_hop {w.train_hop} (the val/test "
                          "windows are a subset of the train grid)")
    if len(w.delimiter) != 1:
        raise RecipeError(f"data.windows.delimiter: one character, got {w.delimiter!r}")
    return w


def parse_dense(t, windows: WindowSpec | None) -> DenseRecipe:
    """``[dense]`` from a recipe table reader; a recordings recipe's window shape is the default."""
    d = DenseRecipe(featurizer=t.choice("featurizer", KINDS, "vector-v1"),
                    samples=t.get("samples", int, windows.samples if windows else 0, 0, 1 << 16),
                    axes=t.get("axes", int, windows.axes if windows else 1, 1, 64),
                    max_abs=t.get("max_abs", float, 1e9, 0.0, 1e30))
    t.done()
    if windows is not None and (d.samples, d.axes) != (windows.samples, windows.axes):
        raise RecipeError(f"dense: samples x axes {d.samples} x {d.axes} differ from data.windows "
                          f"{windows.samples} x {windows.axes}")
    if d.featurizer == "accel-window-v1" and not d.samples:
        raise RecipeError("dense: featurizer 'accel-window-v1' needs samples (rows of a window) and axes")
    if d.featurizer == "vector-v1" and d.axes != 1 and not d.samples:
        raise RecipeError("dense: give samples with axes")
    return d


def mlp_settings(t) -> dict:
    """The ``mlp`` family's extra fields (hidden layer sizes, learning rate, backend)."""
    hidden = t.get("hidden", list, [16])
    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 4096 for h in hidden):
        raise RecipeError(f"{t.where}.hidden: a non-empty list of layer sizes 1-4096, got {hidden!r}")
    return {"hidden": tuple(hidden), "learning_rate": t.get("learning_rate", float, 3e-3, 1e-6, 1.0),
            "backend": t.choice("backend", BACKENDS, "tflite")}


def check_dense(specialists, generalist, router, correctness, remote) -> None:
    """What a dense-vector build does not do (yet), refused before any data is read."""
    models = [("specialists.model", specialists.model), ("generalist.model", generalist.model)]
    models += [(f"specialists.models.{k}", m) for k, m in specialists.models]
    bad = [where for where, m in models if m.family != "mlp"]
    if bad:
        raise RecipeError(f"{', '.join(bad)}: dense vectors train family 'mlp' models (sparse-linear reads text)")
    if router.family != "sparse-linear" or router.hidden:
        raise RecipeError("router.model: a dense router is linear (family 'sparse-linear' over the dense features)")
    if correctness is not None:
        raise RecipeError("router.kind 'correctness' reads text features; a dense recipe uses 'linear-softmax'")
    if remote is not None:
        raise RecipeError("[remote]: the remote generalist clients send text; a dense-vector ecology answers locally "
                          "(remove [remote])")

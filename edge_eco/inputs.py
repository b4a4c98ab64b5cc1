"""Input adapters: a request -> the feeds a model's input contract asks for.

Shared by the runtime (``edge_eco.ecology``) and ``edge-eco profile``, so that a profiled model
runs on exactly the feeds it gets in service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dense import DenseSpec, dim as dense_dim, features as dense_features, standardize, validate_window
from .errors import ManifestError
from .manifest import Manifest, ModelEntry
from .routerfile import read_router

Feeds = dict[str, np.ndarray]


def hashed_feeds(indices: np.ndarray, values: np.ndarray) -> Feeds:
    """Feeds of a ``hashed-text`` model from the featurizer's output (shared by all such models)."""
    return {"indices": indices, "values": values}


def token_adapter(root: Path, entry: ModelEntry) -> Callable[[str], Feeds]:
    """A ``text-tokens`` adapter for ``entry`` (tokenizer loaded once)."""
    from .tokens import TokenEncoder

    encoder = TokenEncoder(root / entry.tokenizer, entry.max_tokens)
    return lambda text: encoder([text])


class DenseAdapter:
    """The dense featurizer of a sensor ecology: window -> standardized features (``edge_eco.dense``)."""

    def __init__(self, spec: DenseSpec, mean: np.ndarray, std: np.ndarray) -> None:
        self.spec, self.mean, self.std = spec, mean, std
        self.dim = mean.shape[0]
        self.indices = np.arange(self.dim, dtype=np.int32)  # the router reads a dense vector as all-nonzero

    def feeds(self, window: Any) -> Feeds:
        """Feeds of every ``dense-vector`` model for one request. Raises RequestError for a malformed window."""
        a = validate_window(window, self.spec)
        return {"x": standardize(dense_features(a[None], self.spec.kind), self.mean, self.std)}


def dense_adapter(root: Path, manifest: Manifest) -> DenseAdapter | None:
    """The ecology's dense featurizer (standardization read from its file), or None for a text ecology.

    Raises:
        ManifestError: the standardization file does not hold a mean and positive std of the right size.
    """
    d = manifest.dense
    if d is None:
        return None
    _, arrays = read_router(root / d.file.path)
    mean, std = arrays.get("mean"), arrays.get("std")
    want = dense_dim(d.axes, d.kind, d.samples)
    if mean is None or std is None or mean.shape != (want,) or std.shape != (want,) or not (std > 0).all():
        raise ManifestError(f"{d.file.path}: expected float32 mean and positive std of {want} features")
    return DenseAdapter(DenseSpec(d.kind, d.samples, d.axes, d.max_abs), np.array(mean), np.array(std))


__all__ = ["DenseAdapter", "dense_adapter", "hashed_feeds", "token_adapter"]

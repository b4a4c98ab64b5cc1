"""A do-nothing-runtime backend for tests: a numpy sparse-linear model stored as ``.npz``.

The file holds ``weight`` float32 [dim, C] and ``bias`` float32 [C]; ``run`` takes the
featurizer's ``indices`` and ``values`` like the ONNX text models and returns ``logits`` [C].
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import InferenceError, ModelLoadError


class FakeSession:
    """A sparse-linear model in numpy; same contract as the ONNX text models."""

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path) as data:
                self.weight, self.bias = data["weight"], data["bias"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelLoadError(f"fake backend cannot read {path.name}: {exc}") from exc

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        idx, val = feeds.get("indices"), feeds.get("values")
        if idx is None or val is None or idx.shape != val.shape or idx.ndim != 1:
            raise InferenceError("fake model needs 1-D 'indices' and 'values' of equal length")
        if idx.size and (idx.min() < 0 or idx.max() >= self.weight.shape[0]):
            raise InferenceError("fake model: feature index out of range")
        return (val[:, None] * self.weight[idx]).sum(axis=0) + self.bias

    def close(self) -> None:
        self.weight = self.bias = None


def open(path: Path, *, output: str = "logits", threads: int = 1, optimize: bool = True,  # noqa: A001
         max_run_ms: float | None = None) -> FakeSession:
    """Load a ``.npz`` sparse-linear model (numpy runs end: ``max_run_ms`` is not needed)."""
    return FakeSession(path)

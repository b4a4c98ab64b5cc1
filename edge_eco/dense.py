"""Dense-vector input contract: accelerometer windows -> standardized feature vectors. Pure numpy.

Featurizer ``accel-window-v1``: a window of ``samples`` x ``axes`` readings (mg) becomes, per
axis, mean, standard deviation, min, max and mean absolute first difference, plus the same five
of the magnitude and the magnitude spectrum's energy in four bands (24 features for 3 axes), then
standardized with the training mean and standard deviation stored in the bundle's
``featurizer.bin`` and clipped to [-8, 8] (the router's fixed-point range). The router and every
model of a dense ecology read the same vector, so training and serving cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RequestError

KIND = "accel-window-v1"
BANDS = 4
CLIP = 8.0


def dim(axes: int) -> int:
    """Feature count for ``axes`` axes: 5 statistics per axis and of the magnitude, plus bands."""
    return 5 * (axes + 1) + BANDS


@dataclass(frozen=True)
class DenseSpec:
    """The dense featurizer of an ecology: window shape and the standardization file."""

    kind: str
    samples: int
    axes: int
    max_abs: float  # the sensor's range; a reading beyond it is a malformed request


def validate_window(window: object, spec: DenseSpec) -> np.ndarray:
    """The request as float32 [samples, axes], or RequestError naming what is wrong with it."""
    try:
        a = np.asarray(window, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"window must be numbers shaped [{spec.samples}, {spec.axes}]: {exc}") from exc
    if a.shape != (spec.samples, spec.axes):
        if a.size == spec.samples * spec.axes and a.ndim == 1:
            a = a.reshape(spec.samples, spec.axes)
        else:
            raise RequestError(f"window has shape {list(a.shape)}; the ecology expects "
                               f"[{spec.samples}, {spec.axes}] (samples x axes)")
    if not np.isfinite(a).all():
        raise RequestError("window holds NaN or infinity")
    if np.abs(a).max(initial=0.0) > spec.max_abs:
        raise RequestError(f"window holds a reading beyond the sensor range ±{spec.max_abs:g}")
    return a


def raw_features(windows: np.ndarray) -> np.ndarray:
    """float32 [n, dim] unstandardized features of windows float [n, samples, axes]."""
    w = np.asarray(windows, dtype=np.float64)
    mag = np.sqrt((w ** 2).sum(axis=2, keepdims=True))
    x = np.concatenate([w, mag], axis=2) / 1000.0  # mg -> g
    stats = [x.mean(1), x.std(1), x.min(1), x.max(1), np.abs(np.diff(x, axis=1)).mean(1)]
    spec = np.abs(np.fft.rfft(x[:, :, -1] - x[:, :, -1].mean(1, keepdims=True), axis=1)) ** 2
    bands = np.array_split(spec[:, 1:], BANDS, axis=1)
    energy = np.stack([np.log1p(b.sum(1)) for b in bands], axis=1)
    return np.concatenate(stats + [energy], axis=1).astype(np.float32)


def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(raw - mean) / std, clipped to ±CLIP, float32."""
    return np.clip((raw - mean) / std, -CLIP, CLIP).astype(np.float32)

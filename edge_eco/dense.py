"""Dense-vector input contract: sensor windows or plain vectors -> standardized features. Pure numpy.

Featurizer ``vector-v1``: the request is a vector of ``samples`` numbers (``axes`` 1) and is itself the
feature vector, standardized like the window features below.

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
VECTOR = "vector-v1"
KINDS = (VECTOR, KIND)
BANDS = 4
CLIP = 8.0


def dim(axes: int, kind: str = KIND, samples: int = 0) -> int:
    """Feature count: for ``accel-window-v1``, 5 statistics per axis and of the magnitude plus the
    bands; for ``vector-v1``, the request's length ``samples * axes``."""
    return samples * axes if kind == VECTOR else 5 * (axes + 1) + BANDS


@dataclass(frozen=True)
class DenseSpec:
    """The dense featurizer of an ecology: window shape and the standardization file."""

    kind: str
    samples: int
    axes: int
    max_abs: float  # the sensor's range; a reading beyond it is a malformed request


def describe(spec: DenseSpec) -> str:
    """What one request of this featurizer is, in words (for messages)."""
    if spec.kind == VECTOR:
        return f"vectors of {spec.samples * spec.axes} floats"
    return f"windows of [{spec.samples}, {spec.axes}] numbers (samples x axes)"


def validate_window(window: object, spec: DenseSpec) -> np.ndarray:
    """The request as float32 [samples, axes], or RequestError naming what is wrong with it."""
    want = f"[{spec.samples}, {spec.axes}] (samples x axes)"
    if isinstance(window, (str, bytes, bytearray)):
        raise RequestError(f"this ecology takes {describe(spec)}, not text (got {type(window).__name__})")
    if window is None or isinstance(window, dict):
        raise RequestError(f"window must be an array of numbers shaped {want}, got {type(window).__name__}")
    try:
        raw = np.asarray(window)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise RequestError(f"window must be an array of numbers shaped {want}: {exc}") from exc
    if raw.dtype.kind not in "iuf":  # no bool, complex, datetime, strings or objects
        raise RequestError(f"window must hold real numbers (ints or floats), got dtype {raw.dtype}")
    if isinstance(window, (list, tuple)) and any(  # numpy casts a bool mixed with numbers silently
            isinstance(v, bool) for row in window for v in (row if isinstance(row, (list, tuple)) else (row,))):
        raise RequestError("window must hold real numbers (ints or floats), got a bool")
    a = raw
    if a.shape != (spec.samples, spec.axes):
        if a.size == spec.samples * spec.axes and a.ndim == 1:
            a = a.reshape(spec.samples, spec.axes)
        else:
            raise RequestError(f"window has shape {list(a.shape)}; the ecology expects {want}")
    # Checked before the cast to float32, which turns a float64 reading past its range into
    # infinity (with a RuntimeWarning); max/min, not abs, which wraps the most negative integer.
    if not np.isfinite(a).all():
        raise RequestError("window holds NaN or infinity")
    if a.max() > spec.max_abs or a.min() < -spec.max_abs:
        raise RequestError(f"window holds a reading beyond the sensor range ±{spec.max_abs:g}")
    return a.astype(np.float32, copy=False)


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


def features(windows: np.ndarray, kind: str) -> np.ndarray:
    """float32 [n, dim] unstandardized features of requests float [n, samples, axes] for featurizer ``kind``."""
    if kind == VECTOR:
        w = np.asarray(windows, dtype=np.float32)
        return w.reshape(len(w), -1)
    return raw_features(windows)


def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(raw - mean) / std, clipped to ±CLIP, float32."""
    return np.clip((raw - mean) / std, -CLIP, CLIP).astype(np.float32)

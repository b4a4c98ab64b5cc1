"""The STM32 HAR accelerometer data (``stm32_har``, BSD-3): files -> labelled windows.

Each CSV is one recording (1,000 rows of ``x, y, z`` in mg at 26 Hz) in a folder named by its
class. Splits are by file, never by window, so windows of one recording stay on one side:
per class, the files sorted by name go test, val, train, train, train, test, val, ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import Example
from .errors import RequestError

CLASSES = ("running", "stationary", "walking")
SAMPLES, AXES = 52, 3  # 2 s windows at 26 Hz


def split_files(folder: Path, split: str) -> list[tuple[Path, str]]:
    """(csv path, label) of the recordings in ``split`` (train/val/test)."""
    want = {"test": 0, "val": 1}.get(split)
    if split not in ("train", "val", "test"):
        raise RequestError(f"split {split!r} is not one of ['test', 'train', 'val']")
    out = []
    for label in CLASSES:
        files = sorted((folder / label).glob("*.csv"))
        if not files:
            raise RequestError(f"{folder / label}: no CSV recordings; is {folder} the stm32_har folder?")
        out += [(f, label) for i, f in enumerate(files) if (i % 5 == want if want is not None else i % 5 >= 2)]
    return out


def read_recording(path: Path) -> np.ndarray:
    """int32 [rows, 3] readings of one CSV recording."""
    try:
        a = np.loadtxt(path, delimiter=",", dtype=np.int32, ndmin=2)
    except ValueError as exc:
        raise RequestError(f"{path}: not rows of 'x, y, z' integers ({exc})") from exc
    if a.shape[1] != AXES:
        raise RequestError(f"{path}: {a.shape[1]} columns where x, y, z are expected")
    return a


def windows(recording: np.ndarray, hop: int) -> np.ndarray:
    """float32 [n, SAMPLES, AXES] windows every ``hop`` rows."""
    starts = range(0, len(recording) - SAMPLES + 1, hop)
    return np.stack([recording[s:s + SAMPLES] for s in starts]).astype(np.float32)


def load_har(folder: str | Path, split: str, hop: int | None = None) -> list[Example]:
    """Labelled windows of ``split`` (non-overlapping unless ``hop`` says otherwise)."""
    out = []
    for path, label in split_files(Path(folder), split):
        for w in windows(read_recording(path), hop or SAMPLES):
            out.append(Example(f"{path.stem}", label, w))
    return out


def is_har_folder(path: Path) -> bool:
    """True when ``path`` looks like the stm32_har folder (one sub-folder per class)."""
    return path.is_dir() and all((path / c).is_dir() for c in CLASSES)

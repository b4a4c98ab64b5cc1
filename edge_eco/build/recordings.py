"""Data format ``recordings``: each file is one recording of a sensor (rows of ``axes`` numbers, no
header), cut into fixed-size windows that become the vector field of labelled rows. Shell module
(reads files); the label and any niche come from the path (``stm32_har/{label}/*.csv``) or from the
file's constant ``fields``.

Windows start every ``train_hop`` rows; :func:`keep_window` later keeps, in val and test, only those
on the coarser ``hop`` grid, so evaluation windows never overlap while training windows may. A
recording's windows stay together in one split (split by file: ``[split] mode = "by-recording"`` or a
split per file), so overlapping windows cannot leak a recording from train into test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .recipe_dense import WindowSpec


def read_recording(path: Path, spec: WindowSpec) -> np.ndarray:
    """float64 [rows, axes] readings of one recording.

    Raises:
        DataError: unreadable file, a field that is not a number, a row of another width, NaN or
        infinity, fewer rows than one window.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read recording {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(spec.delimiter)
        if len(fields) != spec.axes:
            raise DataError(f"{path}:{n}: {len(fields)} field(s) where a recording row has {spec.axes} "
                            f"(data.windows.axes), separated by {spec.delimiter!r}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not a number ({exc}); a recording is rows of numbers, no header") from exc
    a = np.array(rows, dtype=np.float64).reshape(-1, spec.axes)
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
        raise DataError(f"{path}: NaN or infinity in the readings (first at data row {bad + 1})")
    if len(a) < spec.samples:
        raise DataError(f"{path}: {len(a)} rows, fewer than one window of {spec.samples} (data.windows.samples)")
    return a


def window_records(path: Path, spec: WindowSpec, vector_field: str) -> list[tuple[dict, str, int]]:
    """(record with the flattened window under ``vector_field``, where, start row) per window."""
    a = read_recording(path, spec)
    out = []
    for start in range(0, len(a) - spec.samples + 1, spec.train_hop):
        w = a[start:start + spec.samples].reshape(-1)
        out.append(({vector_field: w}, f"{path.name}@{start}", start))
    return out


def keep_window(start: int | None, split: str, spec: WindowSpec | None) -> bool:
    """Whether a window starting at ``start`` stays in ``split`` (val/test: on the ``hop`` grid only)."""
    return spec is None or start is None or split == "train" or start % spec.hop == 0


def split_by_recording(groups_by_label: dict[str, list[str]], cycle: tuple[str, ...]) -> dict[str, str]:
    """recording -> split: per label, the recordings in name order take the splits of ``cycle`` in turn."""
    out = {}
    for label in sorted(groups_by_label):
        for i, g in enumerate(sorted(set(groups_by_label[label]), key=lambda p: (Path(p).name, p))):
            out.setdefault(g, cycle[i % len(cycle)])
    return out

"""Staging a challenger: read ``challenger.toml``, check it fits the ecology, copy its files.

A challenger is refused unless it can really stand in for its champion: the same labels and
input, the same featurizer (a ``[featurizer]`` table in ``challenger.toml``, when present, must
equal the ecology's), a version of its own, files that match their sha256, and a model that,
run once on a probe text, gives one output per label. Staged files go to
``population/staged/<id>-<version>/``; the folder is recorded relative to the bundle root, so a
copied or moved bundle keeps its challengers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import backends, tomlread
from ._native import Featurizer
from .archive import entry_to_text
from .bundle import sha256_file
from .errors import EdgeEcoError, ManifestError, StoreError
from .featurizer import FeaturizerSpec
from .inputs import hashed_feeds
from .manifest import FileEntry, Manifest, ModelEntry, model_entry
from .swap import copy_atomic

PROBE_TEXT = b"what is on my calendar for tomorrow"


def read_spec(folder: Path, m: Manifest) -> tuple[ModelEntry, tuple[FileEntry, ...], dict]:
    """Parse and check ``folder/challenger.toml`` against the ecology ``m``.

    Returns:
        (the challenger's entry, its files, its lineage table).

    Raises:
        ManifestError: malformed, names no model of the ecology, or differs from the champion
            in labels, input or featurizer, or reuses the champion's version.
    """
    try:
        spec = tomlread.loads((folder / "challenger.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlread.TOMLDecodeError) as exc:
        raise ManifestError(f"{folder}/challenger.toml: {exc}") from exc
    if "model" not in spec:
        raise ManifestError(f"{folder}/challenger.toml: missing [model] table")
    entry = model_entry(spec["model"])
    champion = m.model(entry.id)
    name = f"challenger {entry.id} v{entry.version}"
    if entry.labels != champion.labels or entry.input != champion.input:
        raise ManifestError(f"{name}: labels/input differ from the champion's")
    if entry.version == champion.version:
        raise ManifestError(f"challenger {entry.id}: version {entry.version!r} is the champion's version")
    if entry.input != "hashed-text" or m.featurizer is None:
        raise ManifestError(f"{name}: shadow evaluation supports hashed-text models only (input {entry.input!r})")
    if "featurizer" in spec:
        try:
            theirs = FeaturizerSpec(**spec["featurizer"])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{name}: [featurizer] is invalid: {exc}") from exc
        if theirs != m.featurizer:
            raise ManifestError(f"{name}: its [featurizer] {theirs} differs from the ecology's {m.featurizer}; "
                                "it was trained on other features")
    files = (entry.file,) + tuple(FileEntry(f["path"], f["sha256"]) for f in spec.get("files", []))
    return entry, files, dict(spec.get("lineage", {}))


def probe(entry: ModelEntry, folder: Path, m: Manifest) -> None:
    """Run the challenger once on a probe text; it must give one output per label.

    Raises:
        ManifestError: the model does not load or run, or its output size is not ``len(labels)``.
    """
    name = f"challenger {entry.id} v{entry.version}"
    try:
        session = backends.open_model(entry.backend, folder / entry.file.path, output=entry.output, optimize=False,
                                      max_run_ms=m.policy.max_run_ms)
        out = np.asarray(session.run(hashed_feeds(*Featurizer(m.featurizer)(PROBE_TEXT)))).reshape(-1)
    except EdgeEcoError as exc:
        raise ManifestError(f"{name}: the model does not run: {exc}") from exc
    if out.size != len(entry.labels):
        raise ManifestError(f"{name}: the model gives {out.size} outputs for {len(entry.labels)} labels")


def stage(root: Path, folder: Path, m: Manifest) -> tuple[ModelEntry, str, dict]:
    """Check the challenger in ``folder`` and copy its files into the bundle at ``root``.

    Returns:
        (its entry, the staged folder relative to ``root``, its lineage with files and entry).

    Raises:
        ManifestError: see :func:`read_spec` and :func:`probe`.
        StoreError: a file is missing, does not match its sha256, or cannot be copied.
    """
    entry, files, lineage = read_spec(folder, m)
    for f in files:
        src = folder / f.path
        if not src.is_file() or sha256_file(src) != f.sha256:
            raise StoreError(f"challenger file {src} is missing or does not match its sha256")
    probe(entry, folder, m)
    rel = f"population/staged/{entry.id}-{entry.version}"
    try:
        (root / rel).mkdir(parents=True, exist_ok=True)
        for f in files:  # new files renamed into place: a shadow session may map the ones they replace
            copy_atomic(folder / f.path, root / rel / f.path)
    except OSError as exc:
        raise StoreError(f"staging challenger {entry.id} v{entry.version} failed: {exc}") from exc
    lineage["files"] = [[f.path, f.sha256] for f in files]
    lineage["entry"] = entry_to_text(entry)
    return entry, rel, lineage

"""Archive of model versions: content-addressed files with lineage, bounded in bytes.

Files live in ``objects/<sha256>`` (one copy per content, shared by versions that share a file);
each archived version's manifest entry, file list, lineage (parent, training data fingerprint,
metrics) and standing are rows of the ``archive`` table of the outcome store. Over the byte
budget, versions are evicted in this order: never champions before prior champions, less
behaviourally diverse (lower ``diversity``; unmeasured counts as 0) before more, older before
newer. ``diversity`` is the error disagreement with the champion: stored by the controller from
feedback-labelled shadow pairs when it archives a version (promote, rollback, retire), and by
``edge-eco diversity ECOLOGY --archive`` (:mod:`edge_eco.archive_score`) on labelled requests.
An evicted version keeps its row (lineage survives) but can no longer be restored.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import sha256_file
from .errors import StoreError
from .manifest import FileEntry, ModelEntry, model_entry
from .store import Store
from .tomlwrite import _model as _model_lines


@dataclass(frozen=True)
class Archived:
    """One archived model version."""

    capability: str
    version: str
    entry: ModelEntry
    files: tuple[FileEntry, ...]
    bytes: int
    parent: str | None
    data_fingerprint: str | None
    metrics: dict
    was_champion: bool
    diversity: float | None
    archived_ts: float
    evicted: bool


def entry_to_text(entry: ModelEntry) -> str:
    """A model entry as a TOML ``[[models]]`` table."""
    return "\n".join(_model_lines(entry)) + "\n"


def entry_from_text(text: str) -> ModelEntry:
    """Inverse of :func:`entry_to_text`. Raises ManifestError."""
    return model_entry(tomllib.loads(text)["models"][0])


class Archive:
    """The archive of one ecology, in ``folder`` with its index in ``store``."""

    def __init__(self, folder: Path, store: Store, budget_bytes: int, *, create: bool = True) -> None:
        self.folder, self.store, self.budget_bytes = Path(folder), store, budget_bytes
        if create:
            try:
                (self.folder / "objects").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the archive {self.folder}: {exc}") from exc

    def put(self, root: Path, entry: ModelEntry, files: tuple[FileEntry, ...], *, lineage: dict[str, Any],
            was_champion: bool, diversity: float | None = None) -> None:
        """Archive ``entry`` with its ``files`` (paths relative to ``root``), then apply the byte budget.

        Raises:
            StoreError: a file is missing, does not match its sha256, or cannot be copied.
        """
        total = 0
        for f in files:
            obj = self.folder / "objects" / f.sha256
            total += (root / f.path).stat().st_size
            if obj.is_file():
                continue
            tmp = _tmp_name(obj)  # unique: two processes may archive the same object at once
            try:
                shutil.copyfile(root / f.path, tmp)
                if sha256_file(tmp) != f.sha256:
                    raise StoreError(f"{f.path} does not match its sha256; not archived")
                os.replace(tmp, obj)
            except OSError as exc:
                raise StoreError(f"archiving {f.path} failed: {exc}") from exc
            finally:
                tmp.unlink(missing_ok=True)
        old = self.get(entry.id, entry.version)
        self.store.execute(
            "INSERT OR REPLACE INTO archive VALUES (?,?,?,?,?,?,?,?,?,?,?,0)",
            (entry.id, entry.version, entry_to_text(entry), json.dumps([[f.path, f.sha256] for f in files]), total,
             lineage.get("parent"), lineage.get("data_fingerprint"), json.dumps(lineage.get("metrics", {})),
             int(was_champion or bool(old and old.was_champion)),
             diversity if diversity is not None else (old.diversity if old else None),
             old.archived_ts if old else time.time()))
        self.enforce_budget(protect={(entry.id, entry.version)})

    def get(self, capability: str, version: str) -> Archived | None:
        """The archived version, or None."""
        rows = self.store.query("SELECT * FROM archive WHERE capability=? AND version=?", (capability, version))
        return _row(rows[0]) if rows else None

    def list(self, capability: str | None = None) -> list[Archived]:
        """Archived versions (of one capability, or all), newest first."""
        where, args = ("WHERE capability=?", (capability,)) if capability else ("", ())
        return [_row(r) for r in self.store.query(f"SELECT * FROM archive {where} ORDER BY archived_ts DESC", args)]

    def set_diversity(self, capability: str, version: str, diversity: float) -> None:
        """Record a behavioural diversity score (see the module doc) used by eviction."""
        self.store.execute("UPDATE archive SET diversity=? WHERE capability=? AND version=?",
                           (diversity, capability, version))

    def restore(self, root: Path, capability: str, version: str) -> Archived:
        """Put the files of an archived version back into the bundle at ``root`` (where missing).

        Raises:
            StoreError: no such version, it was evicted, or a file is corrupt in the bundle.
        """
        a = self.get(capability, version)
        if a is None:
            raise StoreError(f"{capability} version {version!r} is not in the archive")
        if a.evicted:
            raise StoreError(f"{capability} version {version!r} was evicted from the archive (budget)")
        for f in a.files:
            dest = root / f.path
            if dest.is_file():
                if sha256_file(dest) == f.sha256:
                    continue
                raise StoreError(f"{dest} exists with other content; refusing to overwrite it")
            obj = self.folder / "objects" / f.sha256
            tmp = _tmp_name(dest)
            try:
                if not obj.is_file():
                    raise StoreError(f"archive object {obj} ({capability} v{version}: {f.path}) is missing")
                shutil.copyfile(obj, tmp)
                if sha256_file(tmp) != f.sha256:  # checked on the copy: what gets installed is what was checked
                    raise StoreError(f"archive object {obj} ({capability} v{version}: {f.path}) is corrupt: "
                                     "its sha256 does not match; nothing restored")
                os.replace(tmp, dest)
            except OSError as exc:
                raise StoreError(f"restoring {f.path} from archive object {obj} failed: {exc}") from exc
            finally:
                tmp.unlink(missing_ok=True)
        return a

    def enforce_budget(self, protect: set[tuple[str, str]] = frozenset()) -> list[tuple[str, str]]:
        """Evict versions (lowest priority first) until the live ones fit the byte budget."""
        live = [a for a in self.list() if not a.evicted]
        # unique bytes: objects shared between versions count once
        def used(items: list[Archived]) -> int:
            return sum({f.sha256: a.bytes / max(1, len(a.files)) for a in items for f in a.files}.values())
        evicted = []
        order = sorted(live, key=lambda a: (a.was_champion, a.diversity or 0.0, a.archived_ts))
        while self.budget_bytes and used(live) > self.budget_bytes and order:
            victim = order.pop(0)
            if (victim.capability, victim.version) in protect:
                continue
            live.remove(victim)
            self.store.execute("UPDATE archive SET evicted=1 WHERE capability=? AND version=?",
                               (victim.capability, victim.version))
            keep = {f.sha256 for a in live for f in a.files}
            for f in victim.files:
                if f.sha256 not in keep:
                    (self.folder / "objects" / f.sha256).unlink(missing_ok=True)
            evicted.append((victim.capability, victim.version))
        return evicted

    def bytes_used(self) -> int:
        """Bytes of the object files now in the archive."""
        objects = self.folder / "objects"
        return sum(p.stat().st_size for p in objects.iterdir() if p.is_file()) if objects.is_dir() else 0


def _tmp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _row(r: tuple) -> Archived:
    return Archived(r[0], r[1], entry_from_text(r[2]), tuple(FileEntry(p, s) for p, s in json.loads(r[3])), r[4],
                    r[5], r[6], json.loads(r[7]), bool(r[8]), r[9], r[10], bool(r[11]))

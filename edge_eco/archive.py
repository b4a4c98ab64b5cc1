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

The table is mirrored in ``index.json`` beside ``objects/`` (rewritten atomically after every change),
so the archive outlives a damaged outcome database: ``Archive(folder, None, ...)`` reads and writes
that file alone (rollback's emergency path), and a fresh database whose table is empty takes its
rows from it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import tomlread
from .bundle import sha256_file
from .errors import StoreError
from .manifest import FileEntry, ModelEntry, model_entry
from .store import Store
from .swap import write_atomic
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
    return model_entry(tomlread.loads(text)["models"][0])


INDEX_NAME = "index.json"
_UPSERT = "INSERT OR REPLACE INTO archive VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"


class Archive:
    """The archive of one ecology, in ``folder`` with its index in ``store`` and ``index.json``
    (``store`` None: the outcome database is unusable; the index file alone, see the module doc)."""

    def __init__(self, folder: Path, store: Store | None, budget_bytes: int, *, create: bool = True) -> None:
        self.folder, self.store, self.budget_bytes = Path(folder), store, budget_bytes
        self.index_path = self.folder / INDEX_NAME
        if create:
            try:
                (self.folder / "objects").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the archive {self.folder}: {exc}") from exc
            if store is not None:
                self._sync_index()

    # -- the index: the store's table, mirrored in index.json ------------------------------------
    def _sync_index(self) -> None:
        """An empty table takes the index file's rows (a damaged database was moved aside); a table
        with no index file writes it (archives made before the file existed)."""
        rows = self.store.query("SELECT * FROM archive")
        if rows and not self.index_path.is_file():
            self._save(rows)
        elif not rows and self.index_path.is_file():
            self.store.transaction([(_UPSERT, r) for r in self._load()])

    def _load(self) -> list[tuple]:
        if not self.index_path.is_file():
            return []
        try:
            return [tuple(r) for r in json.loads(self.index_path.read_text())["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"archive index {self.index_path} is unreadable: {exc}") from exc

    def _save(self, rows: list[tuple]) -> None:
        write_atomic(self.index_path, json.dumps({"rows": [list(r) for r in rows]}, indent=0).encode())

    def _rows(self) -> list[tuple]:
        return self._load() if self.store is None else self.store.query("SELECT * FROM archive")

    def _upsert(self, row: tuple) -> None:
        if self.store is not None:
            self.store.execute(_UPSERT, row)
            self._save(self.store.query("SELECT * FROM archive"))
        else:
            rows = {(r[0], r[1]): r for r in self._load()}
            rows[(row[0], row[1])] = row
            self._save(list(rows.values()))

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
        self._upsert(
            (entry.id, entry.version, entry_to_text(entry), json.dumps([[f.path, f.sha256] for f in files]), total,
             lineage.get("parent"), lineage.get("data_fingerprint"), json.dumps(lineage.get("metrics", {})),
             int(was_champion or bool(old and old.was_champion)),
             diversity if diversity is not None else (old.diversity if old else None),
             old.archived_ts if old else time.time(), 0))
        self.enforce_budget(protect={(entry.id, entry.version)})

    def get(self, capability: str, version: str) -> Archived | None:
        """The archived version, or None."""
        found = [a for a in self.list(capability) if a.version == version]
        return found[0] if found else None

    def list(self, capability: str | None = None) -> list[Archived]:
        """Archived versions (of one capability, or all), newest first."""
        found = [_row(r) for r in self._rows() if capability is None or r[0] == capability]
        return sorted(found, key=lambda a: a.archived_ts, reverse=True)

    def set_diversity(self, capability: str, version: str, diversity: float) -> None:
        """Record a behavioural diversity score (see the module doc) used by eviction."""
        a = self.get(capability, version)
        if a is not None:
            self._upsert(_unrow(replace(a, diversity=diversity)))

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
            self._upsert(_unrow(replace(victim, evicted=True)))
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


def _unrow(a: Archived) -> tuple:
    """Inverse of :func:`_row`: the ``archive`` table row of ``a``."""
    return (a.capability, a.version, entry_to_text(a.entry), json.dumps([[f.path, f.sha256] for f in a.files]),
            a.bytes, a.parent, a.data_fingerprint, json.dumps(a.metrics), int(a.was_champion), a.diversity,
            a.archived_ts, int(a.evicted))


def _row(r: tuple) -> Archived:
    return Archived(r[0], r[1], entry_from_text(r[2]), tuple(FileEntry(p, s) for p, s in json.loads(r[3])), r[4],
                    r[5], r[6], json.loads(r[7]), bool(r[8]), r[9], r[10], bool(r[11]))

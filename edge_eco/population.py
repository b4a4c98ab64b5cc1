"""Population governance of one ecology bundle: challengers, the controller, changes, audit.

State lives beside the manifest in ``<bundle>/population/``: ``outcomes.db`` (the outcome store:
decisions, feedback, shadow pairs, challengers, proposals, audit log, archive index),
``staged/`` (registered challengers' files) and ``archive/objects/``.

The controller only **proposes** (promote, reject); the manifest's ``[governance].auto_apply``
says which kinds apply at once, the rest wait for :meth:`Population.approve`
(``edge-eco population approve``). Every change of the population is an atomic manifest swap
(:mod:`edge_eco.swap`) followed by an audit entry (who, what, why, manifest hashes).
A running :class:`~edge_eco.ecology.Ecology` keeps the manifest it opened; reopen it to serve
the change.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .archive import Archive, entry_to_text
from .bundle import read_bundle, sha256_file
from .errors import ManifestError, StoreError
from .manifest import FileEntry, Manifest, ModelEntry, model_entry
from .outcomes import Challenger, Recorder, Shadow, decode_vote, right
from .promotion import Pair, PromotionRule, Verdict, decide
from .store import Retention, Store
from .swap import swap_manifest


@dataclass(frozen=True)
class Proposal:
    """A change the controller proposes."""

    id: int
    ts: float
    capability: str
    kind: str
    version: str
    reason: str
    evidence: dict
    status: str


def model_files(m: Manifest, entry: ModelEntry) -> tuple[FileEntry, ...]:
    """The model file of ``entry`` and its companions (``x.onnx.data``) listed in ``m.files``."""
    return (entry.file,) + tuple(f for f in m.files if f.path.startswith(entry.file.path + "."))


def rule_of(m: Manifest) -> PromotionRule:
    """The promotion rule configured in the manifest's ``[governance]``."""
    g = m.governance
    return PromotionRule(g.min_pairs, g.looks, g.alpha, g.slice_alpha, g.min_gain, g.cooldown_s)


class Population:
    """Governance of the ecology bundle at ``root``. Close it (or use ``with``).

    Raises:
        ManifestError, IntegrityError: the bundle does not open. StoreError: the store does not.
    """

    def __init__(self, root: str | Path) -> None:
        self.root, self.manifest = read_bundle(root)
        self.dir = self.root / "population"
        g = self.manifest.governance
        self.store = Store(self.dir / "outcomes.db", retention=Retention(g.max_rows, g.max_bytes))
        self.archive = Archive(self.dir / "archive", self.store, g.archive_bytes)

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> "Population":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- challengers ---------------------------------------------------------------------------
    def add_challenger(self, folder: str | Path, *, who: str) -> Challenger:
        """Register the challenger in ``folder`` (``challenger.toml`` + files) for shadow evaluation.

        Raises:
            ManifestError: challenger.toml is malformed, names no model of the ecology, or has
                another label space. IntegrityError/StoreError: a file is missing or corrupt.
        """
        folder = Path(folder)
        try:
            spec = tomllib.loads((folder / "challenger.toml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ManifestError(f"{folder}/challenger.toml: {exc}") from exc
        if "model" not in spec:
            raise ManifestError(f"{folder}/challenger.toml: missing [model] table")
        entry = model_entry(spec["model"])
        champion = self.manifest.model(entry.id)
        if entry.labels != champion.labels or entry.input != champion.input:
            raise ManifestError(f"challenger {entry.id} v{entry.version}: labels/input differ from the champion's")
        if entry.version == champion.version:
            raise ManifestError(f"challenger {entry.id}: version {entry.version!r} is the champion's version")
        files = (entry.file,) + tuple(FileEntry(f["path"], f["sha256"]) for f in spec.get("files", []))
        staged = self.dir / "staged" / f"{entry.id}-{entry.version}"
        staged.mkdir(parents=True, exist_ok=True)
        for f in files:
            src = folder / f.path
            if not src.is_file() or sha256_file(src) != f.sha256:
                raise StoreError(f"challenger file {src} is missing or does not match its sha256")
            shutil.copyfile(src, staged / f.path)
        lineage = dict(spec.get("lineage", {}))
        lineage["files"] = [[f.path, f.sha256] for f in files]
        lineage["entry"] = entry_to_text(entry)
        self.store.execute("INSERT OR REPLACE INTO challengers VALUES (?,?,?,?,?,?,NULL)",
                           (entry.id, entry.version, "shadow", str(staged), json.dumps(lineage), time.time()))
        self._audit(who, "register", entry.id, champion.version, entry.version,
                    f"challenger registered from {folder} (parent {lineage.get('parent', '?')})")
        return Challenger(entry, staged)

    def challengers(self, status: str | None = "shadow") -> list[tuple[Challenger, str, dict]]:
        """Registered challengers (with a status filter; None: all): (challenger, status, lineage)."""
        rows = self.store.query("SELECT capability, version, status, folder, lineage FROM challengers"
                                + (" WHERE status=?" if status else "") + " ORDER BY registered_ts",
                                (status,) if status else ())
        out = []
        for cap, version, st, folder, lineage in rows:
            lin = json.loads(lineage)
            out.append((Challenger(model_entry(tomllib.loads(lin["entry"])["models"][0]), Path(folder)), st, lin))
        return out

    def attach(self, eco: Any, *, seed: int = 0) -> Recorder:
        """Record ``eco``'s answers in this bundle's outcome store, with its challengers in shadow.

        The recorder owns its own store connection and is closed by ``eco.close()``.
        """
        g = self.manifest.governance
        store = Store(self.store.path, retention=self.store.retention)
        active = [c for c, _, _ in self.challengers()]
        shadow = Shadow(eco, store, active, rate=g.shadow_rate, cpu_share=g.shadow_cpu_share, seed=seed) \
            if active else None
        rec = Recorder(store, store_text=g.store_text, shadow=shadow)
        eco.attach_recorder(rec)
        return rec

    # -- evidence and the controller -----------------------------------------------------------
    def pairs(self, ch: Challenger) -> list[Pair]:
        """Feedback-labelled shadow pairs of ``ch`` against the current champion, oldest first."""
        champ = self.manifest.model(ch.capability)
        champ_id = f"{champ.version}:{champ.file.sha256[:12]}"
        rows = self.store.query(
            "SELECT s.champion_label, s.challenger_label, f.label FROM shadow s JOIN feedback f USING (request_id)"
            " WHERE s.capability=? AND s.challenger=? AND s.champion=? ORDER BY s.ts, s.rowid",
            (ch.capability, f"{ch.entry.version}:{ch.entry.file.sha256[:12]}", champ_id))
        own = set(champ.labels) - {champ.decline_label}
        out = []
        for a, b, truth in rows:
            (la, da), (lb, db) = decode_vote(a), decode_vote(b)
            out.append(Pair(right(champ, la, da, truth), right(ch.entry, lb, db, truth),
                            truth if truth in own else "(other niches)"))
        return out

    def last_change_s(self, capability: str) -> float | None:
        """Time of the last promote/rollback of ``capability`` (None: never)."""
        rows = self.store.query("SELECT max(ts) FROM audit WHERE capability=? AND action IN ('promote','rollback')",
                                (capability,))
        return rows[0][0]

    def evaluate(self, ch: Challenger, now_s: float) -> Verdict:
        """The promotion rule's verdict on ``ch`` now."""
        return decide(self.pairs(ch), now_s=now_s, last_change_s=self.last_change_s(ch.capability),
                      rule=rule_of(self.manifest))

    def review(self, *, now_s: float | None = None, who: str = "controller") -> list[tuple[Proposal, bool]]:
        """Run the controller: propose what the evidence supports, apply what policy allows.

        Returns:
            (proposal, applied) for every proposal made in this review.
        """
        now_s = time.time() if now_s is None else now_s
        made = []
        for ch, _, _ in self.challengers():
            v = self.evaluate(ch, now_s)
            if v.action == "wait":
                continue
            pending = self.store.query("SELECT id FROM proposals WHERE capability=? AND version=? AND kind=? "
                                       "AND status='pending'", (ch.capability, ch.entry.version, v.action))
            if pending:
                continue
            evidence = {"n": v.n, "champion_only": v.champion_only, "challenger_only": v.challenger_only,
                        "p_better": v.p_better, "p_worse": v.p_worse, "regressed": list(v.regressed)}
            pid = self.store.execute("INSERT INTO proposals VALUES (NULL,?,?,?,?,?,?,'pending',NULL,NULL)",
                                     (now_s, ch.capability, v.action, ch.entry.version, v.reason, json.dumps(evidence)))
            auto = v.action in self.manifest.governance.auto_apply
            if auto:
                self.approve(pid, who=who, now_s=now_s)
            made.append((self.proposal(pid), auto))
        return made

    def proposals(self, status: str | None = None) -> list[Proposal]:
        """Proposals, newest first (optionally only one status: pending, applied, declined)."""
        rows = self.store.query("SELECT * FROM proposals" + (" WHERE status=?" if status else "") + " ORDER BY id DESC",
                                (status,) if status else ())
        return [Proposal(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows]

    def proposal(self, pid: int) -> Proposal:
        """One proposal. Raises StoreError when there is none."""
        for p in self.proposals():
            if p.id == pid:
                return p
        raise StoreError(f"no proposal {pid}")

    def approve(self, pid: int, *, who: str, now_s: float | None = None) -> Proposal:
        """Apply a pending proposal (promote, rollback: manifest swap; reject: retire the challenger).

        Raises:
            StoreError: no such pending proposal, or the change failed (the manifest is unchanged).
        """
        p = self.proposal(pid)
        if p.status != "pending":
            raise StoreError(f"proposal {pid} is {p.status}, not pending")
        if p.kind == "promote":
            self._promote(p, who)
        elif p.kind == "rollback":
            self.rollback(p.capability, to_version=p.version, who=who, why=p.reason)
        else:
            self.store.execute("UPDATE challengers SET status='rejected', decided_ts=? WHERE capability=? AND version=?",
                               (time.time(), p.capability, p.version))
            self._audit(who, "reject", p.capability, self.manifest.model(p.capability).version, p.version, p.reason)
        self.store.execute("UPDATE proposals SET status='applied', decided_by=?, decided_ts=? WHERE id=?",
                           (who, time.time() if now_s is None else now_s, pid))
        return self.proposal(pid)

    # -- changes ---------------------------------------------------------------------------------
    def _swap(self, old: ModelEntry, new: ModelEntry, new_files: tuple[FileEntry, ...]) -> tuple[str, str]:
        m = self.manifest
        old_files = {f.path for f in model_files(m, old)[1:]}
        files = tuple(f for f in m.files if f.path not in old_files) + tuple(new_files[1:])
        models = tuple(new if x.id == old.id else x for x in m.models)
        new_manifest = replace(m, models=models, files=files)
        hashes = swap_manifest(self.root, new_manifest)
        self.manifest = new_manifest
        return hashes

    def _promote(self, p: Proposal, who: str) -> None:
        champ = self.manifest.model(p.capability)
        ch = next((c for c, _, lin in self.challengers() if c.capability == p.capability
                   and c.entry.version == p.version), None)
        if ch is None:
            raise StoreError(f"challenger {p.capability} v{p.version} is no longer registered")
        lineage = next(lin for c, _, lin in self.challengers() if c is not None and c.entry.version == p.version
                       and c.capability == p.capability)
        self.archive.put(self.root, champ, model_files(self.manifest, champ), lineage=self._lineage_of(champ),
                         was_champion=True)
        files = tuple(FileEntry(path, sha) for path, sha in lineage["files"])
        for f in files:
            dest = self.root / f.path
            if not dest.exists():
                shutil.copyfile(ch.folder / f.path, dest)
        before, after = self._swap(champ, ch.entry, files)
        self.archive.put(self.root, ch.entry, files, lineage=lineage, was_champion=True)
        self.store.execute("UPDATE challengers SET status='promoted', decided_ts=? WHERE capability=? AND version=?",
                           (time.time(), p.capability, p.version))
        self._audit(who, "promote", p.capability, champ.version, ch.entry.version, p.reason, before, after)

    def _lineage_of(self, entry: ModelEntry) -> dict:
        rows = self.store.query("SELECT lineage FROM challengers WHERE capability=? AND version=?",
                                (entry.id, entry.version))
        return json.loads(rows[0][0]) if rows else {"parent": None, "metrics": {}}

    def rollback(self, capability: str, *, to_version: str | None = None, who: str, why: str = "") -> str:
        """Restore an archived champion of ``capability`` (default: the one before the current).

        Returns:
            The version now serving.

        Raises:
            StoreError: no archived champion to return to, or it was evicted.
        """
        current = self.manifest.model(capability)
        candidates = [a for a in self.archive.list(capability) if a.was_champion and a.version != current.version]
        if to_version is not None:
            candidates = [a for a in candidates if a.version == to_version]
        if not candidates:
            raise StoreError(f"no archived champion of {capability!r}"
                             + (f" with version {to_version!r}" if to_version else "") + " to roll back to")
        target = max(candidates, key=lambda a: self._demoted_ts(a)) if to_version is None else candidates[0]
        self.archive.put(self.root, current, model_files(self.manifest, current),
                         lineage=self._lineage_of(current), was_champion=True)
        self.archive.restore(self.root, capability, target.version)
        before, after = self._swap(current, target.entry, target.files)
        self._audit(who, "rollback", capability, current.version, target.version,
                    why or f"rollback to archived champion {target.version}", before, after)
        return target.version

    def _demoted_ts(self, a: Any) -> float:
        rows = self.store.query("SELECT max(ts) FROM audit WHERE capability=? AND from_version=? AND action IN "
                                "('promote','rollback')", (a.capability, a.version))
        return rows[0][0] or a.archived_ts

    def _audit(self, who: str, action: str, capability: str, from_v: str | None, to_v: str | None, why: str,
               before: str | None = None, after: str | None = None) -> None:
        self.store.execute("INSERT INTO audit VALUES (NULL,?,?,?,?,?,?,?,?,?)",
                           (time.time(), who, action, capability, from_v, to_v, why, before, after))

    def audit(self) -> list[tuple]:
        """The audit log, oldest first: (id, ts, who, action, capability, from, to, why, before, after)."""
        return self.store.query("SELECT * FROM audit ORDER BY id")

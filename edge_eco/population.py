"""Population governance of one ecology bundle: challengers, the controller, changes, audit.

State lives beside the manifest in ``<bundle>/population/``: ``outcomes.db`` (the outcome store:
decisions, feedback, shadow pairs, challengers, proposals, audit log, archive index),
``staged/`` (registered challengers' files) and ``archive/objects/``.

The controller (:mod:`edge_eco.controller`) only **proposes** (promote, reject, rollback,
retire); the manifest's ``[governance].auto_apply``
says which kinds apply at once, the rest wait for :meth:`Population.approve`
(``edge-eco population approve``). Every change of the population is an atomic manifest swap
(:mod:`edge_eco.swap`) followed by an audit entry (who, what, why, manifest hashes).
A running :class:`~edge_eco.ecology.Ecology` keeps the manifest it opened; reopen it to serve
the change. Changes from several processes are serialised by a lock and recorded as write-ahead
intents (:mod:`edge_eco.changes`); a proposal is applied only against the champion (version and
file) it was made against, and only outside the cool-down.

A **signed** ecology (``ecology.toml.sig`` present, or a ``trust`` that requires a signature)
changes only with the device's governance key: ``Population(root, trust=...)`` with a trust
whose ``governance_key`` names it. The manifest on disk must verify first; the swap then writes
the new manifest and its signature so that the pair verifies at every instant. Without the key
a promote or rollback is refused with a :class:`~edge_eco.errors.SignatureError` before
anything (archive, bundle files, manifest, audit) changes.

**A damaged outcome database** (:class:`~edge_eco.errors.StoreCorruptError`) blocks every command
except :meth:`Population.rollback`, the emergency path: opened with ``damaged_store_ok=True`` the
population has no store (``store`` None, the error in ``store_damage``) and the archive works from
its ``index.json``. The rollback then restores the champion and swaps the manifest as usual, but
writes no audit entry and no intent; it returns what it could not record (:attr:`unrecorded`).
Without the audit log the default target is the most recently archived prior champion (``--to``
chooses another).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from . import controller, evidence, tomlread
from .archive import Archive
from .bundle import MANIFEST_NAME, read_bundle
from .changes import GovernanceLock, begin, finish_statements, reconcile, sha256_bytes
from .errors import StoreCorruptError, StoreError
from .evidence import Proposal, model_files, rule_of  # noqa: F401 (part of this module's API)
from .manifest import FileEntry, ModelEntry, model_entry
from .outcomes import Challenger, Recorder, Shadow
from .promotion import Pair, Verdict
from .signing import SIGNATURE_NAME, GovernanceSigner, SignatureError, Trust, as_trust
from .staging import stage
from .store import Retention, Store
from .swap import copy_atomic, swap_manifest


class Population:
    """Governance of the ecology bundle at ``root``. Close it (or use ``with``).

    ``trust``: a :class:`~edge_eco.signing.Trust` or trust file; needed to change a signed ecology
    (its ``governance_key`` signs the new manifest).

    Raises:
        ManifestError, IntegrityError: the bundle (or the trust file) does not open. StoreError:
            the store does not.
    """

    def __init__(self, root: str | Path, *, readonly: bool = False, trust: "Trust | str | Path | None" = None,
                 damaged_store_ok: bool = False) -> None:
        self.trust = as_trust(trust)
        self.root, self.manifest = read_bundle(root)
        self.dir = self.root / "population"
        g = self.manifest.governance
        self.store: Store | None = None
        self.store_damage: StoreCorruptError | None = None
        self.unrecorded: list[str] = []  # changes made without an audit entry (damaged store)
        try:
            self.store = Store(self.dir / "outcomes.db", retention=Retention(g.max_rows, g.max_bytes),
                               readonly=readonly)
        except StoreCorruptError as exc:
            if not damaged_store_ok:
                raise
            self.store_damage = exc
        self.archive = Archive(self.dir / "archive", self.store, g.archive_bytes, create=not readonly)
        self._lock = GovernanceLock(self.dir / "governance.lock")
        if not readonly and self.store is not None:
            try:
                with self.locked():  # settles intents a killed process left behind
                    pass
            except BaseException:
                self.store.close()
                raise

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the governance lock; on entry re-read the manifest and settle stale intents."""
        with self._lock.held():
            if self._lock._depth == 1:
                _, self.manifest = read_bundle(self.root)
                self.reconciled = [] if self.store is None else reconcile(self.store, self.root / MANIFEST_NAME)
            yield

    def close(self) -> None:
        """Close the store."""
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> "Population":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- challengers ---------------------------------------------------------------------------
    def add_challenger(self, folder: str | Path, *, who: str) -> Challenger:
        """Register the challenger in ``folder`` (``challenger.toml`` + files) for shadow evaluation.

        Raises:
            ManifestError: challenger.toml is malformed, names no model of the ecology, differs from
                the champion (labels, input, featurizer, output size: see :mod:`edge_eco.staging`).
            StoreError: a file is missing or corrupt.
        """
        with self.locked():
            entry, rel, lineage = stage(self.root, Path(folder), self.manifest)
            champion = self.manifest.model(entry.id)
            self.store.execute("INSERT OR REPLACE INTO challengers VALUES (?,?,?,?,?,?,NULL)",
                               (entry.id, entry.version, "shadow", rel, json.dumps(lineage), time.time()))
            begin(self.store, who=who, action="register", capability=entry.id, from_v=champion.version,
                  to_v=entry.version, state="done",
                  why=f"challenger registered from {folder} (parent {lineage.get('parent') or 'none'})")
            return Challenger(entry, self.root / rel)

    def challengers(self, status: str | None = "shadow") -> list[tuple[Challenger, str, dict]]:
        """Registered challengers (with a status filter; None: all): (challenger, status, lineage)."""
        rows = self.store.query("SELECT capability, version, status, folder, lineage FROM challengers"
                                + (" WHERE status=?" if status else "") + " ORDER BY registered_ts",
                                (status,) if status else ())
        out = []
        for cap, version, st, folder, lineage in rows:
            lin = json.loads(lineage)
            # staged folders are relative to the bundle (absolute in stores written before schema 3)
            out.append((Challenger(model_entry(tomlread.loads(lin["entry"])["models"][0]), self.root / folder), st, lin))
        return out

    def shadow_errors(self) -> dict[tuple[str, str], tuple[int, str]]:
        """Challenger failures in shadow: (capability, version) -> (count, last error)."""
        return evidence.shadow_errors(self.store)

    def attach(self, eco: Any, *, seed: int = 0) -> Recorder:
        """Record ``eco``'s answers in this bundle's outcome store, with its challengers in shadow.

        The recorder owns its own store connection and is closed by ``eco.close()``.
        """
        g = self.manifest.governance
        store = Store(self.store.path, retention=self.store.retention, check=False)  # checked when opened here
        active = [c for c, st, _ in self.challengers(None) if st in ("shadow", "watch")]  # watches: see controller
        shadow = Shadow(eco, store, active, rate=g.shadow_rate, cpu_share=g.shadow_cpu_share, seed=seed) \
            if active else None
        rec = Recorder(store, store_text=g.store_text, shadow=shadow)
        eco.attach_recorder(rec)
        return rec

    # -- evidence and the controller -----------------------------------------------------------
    def pairs(self, ch: Challenger) -> list[Pair]:
        """Feedback-labelled shadow pairs of ``ch`` against the current champion, oldest first."""
        return evidence.pairs(self.store, self.manifest, ch)

    def last_change_s(self, capability: str) -> float | None:
        """Time of the last completed promote/rollback of ``capability`` (None: never)."""
        return evidence.last_change_s(self.store, capability)

    def evaluate(self, ch: Challenger, now_s: float) -> Verdict:
        """The controller's verdict on ``ch`` now: the promotion rule for a challenger in shadow, the
        rollback rule for a watch, either turned into ``retire`` past ``retire_after_s``.

        Raises:
            StoreError: ``ch`` is not in shadow or watched.
        """
        rows = self.store.query("SELECT status, registered_ts FROM challengers WHERE capability=? AND version=?",
                                (ch.capability, ch.entry.version))
        if not rows or rows[0][0] not in ("shadow", "watch"):
            raise StoreError(f"{ch.capability} v{ch.entry.version} is not under evaluation")
        return controller.verdict(self, ch, rows[0][0], rows[0][1], now_s)

    def review(self, *, now_s: float | None = None, who: str = "controller") -> list[tuple[Proposal, bool]]:
        """Run the controller (:mod:`edge_eco.controller`): propose what the evidence supports
        (promote, reject, rollback, retire), apply what policy allows.

        Returns:
            (proposal, applied) for every proposal made in this review.
        """
        return controller.review(self, now_s=time.time() if now_s is None else now_s, who=who)

    def propose(self, capability: str, kind: str, version: str, reason: str, evidence: dict, *,
                now_s: float) -> int:
        """Record a pending proposal against the current champion (version, file, manifest hash); returns its id."""
        champ = self.manifest.model(capability)
        return self.store.execute("INSERT INTO proposals VALUES (NULL,?,?,?,?,?,?,'pending',NULL,NULL,?,?,?)",
                                  (now_s, capability, kind, version, reason, json.dumps(evidence), champ.version,
                                   champ.file.sha256, sha256_bytes((self.root / MANIFEST_NAME).read_bytes())))

    def proposals(self, status: str | None = None) -> list[Proposal]:
        """Proposals, newest first (optionally only one status: pending, applied, declined)."""
        rows = self.store.query("SELECT id, ts, capability, kind, version, reason, evidence, status, champion_version,"
                                " champion_sha256 FROM proposals" + (" WHERE status=?" if status else "")
                                + " ORDER BY id DESC", (status,) if status else ())
        return [Proposal(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], r[8], r[9]) for r in rows]

    def proposal(self, pid: int) -> Proposal:
        """One proposal. Raises StoreError when there is none."""
        for p in self.proposals():
            if p.id == pid:
                return p
        raise StoreError(f"no proposal {pid}")

    def approve(self, pid: int, *, who: str, now_s: float | None = None) -> Proposal:
        """Apply a pending proposal (promote, rollback: manifest swap; reject: stop the challenger;
        retire: archive the challenger or watch and stop it, see :func:`edge_eco.controller.retire`).

        Holds the governance lock: of two concurrent approvals of one proposal exactly one applies it.

        Raises:
            StoreError: no such pending proposal; the champion changed since the proposal was made
                (review again); the capability is in its cool-down; or the change failed (the
                manifest is unchanged).
            SignatureError: a promote or rollback of a signed ecology without a usable governance key
                (see the module docstring); nothing changed.
        """
        now_s = time.time() if now_s is None else now_s
        with self.locked():
            p = self.proposal(pid)
            if p.status != "pending":
                raise StoreError(f"proposal {pid} is {p.status}, not pending")
            champ = self.manifest.model(p.capability)
            if p.champion_version is not None and (champ.version, champ.file.sha256) != \
                    (p.champion_version, p.champion_sha256):
                now = f"v{champ.version}" if champ.version != p.champion_version else \
                    f"v{champ.version} with another file ({champ.file.sha256[:12]})"
                raise StoreError(f"champion of {p.capability!r} is now {now}, the proposal was made against "
                                 f"v{p.champion_version}; review again")
            last = self.last_change_s(p.capability)
            cool = self.manifest.governance.cooldown_s
            if p.kind in ("promote", "rollback") and last is not None and now_s - last < cool:
                raise StoreError(f"{p.capability!r} changed {now_s - last:.0f} s ago; cool-down of {cool:.0f} s "
                                 "has not passed")
            if p.kind == "promote":
                self._promote(p, who)
            elif p.kind == "rollback":
                self.rollback(p.capability, to_version=p.version, who=who, why=p.reason, proposal_id=p.id)
            elif p.kind == "retire":
                controller.retire(self, p, who)
            else:
                aid = begin(self.store, who=who, action="reject", capability=p.capability, from_v=champ.version,
                            to_v=p.version, why=p.reason, proposal_id=p.id)
                self.store.transaction(finish_statements(aid, "reject", p.capability, p.version, p.id, who) + [
                    ("UPDATE challengers SET status='rejected', decided_ts=? WHERE capability=? AND version=?",
                     (time.time(), p.capability, p.version))])
            return self.proposal(pid)

    # -- changes ---------------------------------------------------------------------------------
    def _signer(self, action: str) -> GovernanceSigner | None:
        """The signer a change needs (None for an unsigned ecology that need not be signed).

        Raises:
            SignatureError: the ecology is signed (or must be) and no usable governance key is
                configured, or the manifest on disk does not verify: the change is refused.
        """
        signed = (self.root / SIGNATURE_NAME).is_file()
        if not signed and not (self.trust is not None and self.trust.require_signature):
            return None
        name = self.root.name
        if self.trust is None:
            raise SignatureError(f"{name}: {action} refused, nothing changed: ecology.toml is signed and a change would "
                                 "void its signature; open the population with the device's trust configuration "
                                 "(--trust) naming a governance_key")
        try:
            signer = GovernanceSigner(self.trust, name)
            signer.current(self.root, (self.root / MANIFEST_NAME).read_bytes())
        except SignatureError as exc:
            raise SignatureError(f"{action} refused, nothing changed: {exc}") from exc
        return signer

    def _swap(self, old: ModelEntry, new: ModelEntry, new_files: tuple[FileEntry, ...], *, who: str, action: str,
              why: str, proposal_id: int | None, signer: GovernanceSigner | None = None) -> int:
        """Swap ``old`` for ``new`` in the manifest, with a write-ahead intent; returns its audit id."""
        m = self.manifest
        old_files = {f.path for f in model_files(m, old)[1:]}
        files = tuple(f for f in m.files if f.path not in old_files) + tuple(new_files[1:])
        models = tuple(new if x.id == old.id else x for x in m.models)
        new_manifest = replace(m, models=models, files=files)
        ids: list[int] = []

        def intent(before: str, after: str) -> None:
            ids.append(begin(self.store, who=who, action=action, capability=old.id, from_v=old.version,
                             to_v=new.version, why=why, before=before, after=after, proposal_id=proposal_id))
        before, after = swap_manifest(self.root, new_manifest, intent if self.store is not None else None, signer)
        self.manifest = new_manifest
        if self.store is None:  # no audit log to write to: say what it would have held
            self.unrecorded.append(f"{action} {old.id} v{old.version} -> v{new.version} by {who} ({why}); "
                                   f"manifest sha256 {before[:12]} -> {after[:12]}")
            return -1
        return ids[0]

    def _promote(self, p: Proposal, who: str) -> None:
        signer = self._signer("promote")
        champ = self.manifest.model(p.capability)
        found = [(c, lin) for c, _, lin in self.challengers() if c.capability == p.capability
                 and c.entry.version == p.version]
        if not found:
            raise StoreError(f"challenger {p.capability} v{p.version} is no longer registered")
        ch, lineage = found[0]
        diversity = controller.diversity_of(self.pairs(ch))
        self.archive.put(self.root, champ, model_files(self.manifest, champ), lineage=self._lineage_of(champ),
                         was_champion=True, diversity=diversity)
        watch_rel, watch_lineage = controller.stage_demoted(self, champ)
        files = tuple(FileEntry(path, sha) for path, sha in lineage["files"])
        for f in files:
            dest = self.root / f.path
            if not dest.exists():  # a new file, renamed into place: never a partial one under its name
                copy_atomic(ch.folder / f.path, dest)
        aid = self._swap(champ, ch.entry, files, who=who, action="promote", why=p.reason, proposal_id=p.id,
                         signer=signer)
        self.archive.put(self.root, ch.entry, files, lineage=lineage, was_champion=True, diversity=diversity)
        # the replaced champion keeps shadowing the new one: the evidence for a rollback
        self.store.transaction(finish_statements(aid, "promote", p.capability, p.version, p.id, who)
                               + controller.watch_statements(p.capability, champ, watch_rel, watch_lineage))

    def _lineage_of(self, entry: ModelEntry) -> dict:
        if self.store is None:  # the archive's copy, when it has one
            a = self.archive.get(entry.id, entry.version)
            return {"parent": a.parent, "data_fingerprint": a.data_fingerprint, "metrics": a.metrics} if a else \
                {"parent": None, "metrics": {}}
        rows = self.store.query("SELECT lineage FROM challengers WHERE capability=? AND version=?",
                                (entry.id, entry.version))
        return json.loads(rows[0][0]) if rows else {"parent": None, "metrics": {}}

    def rollback(self, capability: str, *, to_version: str | None = None, who: str, why: str = "",
                 proposal_id: int | None = None) -> str:
        """Restore an archived champion of ``capability`` (default: the one before the current).

        Returns:
            The version now serving.

        With a damaged store (``damaged_store_ok``) it still restores and swaps; see the module doc.

        Raises:
            StoreError: ``to_version`` is already the champion, no archived champion to return to,
                it was evicted, or its archived files are missing or corrupt.
            SignatureError: a signed ecology and no usable governance key; nothing changed.
        """
        with self.locked():
            signer = self._signer("rollback")
            current = self.manifest.model(capability)
            if to_version is not None and to_version == current.version:
                raise StoreError(f"{capability} v{to_version} is already the champion")
            candidates = [a for a in self.archive.list(capability) if a.was_champion and a.version != current.version]
            if to_version is not None:
                candidates = [a for a in candidates if a.version == to_version]
            if not candidates and self.store is None and not self.archive.index_path.is_file():
                raise StoreError(f"the outcome database is damaged and the archive has no {self.archive.index_path.name}"
                                 " (archived before edge_eco kept one): its archived champions cannot be found")
            if not candidates:
                raise StoreError(f"no archived champion of {capability!r}"
                                 + (f" with version {to_version!r}" if to_version else "") + " to roll back to")
            target = max(candidates, key=lambda a: self._demoted_ts(a)) if to_version is None else candidates[0]
            watched = [] if self.store is None else [c for c, _, _ in self.challengers("watch")
                                                     if c.capability == capability and c.entry.version == target.version]
            self.archive.put(self.root, current, model_files(self.manifest, current),
                             lineage=self._lineage_of(current), was_champion=True,
                             diversity=controller.diversity_of(self.pairs(watched[0])) if watched else None)
            self.archive.restore(self.root, capability, target.version)
            aid = self._swap(current, target.entry, target.files, who=who, action="rollback",
                             why=why or f"rollback to archived champion {target.version}", proposal_id=proposal_id,
                             signer=signer)
            if self.store is None:
                return target.version
            # watches end; the model rolled back from is not watched (no flip-flop: it must register again)
            self.store.transaction(
                finish_statements(aid, "rollback", capability, target.version, proposal_id, who)
                + controller.watch_statements(capability, reinstated=target.version)
                + [("UPDATE challengers SET status='rolled back', decided_ts=? WHERE capability=? AND version=? "
                    "AND status='promoted'", (time.time(), capability, current.version))])
            return target.version

    def _demoted_ts(self, a: Any) -> float:
        if self.store is None:
            return a.archived_ts
        rows = self.store.query("SELECT max(ts) FROM audit WHERE capability=? AND from_version=? AND action IN "
                                "('promote','rollback') AND state='done'", (a.capability, a.version))
        return rows[0][0] or a.archived_ts

    def audit(self) -> list[tuple]:
        """The audit log, oldest first: (id, ts, who, action, capability, from, to, why, before, after, state)."""
        return self.store.query("SELECT id, ts, who, action, capability, from_version, to_version, why, "
                                "manifest_before, manifest_after, state FROM audit ORDER BY id")

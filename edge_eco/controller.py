"""The controller of a population: proposes promote, reject, rollback and retire from the evidence.

It reads each registered model still under evaluation from the ``challengers`` table:

- ``shadow`` — a challenger: the promotion rule (:func:`edge_eco.promotion.decide`) proposes
  ``promote`` or ``reject``;
- ``watch`` — the champion a promotion replaced, kept in shadow beside the new one: the rollback
  rule (:func:`edge_eco.demotion.decide_rollback`) proposes ``rollback`` (to it) or ``retire``
  (the watch ends);

and either one still undecided after ``[governance].retire_after_s`` is proposed for ``retire``
(:func:`edge_eco.demotion.decide_retire`). A proposal kind listed in ``[governance].auto_apply``
is applied at once; the others wait for ``edge-eco population approve``.

Retiring archives the model (files, lineage, behavioural diversity against the champion),
marks it ``retired`` (no longer shadowed), removes its staged copy and writes an audit entry;
the manifest does not change (a challenger or watch is not part of it).
The behavioural diversity stored with an archived version is the error disagreement
(:func:`edge_eco.diversity.error_disagreement`) on its feedback-labelled pairs with the champion.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .changes import begin, finish_statements
from .demotion import RetireRule, decide_retire, decide_rollback
from .diversity import error_disagreement
from .errors import StoreError
from .evidence import Proposal, model_files, rule_of
from .manifest import FileEntry, ModelEntry
from .outcomes import Challenger
from .promotion import Pair, Verdict, decide

if TYPE_CHECKING:
    from .population import Population


def diversity_of(pairs: Sequence[Pair]) -> float | None:
    """Error disagreement of the two models of ``pairs`` (None without pairs)."""
    if not pairs:
        return None
    return error_disagreement(np.array([not p.champion_right for p in pairs]),
                              np.array([not p.challenger_right for p in pairs]))


def verdict(pop: "Population", ch: Challenger, status: str, registered_s: float, now_s: float) -> Verdict:
    """The rule's verdict on a challenger (``shadow``) or a watch (``watch``) now, time bound included."""
    rule = rule_of(pop.manifest)
    last = pop.last_change_s(ch.capability)
    pairs = pop.pairs(ch)
    v = decide_rollback(pairs, now_s=now_s, last_change_s=last, rule=rule) if status == "watch" else \
        decide(pairs, now_s=now_s, last_change_s=last, rule=rule)
    return decide_retire(v, registered_s=registered_s, now_s=now_s, level=rule.alpha / rule.looks,
                         rule=RetireRule(pop.manifest.governance.retire_after_s))


def under_evaluation(pop: "Population") -> list[tuple[Challenger, str, float]]:
    """Challengers in shadow and watches: (challenger, status, registered or watch start time)."""
    since = {(c, v): ts for c, v, ts in pop.store.query(
        "SELECT capability, version, registered_ts FROM challengers WHERE status IN ('shadow','watch')")}
    return [(ch, st, since[(ch.capability, ch.entry.version)]) for ch, st, _ in pop.challengers(None)
            if st in ("shadow", "watch")]


def review(pop: "Population", *, now_s: float, who: str) -> list[tuple[Proposal, bool]]:
    """Propose what the evidence supports and apply what policy allows (holding the governance lock).

    Returns:
        (proposal, applied) for every proposal made in this review.
    """
    made = []
    with pop.locked():
        for ch, status, since in under_evaluation(pop):
            v = verdict(pop, ch, status, since, now_s)
            if v.action == "wait":
                continue
            if pop.store.query("SELECT id FROM proposals WHERE capability=? AND version=? AND kind=? "
                               "AND status='pending'", (ch.capability, ch.entry.version, v.action)):
                continue
            evidence = {"n": v.n, "champion_only": v.champion_only, "challenger_only": v.challenger_only,
                        "p_better": v.p_better, "p_worse": v.p_worse, "regressed": list(v.regressed),
                        "status": status}
            pid = pop.propose(ch.capability, v.action, ch.entry.version, v.reason, evidence, now_s=now_s)
            auto = v.action in pop.manifest.governance.auto_apply
            if auto:
                pop.approve(pid, who=who, now_s=now_s)
            made.append((pop.proposal(pid), auto))
    return made


def retire(pop: "Population", p: Proposal, who: str) -> None:
    """Apply a ``retire`` proposal: archive the model, mark it retired, drop its staged copy, audit it.

    Raises:
        StoreError: the model is no longer in shadow or watched, or archiving it failed (then
            nothing changed).
    """
    rows = pop.store.query("SELECT status, folder FROM challengers WHERE capability=? AND version=?",
                           (p.capability, p.version))
    if not rows or rows[0][0] not in ("shadow", "watch"):
        raise StoreError(f"{p.capability} v{p.version} is not in shadow or watched "
                         f"({rows[0][0] if rows else 'not registered'}); nothing to retire")
    status, folder = rows[0]
    found = [(c, lin) for c, _, lin in pop.challengers(status) if c.entry.version == p.version
             and c.capability == p.capability]
    ch, lineage = found[0]
    files = tuple(model_files_of(ch.entry, lineage))
    pop.archive.put(ch.folder, ch.entry, files, lineage=lineage, was_champion=status == "watch",
                    diversity=diversity_of(pop.pairs(ch)))
    champ = pop.manifest.model(p.capability)
    aid = begin(pop.store, who=who, action="retire", capability=p.capability, from_v=champ.version,
                to_v=p.version, why=p.reason, proposal_id=p.id)
    pop.store.transaction(finish_statements(aid, "retire", p.capability, p.version, p.id, who) + [
        ("UPDATE challengers SET status='retired', decided_ts=? WHERE capability=? AND version=?",
         (time.time(), p.capability, p.version))])
    # the archive holds every file now (checked against its sha256); the staged copy can go
    shutil.rmtree(pop.root / folder, ignore_errors=True)


def model_files_of(entry: ModelEntry, lineage: dict) -> list[FileEntry]:
    """The files of a registered model (its entry's file first), from its lineage."""
    listed = [FileEntry(path, sha) for path, sha in lineage.get("files", [])]
    return [entry.file] + [f for f in listed if f.path != entry.file.path]


def stage_demoted(pop: "Population", champ: ModelEntry) -> tuple[str, dict]:
    """Copy the champion about to be replaced into ``population/staged/`` for its watch.

    Returns:
        (the staged folder relative to the bundle, its lineage with files and entry).

    Raises:
        StoreError: a file cannot be copied.
    """
    from .archive import entry_to_text

    files = model_files(pop.manifest, champ)
    rel = f"population/staged/{champ.id}-{champ.version}"
    try:
        (pop.root / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(pop.root / f.path, pop.root / rel / f.path)
    except OSError as exc:
        raise StoreError(f"staging the watch of {champ.id} v{champ.version} failed: {exc}") from exc
    lineage = dict(pop._lineage_of(champ))
    lineage["files"] = [[f.path, f.sha256] for f in files]
    lineage["entry"] = entry_to_text(champ)
    return rel, lineage


def watch_statements(capability: str, demoted: ModelEntry | None = None, rel: str | None = None,
                     lineage: dict | None = None, reinstated: str | None = None) -> list[tuple[str, tuple]]:
    """Statements run with a promotion or rollback of ``capability``: its watches end (status
    ``ended``, or ``reinstated`` for the version a rollback restores), and ``demoted`` (the
    champion a promotion replaced) starts its watch from the staged folder ``rel``."""
    now = time.time()
    out: list[tuple[str, tuple]] = [
        ("UPDATE challengers SET status = CASE WHEN version=? THEN 'reinstated' ELSE 'ended' END, decided_ts=? "
         "WHERE capability=? AND status='watch'", (reinstated, now, capability))]
    if demoted is not None:
        out.append(("INSERT OR REPLACE INTO challengers VALUES (?,?,'watch',?,?,?,NULL)",
                    (capability, demoted.version, rel, json.dumps(lineage), now)))
    return out

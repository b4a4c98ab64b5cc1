"""Evidence and records of population governance, read from the outcome store: proposals,
labelled shadow pairs, the time of a capability's last change, challenger failures in shadow."""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import FileEntry, Manifest, ModelEntry
from .outcomes import Challenger, decode_vote, right
from .promotion import Pair, PromotionRule
from .store import Store


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
    champion_version: str | None = None
    champion_sha256: str | None = None


def model_files(m: Manifest, entry: ModelEntry) -> tuple[FileEntry, ...]:
    """The model file of ``entry`` and its companions (``x.onnx.data``) listed in ``m.files``."""
    return (entry.file,) + tuple(f for f in m.files if f.path.startswith(entry.file.path + "."))


def rule_of(m: Manifest) -> PromotionRule:
    """The promotion rule configured in the manifest's ``[governance]``."""
    g = m.governance
    return PromotionRule(g.min_pairs, g.looks, g.alpha, g.slice_alpha, g.min_gain, g.cooldown_s)


def pairs(store: Store, m: Manifest, ch: Challenger) -> list[Pair]:
    """Feedback-labelled shadow pairs of ``ch`` against the current champion in ``m``, oldest first.

    Only pairs recorded since ``ch`` was registered (or its watch began) count: a model registered
    again after a rollback starts with fresh evidence, not the traffic that promoted it before.
    """
    champ = m.model(ch.capability)
    champ_id = f"{champ.version}:{champ.file.sha256[:12]}"
    rows = store.query(
        "SELECT s.champion_label, s.challenger_label, f.label FROM shadow s JOIN feedback f USING (request_id)"
        " WHERE s.capability=? AND s.challenger=? AND s.champion=? AND s.ts >= coalesce((SELECT registered_ts"
        " FROM challengers WHERE capability=? AND version=?), 0) ORDER BY s.ts, s.rowid",
        (ch.capability, f"{ch.entry.version}:{ch.entry.file.sha256[:12]}", champ_id, ch.capability,
         ch.entry.version))
    own = set(champ.labels) - {champ.decline_label}
    out = []
    for a, b, truth in rows:
        (la, da), (lb, db) = decode_vote(a), decode_vote(b)
        out.append(Pair(right(champ, la, da, truth), right(ch.entry, lb, db, truth),
                        truth if truth in own else "(other niches)"))
    return out


def last_change_s(store: Store, capability: str) -> float | None:
    """Time of the last completed promote/rollback of ``capability`` (None: never)."""
    rows = store.query("SELECT max(ts) FROM audit WHERE capability=? AND action IN ('promote','rollback')"
                       " AND state='done'", (capability,))
    return rows[0][0]


def shadow_errors(store: Store) -> dict[tuple[str, str], tuple[int, str]]:
    """Challenger failures in shadow: (capability, version) -> (count, last error)."""
    return {(c, v): (n, e) for c, v, n, e in
            store.query("SELECT capability, challenger, count, last_error FROM shadow_errors")}

"""The rollback and retire rules of the controller. Pure: pairs, counts, times and thresholds in, a verdict out.

**Watch after a promotion.** When a challenger is promoted, the champion it replaced keeps
running in shadow beside the new one (a *watch*: the challenger machinery with the roles
reversed). Its evidence is the stream of feedback-labelled pairs (new champion right?, previous
champion right?, niche slice) recorded since the promotion. :func:`decide_rollback` reads it
with the promotion rule's thresholds, at the same looks ``min_pairs * 2**k``:

- ``rollback`` when the previous champion is right significantly more often than the new one
  (exact one-sided McNemar, p < alpha / looks), or when the new champion regresses on a niche
  slice (exact McNemar on the slice, p < slice_alpha / slices) — and the capability's last
  change is at least ``cooldown_s`` old (otherwise ``wait``);
- ``retire`` (end the watch) when the last look passed with neither: the new champion has held
  up on ``max_pairs`` pairs, and the watch stops spending shadow budget;
- ``wait`` otherwise.

No flip-flop: a rollback needs the same significance as a promotion, in the other direction,
after the cool-down; the model rolled back from is not watched again (it must be registered
again to challenge), so a near-equal pair changes at most promote + rollback, with probability
bounded by alpha for each step (``tests/test_demotion.py`` simulates it).

**Retire a challenger.** :func:`decide_retire` says when a challenger in shadow (or a watch) is
no longer worth its shadow budget although the sequential rule has not decided: it has been
registered for ``retire_after_s`` and its evidence is still below a decision (too little
labelled traffic, or not significant at any look so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .promotion import Pair, PromotionRule, Verdict, mcnemar_one_sided


@dataclass(frozen=True)
class RetireRule:
    """When an undecided challenger or watch is retired: ``retire_after_s`` after its registration."""

    retire_after_s: float = 30 * 86400.0


def _discordant(pairs: Sequence[Pair]) -> tuple[int, int]:
    """(new champion right and previous wrong, previous right and new wrong)."""
    b = sum(1 for p in pairs if p.champion_right and not p.challenger_right)
    c = sum(1 for p in pairs if p.challenger_right and not p.champion_right)
    return b, c


def decide_rollback(pairs: Sequence[Pair], *, now_s: float, last_change_s: float | None,
                    rule: PromotionRule = PromotionRule()) -> Verdict:
    """The verdict on a watch: should the capability roll back to its previous champion?

    Args:
        pairs: labelled pairs since the promotion, oldest first; ``champion_right`` is the new
            champion's, ``challenger_right`` the previous champion's (the watched model).
        now_s: the current time; last_change_s: the capability's last change (the promotion).
        rule: the promotion rule's thresholds (min_pairs, looks, alpha, slice_alpha, cooldown_s).

    Returns:
        A :class:`Verdict`: ``rollback``, ``retire`` (end the watch) or ``wait``; ``champion_only``
        counts pairs only the new champion got right, ``challenger_only`` those only the previous
        one got right, ``p_better`` is the p-value of "the previous champion is better".
    """
    n = rule.look_at(len(pairs))
    if n == 0:
        return Verdict("wait", f"{len(pairs)} of {rule.min_pairs} labelled pairs for the first look", len(pairs))
    used = pairs[:n]
    b, c = _discordant(used)
    level = rule.alpha / rule.looks
    p_better, p_worse = mcnemar_one_sided(c, b), mcnemar_one_sided(b, c)
    slices: dict[str, list[Pair]] = {}
    for p in used:
        slices.setdefault(p.slice, []).append(p)
    regressed = tuple(sorted(s for s, ps in slices.items()
                             if mcnemar_one_sided(*reversed(_discordant(ps))) < rule.slice_alpha / max(1, len(slices))))
    base = dict(n=n, champion_only=b, challenger_only=c, p_better=p_better, p_worse=p_worse, regressed=regressed)
    if p_better < level or regressed:
        why = (f"the new champion is wrong on {c} pairs the previous one got right, right on {b} it got wrong "
               f"(exact McNemar p={p_better:.2g} < {level:.2g})" if p_better < level else
               f"the new champion regresses on niche slice(s) " + ", ".join(
                   f"{s} ({_discordant(slices[s])[1]} pairs only the previous champion got right, "
                   f"{_discordant(slices[s])[0]} the other way)" for s in regressed))
        if last_change_s is not None and now_s - last_change_s < rule.cooldown_s:
            left = rule.cooldown_s - (now_s - last_change_s)
            return Verdict("wait", f"{why}; in cool-down for {left:.0f} s more", **base)
        return Verdict("rollback", why, **base)
    if n >= rule.max_pairs:
        return Verdict("retire", f"the new champion held up over {n} pairs (previous champion better: "
                                 f"p={p_better:.2g}); watch ended", **base)
    return Verdict("wait", f"new champion not worse at look n={n} (p={p_better:.2g}); next look at {2 * n} pairs",
                   **base)


def decide_retire(verdict: Verdict, *, registered_s: float, now_s: float, level: float,
                  rule: RetireRule = RetireRule()) -> Verdict:
    """Turn an undecided (``wait``) verdict into ``retire`` once the challenger or watch is past its time bound.

    Args:
        verdict: what the promotion or rollback rule says now.
        registered_s: when the challenger was registered (or the watch started); now_s: the time.
        level: the overall test's level (alpha / looks): a verdict significant at it (waiting
            only for the cool-down) is never retired.
        rule: the time bound.

    Returns:
        ``verdict`` itself unless it is an undecided ``wait`` and ``now_s - registered_s >=
        retire_after_s``; then a ``retire`` verdict with the same counts.
    """
    age = now_s - registered_s
    significant = verdict.p_better < level or bool(verdict.regressed)
    if verdict.action != "wait" or significant or age < rule.retire_after_s:
        return verdict
    return Verdict("retire", f"undecided after {age / 86400:.1f} days (bound {rule.retire_after_s / 86400:.1f}): "
                             f"{verdict.reason}", verdict.n, verdict.champion_only, verdict.challenger_only,
                   verdict.p_better, verdict.p_worse, verdict.regressed)

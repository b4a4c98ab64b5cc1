"""The promotion rule for a champion/challenger pair. Pure: counts, times and thresholds in, a verdict out.

Evidence is the stream of **paired, feedback-labelled** shadow outcomes of one capability: for
each request both models answered and a label came back, whether the champion was right and
whether the challenger was right, plus the request's niche slice (its true label).

Sequential looks. The rule only decides at looks ``n_k = min_pairs * 2**k`` (k = 0 .. looks-1)
on the first ``n_k`` pairs, each test at ``alpha / looks`` (Bonferroni). The chance that a
challenger no better than the champion is ever promoted is therefore at most ``alpha``, however
often the controller asks, and a flip back (the old champion winning again) needs a second such
error: at most ``alpha**2``. After the last look, a challenger that has not won is rejected.

A challenger is promoted at a look when, on those pairs:

- the exact one-sided McNemar test says it is right more often than the champion
  (p < alpha / looks), and the gain ``(c - b) / n`` is at least ``min_gain``;
- no niche slice shows a regression at ``slice_alpha`` (exact McNemar the other way);
- the capability's last change is at least ``cooldown_s`` old (otherwise: wait).

It is rejected at a look when it is significantly worse overall, or significantly worse on a
slice, or when the last look passed without a win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Pair:
    """One labelled shadow request: was each model right, and the request's niche slice."""

    champion_right: bool
    challenger_right: bool
    slice: str = ""


@dataclass(frozen=True)
class PromotionRule:
    """Thresholds of the rule (from the manifest's ``[governance]`` table)."""

    min_pairs: int = 200
    looks: int = 5
    alpha: float = 0.01
    slice_alpha: float = 0.01
    min_gain: float = 0.005
    cooldown_s: float = 86400.0

    @property
    def max_pairs(self) -> int:
        """The pairs at the last look."""
        return self.min_pairs << (self.looks - 1)

    def look_at(self, n: int) -> int:
        """The largest look ``<= n`` (0 when the first look is not reached)."""
        best = 0
        for k in range(self.looks):
            if self.min_pairs << k <= n:
                best = self.min_pairs << k
        return best


@dataclass(frozen=True)
class Verdict:
    """What the rule says now, with its evidence."""

    action: str  # "promote" | "reject" | "wait"
    reason: str
    n: int = 0
    champion_only: int = 0
    challenger_only: int = 0
    p_better: float = 1.0
    p_worse: float = 1.0
    regressed: tuple[str, ...] = field(default_factory=tuple)


def mcnemar_one_sided(wins: int, losses: int) -> float:
    """Exact one-sided McNemar p-value: P(X >= wins) for X ~ Binomial(wins + losses, 1/2).

    ``wins`` are the discordant pairs favouring the hypothesis (e.g. challenger right, champion
    wrong), ``losses`` the others. 1.0 when there is no discordant pair.
    """
    if wins < 0 or losses < 0:
        raise ValueError("counts must be non-negative")
    n = wins + losses
    if n == 0:
        return 1.0
    # log-space sum keeps large n exact enough and free of overflow
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(wins, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top - n * math.log(2.0)) * sum(math.exp(x - top) for x in logs))


def _counts(pairs: Sequence[Pair]) -> tuple[int, int]:
    b = sum(1 for p in pairs if p.champion_right and not p.challenger_right)
    c = sum(1 for p in pairs if p.challenger_right and not p.champion_right)
    return b, c


def decide(pairs: Sequence[Pair], *, now_s: float, last_change_s: float | None,
           rule: PromotionRule = PromotionRule()) -> Verdict:
    """The verdict for a challenger given its labelled pairs in arrival order.

    Args:
        pairs: every labelled pair so far, oldest first (only the first ``look_at(len)`` count).
        now_s: the current time; last_change_s: the time of the capability's last change (None: never).
        rule: thresholds.

    Returns:
        A :class:`Verdict`: ``promote``, ``reject`` or ``wait``, with the reason and counts.
    """
    n = rule.look_at(len(pairs))
    if n == 0:
        return Verdict("wait", f"{len(pairs)} of {rule.min_pairs} labelled pairs for the first look", len(pairs))
    used = pairs[:n]
    b, c = _counts(used)
    level = rule.alpha / rule.looks
    p_better, p_worse = mcnemar_one_sided(c, b), mcnemar_one_sided(b, c)
    slices: dict[str, list[Pair]] = {}
    for p in used:
        slices.setdefault(p.slice, []).append(p)
    regressed = tuple(sorted(s for s, ps in slices.items()
                             if mcnemar_one_sided(*_counts(ps)) < rule.slice_alpha / max(1, len(slices))))
    base = dict(n=n, champion_only=b, challenger_only=c, p_better=p_better, p_worse=p_worse, regressed=regressed)
    if p_worse < level:
        return Verdict("reject", f"significantly worse than the champion (p={p_worse:.2g})", **base)
    if regressed:
        return Verdict("reject", f"regresses on niche slice(s) {', '.join(regressed)}", **base)
    if p_better < level and (c - b) / n >= rule.min_gain:
        if last_change_s is not None and now_s - last_change_s < rule.cooldown_s:
            left = rule.cooldown_s - (now_s - last_change_s)
            return Verdict("wait", f"better (p={p_better:.2g}) but in cool-down for {left:.0f} s more", **base)
        return Verdict("promote", f"right on {c} pairs the champion got wrong, wrong on {b} it got right "
                                  f"(exact McNemar p={p_better:.2g} < {level:.2g}, gain {(c - b) / n:.2%})", **base)
    if n >= rule.max_pairs:
        return Verdict("reject", f"no significant improvement after {n} pairs (p={p_better:.2g})", **base)
    return Verdict("wait", f"not significant at look n={n} (p={p_better:.2g}); next look at {2 * n} pairs", **base)

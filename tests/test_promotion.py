"""The promotion rule (pure): exact McNemar, looks, cool-down, slices, and no flip-flop."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings, strategies as st

from edge_eco.promotion import Pair, PromotionRule, decide, mcnemar_one_sided

RULE = PromotionRule(min_pairs=40, looks=4, alpha=0.01, slice_alpha=0.01, min_gain=0.0, cooldown_s=100.0)
pairs_st = st.lists(st.builds(Pair, st.booleans(), st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=400)


@given(st.integers(0, 300), st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_mcnemar_matches_the_exact_binomial_tail(wins, losses):
    n = wins + losses  # P(X >= wins), X ~ Binomial(n, 1/2), in exact rational arithmetic
    expected = float(Fraction(sum(math.comb(n, k) for k in range(wins, n + 1)), 2 ** n))
    assert abs(mcnemar_one_sided(wins, losses) - expected) < 1e-9 * max(1.0, expected)


@given(pairs_st, st.floats(0, 1e6))
@settings(max_examples=200, deadline=None)
def test_never_promotes_before_the_first_look_or_in_cool_down(pairs, since):
    v = decide(pairs, now_s=1e7, last_change_s=1e7 - since, rule=RULE)
    if v.action == "promote":
        assert len(pairs) >= RULE.min_pairs and since >= RULE.cooldown_s
        assert v.challenger_only > v.champion_only and v.p_better < RULE.alpha / RULE.looks


@given(pairs_st)
@settings(max_examples=200, deadline=None)
def test_promotion_is_antisymmetric(pairs):
    v = decide(pairs, now_s=0, last_change_s=None, rule=RULE)
    mirrored = [Pair(p.challenger_right, p.champion_right, p.slice) for p in pairs]
    w = decide(mirrored, now_s=0, last_change_s=None, rule=RULE)
    assert not (v.action == "promote" and w.action == "promote")
    if v.action == "promote":
        assert w.action == "reject"


@given(pairs_st, st.integers(0, 400))
@settings(max_examples=200, deadline=None)
def test_only_pairs_up_to_the_current_look_count(pairs, cut):
    cut = min(cut, len(pairs))
    if RULE.look_at(cut) == RULE.look_at(len(pairs)) == 0:
        assert decide(pairs[:cut], now_s=0, last_change_s=None, rule=RULE).action == "wait"
    elif RULE.look_at(cut) == RULE.look_at(len(pairs)):
        assert decide(pairs[:cut], now_s=0, last_change_s=None, rule=RULE) == \
            decide(pairs, now_s=0, last_change_s=None, rule=RULE)


def test_a_slice_regression_blocks_an_overall_win():
    # better overall (60 wins on slice "a"), but clearly worse on slice "b" (0 wins, 30 losses)
    pairs = [Pair(False, True, "a")] * 60 + [Pair(True, False, "b")] * 30 + [Pair(True, True, "a")] * 70
    v = decide(pairs, now_s=0, last_change_s=None, rule=RULE)
    assert v.action == "reject" and v.regressed == ("b",)


def _simulate(rng, acc_a, acc_b, rule, cycles, pairs_per_s=1.0):
    """Champion/challenger cycles: the loser always challenges again. Returns the champion sequence."""
    accuracy = {"A": acc_a, "B": acc_b}
    champion, challenger, now, last_change = "A", "B", 0.0, None
    history = ["A"]
    for _ in range(cycles):
        right_c = rng.random(rule.max_pairs) < accuracy[champion]
        right_h = rng.random(rule.max_pairs) < accuracy[challenger]
        pairs = [Pair(bool(a), bool(b), "x") for a, b in zip(right_c, right_h)]
        for n in [rule.min_pairs << k for k in range(rule.looks)]:
            now += n / pairs_per_s
            v = decide(pairs[:n], now_s=now, last_change_s=last_change, rule=rule)
            if v.action != "wait":
                break
        if v.action == "promote":
            champion, challenger, last_change = challenger, champion, now
            history.append(champion)
    return history


def test_two_near_equal_models_never_flip_flop():
    rule = PromotionRule(min_pairs=100, looks=5, alpha=0.01, min_gain=0.005, cooldown_s=3600.0)
    changes = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        history = _simulate(rng, 0.90, 0.902, rule, cycles=25)
        changes += len(history) - 1
        flips = sum(1 for i in range(2, len(history)) if history[i] == history[i - 2])
        assert flips == 0, f"seed {seed}: {history}"
    assert changes <= 3  # 300 challenges between near-equal models: at most a handful of changes


def test_a_really_better_model_is_promoted_and_stays():
    rule = PromotionRule(min_pairs=100, looks=5, alpha=0.01, min_gain=0.005, cooldown_s=3600.0)
    for seed in range(5):
        history = _simulate(np.random.default_rng(seed), 0.88, 0.93, rule, cycles=10)
        assert history[:2] == ["A", "B"] and history.count("A") == 1, history

"""Tests of the routing-quality metrics (edge_eco.routing_metrics).

The hand-worked cases are small arrays whose values are computed in the comments; the properties
check the definitions (curve ends, oracle optimality, ECE and AURC bounds) on random data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_eco.routing_metrics import (accuracy_at_remote_rate, apgr, aurc, cpt, curve, eaurc, ece,
                                      max_softmax_scores, oracle_scores, pgr, random_scores,
                                      summarise)

# --- Case A, N = 4 ----------------------------------------------------------------------------
# local right on 0,1; remote right on 0,2,3. Scores route 1, 2, 3, 0 in that order, whose gains
# (remote - local) are -1, +1, +1, 0: right answers 2, 1, 2, 3, 3 after routing 0..4 requests.
LOCAL = [1, 1, 0, 0]
REMOTE = [1, 0, 1, 1]
SCORE = [0.1, 0.9, 0.8, 0.2]
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
ACCS = [0.5, 0.25, 0.5, 0.75, 0.75]
WEAK, STRONG = 0.5, 0.75          # PGR on GRID = (acc - 0.5) / 0.25 = [0, -1, 0, 1, 1]


def test_curve_hand_case():
    assert curve(LOCAL, REMOTE, SCORE, GRID).tolist() == ACCS


def test_curve_rounds_rate_times_n():
    # N = 4: 0.1 -> round(0.4) = 0, 0.2 -> 1, 0.3 -> 1, 0.625 -> round(2.5) = 2 (half to even).
    assert curve(LOCAL, REMOTE, SCORE, [0.1, 0.2, 0.3, 0.625]).tolist() == [0.5, 0.25, 0.25, 0.5]


def test_curve_breaks_ties_by_index():
    same = [0.5, 0.5, 0.5, 0.5]
    # Routing order 0, 1, 2, 3. Gains +1, 0, 0, -1: right 3, 4, 4, 4, 3.
    assert curve([0, 1, 1, 1], [1, 1, 1, 0], same, GRID).tolist() == [0.75, 1.0, 1.0, 1.0, 0.75]
    # Mirror image: gains -1, 0, 0, +1: right 3, 2, 2, 2, 3.
    assert curve([1, 1, 1, 0], [0, 1, 1, 1], same, GRID).tolist() == [0.75, 0.5, 0.5, 0.5, 0.75]


def test_curve_accepts_booleans_and_float_zero_one():
    as_bool = curve(np.array(LOCAL, bool), np.array(REMOTE, float), SCORE, GRID)
    assert as_bool.tolist() == ACCS


def test_pgr_hand_values_and_no_clipping():
    assert pgr(0.8, 0.6, 0.9) == pytest.approx(2 / 3)
    assert pgr(0.95, 0.6, 0.9) == pytest.approx(7 / 6)     # beats the strong model: > 1
    assert pgr(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)     # worse than local only: < 0
    assert pgr(np.array(ACCS), WEAK, STRONG).tolist() == [0.0, -1.0, 0.0, 1.0, 1.0]
    assert isinstance(pgr(0.7, 0.6, 0.9), float)


def test_apgr_hand_case():
    # 0.25 * ((0 - 1)/2 + (-1 + 0)/2 + (0 + 1)/2 + (1 + 1)/2) = 0.25 * 0.5
    assert apgr(GRID, ACCS, WEAK, STRONG) == pytest.approx(0.125)


def test_apgr_of_the_two_constant_routers():
    assert apgr([0, 1], [0.6, 0.6], 0.6, 0.9) == pytest.approx(0.0)
    assert apgr([0, 1], [0.9, 0.9], 0.6, 0.9) == pytest.approx(1.0)
    # A straight line from weak to strong (what random routing gives on average): 1/2.
    assert apgr([0, 0.5, 1], [0.6, 0.75, 0.9], 0.6, 0.9) == pytest.approx(0.5)
    # Always at least as good as remote-only: PGR [1, 4/3, 4/3], area 7/12 + 8/12 > 1, not clipped.
    assert apgr([0, 0.5, 1], [0.9, 1.0, 1.0], 0.6, 0.9) == pytest.approx(1.25)


def test_cpt_hand_case():
    # PGR [0, -1, 0, 1, 1]: 0.5 is first reached between 0.5 (PGR 0) and 0.75 (PGR 1).
    assert cpt(GRID, ACCS, WEAK, STRONG, 0.5) == pytest.approx(0.625)
    assert cpt(GRID, ACCS, WEAK, STRONG, 0.8) == pytest.approx(0.7)
    assert cpt(GRID, ACCS, WEAK, STRONG, 1.0) == pytest.approx(0.75)
    assert cpt(GRID, ACCS, WEAK, STRONG, 0.0) == 0.0           # reached at the first point
    assert cpt(GRID, ACCS, WEAK, STRONG, -0.5) == 0.0
    assert cpt(GRID, ACCS, WEAK, STRONG, 1.01) is None         # never reached


def test_accuracy_at_remote_rate_hand_case():
    # N = 4: rates 0.05, 0.1 -> 0 routed; 0.2, 0.3 -> 1 routed (request 1, a loss).
    assert accuracy_at_remote_rate(LOCAL, REMOTE, SCORE) == {
        "0.05": 0.5, "0.1": 0.5, "0.2": 0.25, "0.3": 0.25}
    assert accuracy_at_remote_rate(LOCAL, REMOTE, SCORE, rates=(0.5, 1)) == {"0.5": 0.5, "1.0": 0.75}


def test_ece_hand_cases():
    # Two bins (0, .5], (.5, 1]: |1 - (.2 + .4)| + |2 - (.6 + .8 + .9)| = .4 + .3, over N = 5.
    assert ece([0.2, 0.4, 0.6, 0.8, 0.9], [0, 1, 1, 1, 0], n_bins=2) == pytest.approx(0.14)
    # One bin: |accuracy 0.5 - mean confidence 0.75|.
    assert ece([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 0], n_bins=1) == pytest.approx(0.25)
    # 15 bins, each sample alone in its bin: mean |correct - confidence| = (.1 + .45 + .05) / 3.
    assert ece([0.1, 0.55, 0.95], [0, 1, 1]) == pytest.approx(0.2)


def test_ece_bins_are_closed_on_the_right():
    # 0.5 belongs to (0, .5]: |0 - .5| + |1 - .7| = .8, over 2. (In (.5, 1] it would be 0.1.)
    assert ece([0.5, 0.7], [0, 1], n_bins=2) == pytest.approx(0.4)
    assert ece([0.0, 1.0], [0, 1], n_bins=2) == 0.0


def test_aurc_and_eaurc_hand_case():
    # Errors in confidence order 0,1,0,1 -> risks 0, 1/2, 1/3, 2/4: mean 1/3.
    # Best order 0,0,1,1 -> risks 0, 0, 1/3, 2/4: mean 5/24. E-AURC = 8/24 - 5/24 = 1/8.
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert aurc(conf, correct) == pytest.approx(1 / 3)
    assert eaurc(conf, correct) == pytest.approx(0.125)
    # Equal confidences are taken in index order.
    assert aurc([0.5, 0.5, 0.5, 0.5], correct) == pytest.approx(1 / 3)
    assert aurc([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == pytest.approx(5 / 24)


def test_aurc_extremes():
    assert aurc([0.3, 0.2, 0.1], [1, 1, 1]) == 0.0
    assert aurc([0.3, 0.2, 0.1], [0, 0, 0]) == 1.0
    assert eaurc([0.3, 0.2, 0.1], [0, 0, 0]) == 0.0


def test_baseline_scores():
    assert oracle_scores([0, 0, 1, 1], [1, 0, 1, 0]).tolist() == [3.0, 2.0, 1.0, 0.0]
    assert max_softmax_scores([0.9, 0.2, 0.5]) == pytest.approx([0.1, 0.8, 0.5])
    r = random_scores(5, seed=0)
    assert r.shape == (5,) and np.all((r >= 0) & (r < 1))
    assert r.tolist() == random_scores(5, seed=0).tolist()
    assert r.tolist() == random_scores(5, np.random.default_rng(0)).tolist()
    assert r.tolist() != random_scores(5, seed=1).tolist()
    assert random_scores(0, seed=0).shape == (0,)


def test_oracle_curve_hand_case():
    # Oracle routes 2, 3 (gain +1 each), then 0 (both right), then 1 (a loss): right 2, 3, 4, 4, 3.
    assert curve(LOCAL, REMOTE, oracle_scores(LOCAL, REMOTE), GRID).tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]


def test_summarise_hand_case():
    s = summarise("msp", LOCAL, REMOTE, SCORE, WEAK, STRONG, grid=GRID)
    assert s == {
        "name": "msp", "rates": GRID, "accuracy": ACCS,
        "apgr": pytest.approx(0.125), "cpt50": pytest.approx(0.625), "cpt80": pytest.approx(0.7),
        "accuracy_at_remote_rate": {"0.05": 0.5, "0.1": 0.5, "0.2": 0.25, "0.3": 0.25},
    }
    json.dumps(s)   # JSON-ready: plain floats, lists, None


def test_summarise_default_grid():
    s = summarise("random", LOCAL, REMOTE, SCORE, WEAK, STRONG)
    assert len(s["rates"]) == len(s["accuracy"]) == 101
    assert s["rates"][0] == 0.0 and s["rates"][-1] == 1.0 and s["rates"][50] == 0.5
    assert s["accuracy"][0] == 0.5 and s["accuracy"][-1] == 0.75
    assert s["cpt80"] is None or 0.0 <= s["cpt80"] <= 1.0


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: pgr(0.7, 0.6, 0.6),
    lambda: apgr(GRID, ACCS, 0.6, 0.6),
    lambda: cpt(GRID, ACCS, 0.6, 0.6, 0.5),
])
def test_no_gap_between_weak_and_strong(call):
    with pytest.raises(ValueError, match="strong_acc == weak_acc"):
        call()


@pytest.mark.parametrize("rates, match", [
    ([0.1, 0.5, 1.0], "from 0 to 1"),
    ([0.0, 0.5, 0.9], "from 0 to 1"),
    ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
    ([0.0, 0.6, 0.4, 1.0], "strictly increasing"),
    ([0.0], "at least two"),
    ([0.0, 1.5], r"\[0, 1\]"),
])
def test_apgr_grid_errors(rates, match):
    with pytest.raises(ValueError, match=match):
        apgr(rates, [0.5] * len(rates), 0.5, 0.75)


@pytest.mark.parametrize("call, match", [
    (lambda: apgr(GRID, ACCS[:-1], WEAK, STRONG), "same length"),
    (lambda: cpt(GRID, ACCS, WEAK, STRONG, float("nan")), "target"),
    (lambda: cpt([0.5, 0.25], [0.5, 0.6], WEAK, STRONG, 0.5), "strictly increasing"),
    (lambda: pgr(0.7, float("nan"), 0.9), "finite"),
    (lambda: curve(LOCAL, REMOTE[:3], SCORE, GRID), "same length"),
    (lambda: curve(LOCAL, REMOTE, SCORE, [0.5, 1.2]), r"rates must lie in \[0, 1\]"),
    (lambda: curve(LOCAL, REMOTE, [0.1, np.nan, 0.3, 0.4], GRID), "remote_score must be finite"),
    (lambda: curve([1, 2, 0, 0], REMOTE, SCORE, GRID), "local_correct must hold only"),
    (lambda: curve([], [], [], GRID), "non-empty 1-D"),
    (lambda: curve([LOCAL], [REMOTE], [SCORE], GRID), "non-empty 1-D"),
    (lambda: ece([0.5, 1.2], [1, 0]), r"confidence must lie in \[0, 1\]"),
    (lambda: ece([0.5, 0.6], [1, 0], n_bins=0), "n_bins"),
    (lambda: ece([0.5, 0.6], [1, 0], n_bins=2.5), "n_bins"),
    (lambda: ece([0.5, 0.6], [1]), "same length"),
    (lambda: aurc([0.5, 0.6], [1, 0, 1]), "same length"),
    (lambda: eaurc([0.5, 0.6], [1, 3]), "correct must hold only"),
    (lambda: max_softmax_scores([0.5, -0.1]), r"\[0, 1\]"),
    (lambda: oracle_scores([1, 0], [1]), "same length"),
    (lambda: random_scores(-1, seed=0), "non-negative"),
])
def test_bad_input_is_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="seed"):
        random_scores(3, None)
    with pytest.raises(TypeError, match="local_correct must be numeric"):
        curve(["yes", "no"], [1, 0], [0.1, 0.2], [0.5])


# --- properties -------------------------------------------------------------------------------

TIED_SCORES = st.integers(0, 4).map(lambda x: x / 4)      # few values, so many ties


@st.composite
def routing_data(draw):
    n = draw(st.integers(1, 40))
    bits = st.lists(st.booleans(), min_size=n, max_size=n)
    local, remote = np.array(draw(bits)), np.array(draw(bits))
    score = np.array(draw(st.lists(TIED_SCORES | st.floats(0, 1), min_size=n, max_size=n)))
    conf = np.array(draw(st.lists(TIED_SCORES | st.floats(0, 1), min_size=n, max_size=n)))
    return local, remote, score, conf


RATES = np.linspace(0, 1, 21)


@given(routing_data())
def test_curve_ends_are_local_and_remote_accuracy(data):
    local, remote, score, _ = data
    acc = curve(local, remote, score, [0.0, 1.0])
    assert acc[0] == pytest.approx(local.mean()) and acc[1] == pytest.approx(remote.mean())


@given(routing_data(), st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_curve_matches_a_direct_computation(data, rates):
    local, remote, score, _ = data
    n = len(local)
    order = sorted(range(n), key=lambda i: (-score[i], i))
    expected = []
    for r in rates:
        routed = set(order[:round(r * n)])
        expected.append(sum(remote[i] if i in routed else local[i] for i in range(n)) / n)
    assert curve(local, remote, score, rates) == pytest.approx(expected)


@given(routing_data(), st.integers(0, 2**32 - 1))
def test_oracle_dominates_every_baseline_at_every_rate(data, seed):
    local, remote, score, conf = data
    best = curve(local, remote, oracle_scores(local, remote), RATES)
    for other in (random_scores(len(local), seed), max_softmax_scores(conf), score):
        assert np.all(best >= curve(local, remote, other, RATES) - 1e-12)
    weak, strong = local.mean(), remote.mean()
    assume(strong > weak)
    other = curve(local, remote, score, RATES)
    assert apgr(RATES, best, weak, strong) >= apgr(RATES, other, weak, strong) - 1e-12


@given(routing_data(), st.floats(-2, 2), st.floats(-2, 2))
def test_cpt_grows_with_the_target(data, t1, t2):
    local, remote, score, _ = data
    assume(local.mean() != remote.mean())
    accs = curve(local, remote, score, RATES)
    lo, hi = sorted((t1, t2))
    c_lo, c_hi = (cpt(RATES, accs, local.mean(), remote.mean(), t) for t in (lo, hi))
    if c_hi is not None:
        assert c_lo is not None and c_lo <= c_hi
    if c_lo is not None:
        assert 0.0 <= c_lo <= 1.0


@given(routing_data(), st.integers(1, 30))
def test_ece_is_in_unit_interval(data, n_bins):
    local, _, _, conf = data
    assert 0.0 <= ece(conf, local, n_bins) <= 1.0


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=10),
       st.integers(1, 30))
def test_ece_is_zero_when_calibrated(groups, n_bins):
    # Each group: m samples at confidence a/m, a of them right. Every bin then has
    # sum(correct) == sum(confidence), however the groups fall into bins.
    conf, correct = [], []
    for m, a in groups:
        a = min(a, m)
        conf += [a / m] * m
        correct += [1] * a + [0] * (m - a)
    assert ece(conf, correct, n_bins) == pytest.approx(0.0, abs=1e-9)


@given(routing_data())
def test_aurc_bounds_and_eaurc_nonnegative(data):
    local, _, _, conf = data
    assert 0.0 <= aurc(conf, local) <= 1.0
    assert eaurc(conf, local) >= 0.0


@given(routing_data())
@settings(max_examples=50)
def test_perfect_ranking_has_the_optimal_aurc(data):
    local, _, _, conf = data
    perfect = np.where(local, 0.5 + conf / 2, conf / 2.0001)      # every right answer above every wrong
    assert eaurc(perfect, local) == 0.0

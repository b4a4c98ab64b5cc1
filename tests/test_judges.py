"""Tests of calibrated votes and the coalition judge (edge_eco.judges).

The entries mirror the banking specialist of tests/test_manifest.py: labels
("balance", "transfer", "not_mine") with "not_mine" as its decline label.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_eco.judges import Vote, calibrated_vote, judge
from edge_eco.manifest import Calibration, FileEntry, ModelEntry

REJECT = "out_of_scope"


def entry(temperature: float = 1.0, reject_below: float = 0.0, decline: str | None = "not_mine",
          labels: tuple[str, ...] = ("balance", "transfer", "not_mine")) -> ModelEntry:
    return ModelEntry(id="banking", version="1", role="specialist", backend="fake",
                      file=FileEntry("models/banking.npz", "b2" * 32), input="hashed-text",
                      labels=labels, decline_label=decline,
                      calibration=Calibration(temperature=temperature, reject_below=reject_below))


# --- calibrated_vote --------------------------------------------------------------------------

def test_softmax_of_the_logits():
    v = calibrated_vote(entry(), np.array([2.0, 0.0, 0.0], np.float32), REJECT)
    assert v == Vote("banking", "balance", pytest.approx(math.exp(2) / (math.exp(2) + 2)), False)
    assert v.confidence == pytest.approx(0.7869860421615985)


def test_temperature_divides_the_logits():
    hot = calibrated_vote(entry(temperature=2.0), np.array([2.0, 0.0, 0.0]), REJECT)
    assert hot.label == "balance"
    assert hot.confidence == pytest.approx(math.e / (math.e + 2))
    cold = calibrated_vote(entry(temperature=0.5), np.array([2.0, 0.0, 0.0]), REJECT)
    assert cold.confidence == pytest.approx(math.exp(4) / (math.exp(4) + 2))


def test_logits_of_any_shape_are_flattened():
    v = calibrated_vote(entry(), np.array([[0.0, 3.0, 1.0]]), REJECT)
    assert v.label == "transfer"


def test_large_logits_do_not_overflow():
    v = calibrated_vote(entry(), np.array([1e4, 0.0, -1e4]), REJECT)
    assert v.label == "balance" and v.confidence == 1.0


def test_top_decline_label_declines_with_the_reject_label():
    v = calibrated_vote(entry(), np.array([0.0, 0.0, 3.0]), REJECT)
    assert v == Vote("banking", REJECT, pytest.approx(math.exp(3) / (math.exp(3) + 2)), declined=True)


def test_reject_below_answers_the_reject_label_without_declining():
    # softmax([1, 0.5, 0]) tops at 0.5065 < 0.6
    v = calibrated_vote(entry(reject_below=0.6), np.array([1.0, 0.5, 0.0]), REJECT)
    expected = math.exp(1) / (math.exp(1) + math.exp(0.5) + 1)
    assert v == Vote("banking", REJECT, pytest.approx(expected), declined=False)


def test_reject_below_is_a_strict_floor():
    p = calibrated_vote(entry(), np.array([1.0, 0.5, 0.0]), REJECT).confidence
    assert calibrated_vote(entry(reject_below=p), np.array([1.0, 0.5, 0.0]), REJECT).label == "balance"


def test_decline_wins_over_reject_below():
    v = calibrated_vote(entry(reject_below=0.99), np.array([0.0, 0.0, 1.0]), REJECT)
    assert v.declined and v.label == REJECT


def test_model_without_decline_label_never_declines():
    v = calibrated_vote(entry(decline=None), np.array([0.0, 0.0, 3.0]), REJECT)
    assert v.label == "not_mine" and not v.declined


# Distinct quarter-integer logits: no near-ties, so the top label is unambiguous.
logits_st = st.lists(st.integers(-200, 200), min_size=3, max_size=3, unique=True).map(
    lambda xs: np.array(xs, dtype=np.float64) / 4)
temperature_st = st.floats(1e-3, 1e3)


@given(logits=logits_st, t=temperature_st, reject_below=st.floats(0, 1))
def test_vote_properties(logits, t, reject_below):
    e = entry(temperature=t, reject_below=reject_below)
    v = calibrated_vote(e, logits, REJECT)
    assert v.model_id == "banking"
    assert 1 / 3 - 1e-9 <= v.confidence <= 1.0
    top = e.labels[int(np.argmax(logits))]
    if top == "not_mine":
        assert v.declined and v.label == REJECT
    elif v.confidence < reject_below:
        assert not v.declined and v.label == REJECT
    else:
        assert not v.declined and v.label == top


@given(logits=logits_st, t=temperature_st, shift=st.floats(-100, 100))
def test_vote_is_shift_invariant(logits, t, shift):
    a = calibrated_vote(entry(temperature=t), logits, REJECT)
    b = calibrated_vote(entry(temperature=t), logits + shift, REJECT)
    assert (a.label, a.declined) == (b.label, b.declined)
    assert a.confidence == pytest.approx(b.confidence, abs=1e-6)


@given(logits=logits_st, t1=temperature_st, t2=temperature_st)
def test_higher_temperature_never_raises_confidence(logits, t1, t2):
    lo, hi = sorted((t1, t2))
    sharp = calibrated_vote(entry(temperature=lo), logits, REJECT)
    flat = calibrated_vote(entry(temperature=hi), logits, REJECT)
    assert flat.confidence <= sharp.confidence + 1e-12


# --- judge ------------------------------------------------------------------------------------

def test_most_confident_answer_wins():
    votes = [Vote("banking", "balance", 0.7), Vote("travel", "hotel", 0.9), Vote("general", "balance", 0.8)]
    assert judge(votes, REJECT) == Vote("travel", "hotel", 0.9)


def test_declined_votes_do_not_win_however_confident():
    votes = [Vote("banking", REJECT, 0.99, declined=True), Vote("general", "hotel", 0.3)]
    assert judge(votes, REJECT) == Vote("general", "hotel", 0.3)


def test_a_reject_below_vote_still_counts_as_an_answer():
    votes = [Vote("banking", REJECT, 0.95, declined=True), Vote("travel", REJECT, 0.4)]
    assert judge(votes, REJECT) == Vote("travel", REJECT, 0.4)


def test_all_declined_answers_reject_with_the_least_confident_decline():
    votes = [Vote("banking", REJECT, 0.9, declined=True), Vote("travel", REJECT, 0.6, declined=True)]
    assert judge(votes, REJECT) == Vote("banking+travel", REJECT, 0.6, declined=True)


def test_ties_go_to_the_first_vote():
    votes = [Vote("banking", "balance", 0.8), Vote("general", "transfer", 0.8)]
    assert judge(votes, REJECT).model_id == "banking"


def test_single_vote_is_returned_as_is():
    v = Vote("banking", "balance", 0.42)
    assert judge([v], REJECT) is v


def test_no_votes_is_a_value_error():
    with pytest.raises(ValueError, match="at least one vote"):
        judge([], REJECT)


vote_st = st.builds(Vote, model_id=st.sampled_from(["banking", "travel", "general"]),
                    label=st.sampled_from(["balance", "hotel", REJECT]),
                    confidence=st.floats(0, 1), declined=st.booleans())


@given(st.lists(vote_st, min_size=1, max_size=6))
def test_judge_properties(votes):
    out = judge(votes, REJECT)
    answering = [v for v in votes if not v.declined]
    if answering:
        assert out in answering
        assert out.confidence == max(v.confidence for v in answering)
        assert not out.declined
    else:
        assert out.declined and out.label == REJECT
        assert out.confidence == min(v.confidence for v in votes)
        assert out.model_id == "+".join(v.model_id for v in votes)


@given(st.lists(vote_st, min_size=1, max_size=6), st.randoms())
def test_judge_confidence_does_not_depend_on_vote_order(votes, rnd):
    shuffled = list(votes)
    rnd.shuffle(shuffled)
    assert judge(shuffled, REJECT).confidence == judge(votes, REJECT).confidence


def test_settle_compares_the_generalist_with_the_declines():
    from edge_eco.judges import settle
    declined = Vote("a+b", "oos", 0.8, declined=True)
    assert settle(declined, Vote("generalist", "balance", 0.9)).label == "balance"
    assert settle(declined, Vote("generalist", "balance", 0.8)).label == "balance"   # ties go to the answer
    assert settle(declined, Vote("generalist", "balance", 0.5)) is declined
    assert settle(declined, Vote("generalist", "oos", 0.3, declined=True)) is declined

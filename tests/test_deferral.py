"""Learned remote deferral: C kernel == numpy reference on real data, and the online controller
holds the remote-call rate on target when the input distribution drifts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_eco
from edge_eco._native import Featurizer, RouterKernel
from edge_eco.deferral import Deferral, RemoteRateController, meta_features
from edge_eco.errors import IntegrityError
from edge_eco.router import DeferralWeights
from edge_eco.routerfile import read_router

from conftest import CLINC, MODELS

BUNDLE = MODELS / "clinc150"


def shipped() -> tuple[DeferralWeights, int]:
    header, a = read_router(BUNDLE / "deferral.bin")
    return DeferralWeights(a["weight"], a["scale"], a["bias"], np.zeros(2, np.float32)), header["dim"]


def test_kernel_and_reference_give_the_same_score_on_every_clinc150_test_query(clinc_test):
    w, dim = shipped()
    c, ref = Deferral(w, dim, RouterKernel(w)), Deferral(w, dim, None)
    feat = Featurizer(edge_eco.open(BUNDLE).manifest.featurizer)
    rng = np.random.default_rng(0)
    diffs = 0
    for text, _ in clinc_test:
        idx, val = feat(text.encode())
        conf, rej = float(rng.random()), bool(rng.random() < 0.2)
        diffs += c.score(idx, val, conf, rej) != ref.score(idx, val, conf, rej)
    assert diffs == 0


def test_meta_features_are_clipped_fixed_rows():
    idx, val = meta_features(100, 1.7, True)
    assert idx.tolist() == [100, 101, 102] and val.tolist() == [0.0, 1.0, 0.0]
    idx, val = meta_features(100, 0.25, True)
    assert val.tolist() == [0.75, 1.0, 0.75]


def test_wrong_shape_is_refused():
    w, dim = shipped()
    with pytest.raises(IntegrityError, match="expected"):
        Deferral(w, dim + 1)


@settings(max_examples=50, deadline=None)
@given(target=st.floats(0.05, 0.5), start=st.floats(-0.5, 0.5), p_high=st.floats(0.0, 1.0))
def test_controller_converges_to_the_target_rate(target, start, p_high):
    """Scores from a mixture; whatever the start margin, the late rate is the target."""
    rng = np.random.default_rng(1)
    c = RemoteRateController(start, target, 0.01, 2.0)
    scores = np.where(rng.random(6000) < p_high, rng.normal(0.3, 0.2, 6000), rng.normal(-0.3, 0.2, 6000))
    went = []
    for s in scores:
        w = s > c.margin
        c.update(w)
        went.append(w)
    assert abs(np.mean(went[2000:]) - target) <= 0.02


def test_controller_authority_is_bounded():
    c = RemoteRateController(0.1, 0.0, 0.5, 0.25)
    for _ in range(100):
        c.update(True)
    assert c.margin == pytest.approx(0.1 + 0.25)


def _stream(clinc_test, weights: dict[str, float], n: int, seed: int):
    domain_of = json.loads((CLINC.parent / "intent_to_domain.json").read_text())
    rng = np.random.default_rng(seed)
    w = np.array([weights.get(domain_of.get(lab, "oos"), 1.0) for _, lab in clinc_test])
    pick = rng.choice(len(clinc_test), size=n, p=w / w.sum())
    return [clinc_test[i] for i in pick]


@pytest.mark.parametrize("weights", [
    {"oos": 4.0},                                    # out-of-scope traffic quadruples
    {"banking": 5.0, "credit_cards": 5.0},           # a finance-heavy device
    {"small_talk": 6.0, "oos": 2.0},                 # chatty users
])
def test_remote_rate_stays_on_target_under_drift(clinc_test, weights):
    """Replay a re-weighted test stream: the realised remote rate stays within 2 points of target."""
    class Counting:
        def infer(self, texts, *, timeout_s=None):
            from edge_eco.fallback import RemoteAnswer
            return [RemoteAnswer("oos", 0.9, "stub", "1", 0.1) for _ in texts]

        def close(self):
            pass

    stream = _stream(clinc_test, weights, 3000, 7)
    with edge_eco.open(BUNDLE, remote_client=Counting()) as eco:
        target = eco.controller.target
        paths = [eco.answer(t).path for t, _ in stream]
    rate = np.mean([p == "remote" for p in paths[500:]])
    assert abs(rate - target) <= 0.02, (rate, target)


def test_gain_score_is_stable_for_extreme_logits():
    from edge_eco.deferral import gain_score
    assert gain_score(np.array([1000.0, -1000.0], np.float32)) == 1.0
    assert gain_score(np.array([-1000.0, 1000.0], np.float32)) == -1.0
    assert gain_score(np.array([0.0, 0.0], np.float32)) == 0.0

"""The shipped sensor ecology (models/har, int8 TFLite) answers real STM32 HAR windows through the
dense-vector contract, beats its own generalist, and refuses malformed windows."""

from __future__ import annotations

import numpy as np
import pytest

import edge_eco
from edge_eco.datasets import load_requests
from edge_eco.dense import raw_features, validate_window, DenseSpec
from edge_eco.errors import RequestError
from edge_eco.runjob import RunOptions, run_job

from conftest import DATA, MODELS

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
HAR = DATA / "stm32_har"


@pytest.fixture(scope="module")
def har_test():
    return load_requests(HAR, "test")


def test_run_reports_like_clinc_and_beats_the_generalist(har_test):
    with edge_eco.open(MODELS / "har") as eco:
        r = run_job(eco, har_test, RunOptions(local_baseline="generalist", remote_baseline=False))
    assert r["requests"] == len(har_test) == 380
    assert r["errors"] == 0
    assert r["accuracy"] >= 0.95
    assert r["accuracy"] > r["baselines"]["local_generalist"]["accuracy"]
    assert r["paths"]["remote"] == 0 and r["paths"]["direct"] + r["paths"]["coalition"] == 380
    for key in ("accuracy", "paths", "latency_ms", "local_latency_ms", "remote_rate", "loads", "baselines"):
        assert key in r


def test_answers_carry_provenance_and_calibrated_confidence(har_test):
    with edge_eco.open(MODELS / "har") as eco:
        a = eco.answer(har_test[0].vector)
        flat = eco.answer(har_test[0].vector.reshape(-1).tolist())
    assert a.label in ("running", "stationary", "walking")
    assert 0.0 < a.confidence <= 1.0
    assert a.provenance["route"]["candidates"][0] in ("still_tiny", "active_tiny", "active_large", "generalist")
    assert (flat.label, flat.confidence) == (a.label, a.confidence)


@pytest.mark.parametrize("window, why", [
    (np.zeros((51, 3)), "shape"), (np.full((52, 3), np.nan), "NaN"), (np.full((52, 3), 5000.0), "range"),
    ("walking", "numbers"), ([[1, 2]] * 52, "shape"),
    # found by a fresh-clone trial: these were accepted (or, for None, called "shape []")
    (np.ones((52, 3), np.complex64), "real numbers.*complex"), (np.ones((52, 3), bool), "real numbers.*bool"),
    (np.zeros((52, 3), "datetime64[s]"), "real numbers.*datetime64"),
    (np.full((52, 3), "12"), "real numbers.*<U2"), ([["1", "2", "3"]] * 52, "real numbers"),
    (None, "array of numbers.*NoneType"), ([[1, 2, 3]] * 51 + [[1, 2]], "array of numbers|real numbers"),
    ([[1, None, 3]] * 52, "real numbers.*object"),
    # found by a trial: numpy cast a bool in a list of numbers to 1.0 silently
    ([[True, 1.0, 2.0]] * 52, "real numbers.*bool"), ([1.0, 2.0, False] * 52, "real numbers.*bool"),
    # a float64 past float32's range had read as "NaN or infinity", with a RuntimeWarning on stderr
    (np.full((52, 3), 1e300), "range"), (np.full((52, 3), -1e39), "range"),
    (np.full((52, 3), np.iinfo(np.int64).min), "range"), (np.full((52, 3), np.iinfo(np.uint64).max), "range")])
def test_malformed_windows_are_refused(window, why):
    with edge_eco.open(MODELS / "har") as eco:
        with pytest.raises(RequestError, match=why):
            eco.answer(window)


def test_integer_windows_are_accepted_like_floats(har_test):
    w = np.rint(har_test[0].vector).astype(np.int16)
    with edge_eco.open(MODELS / "har") as eco:
        a, b = eco.answer(w), eco.answer(w.astype(np.float32))
    assert (a.label, a.confidence) == (b.label, b.confidence)


def test_features_are_deterministic_and_finite():
    spec = DenseSpec("accel-window-v1", 52, 3, 4000.0)
    w = validate_window(np.random.default_rng(0).integers(-4000, 4000, (52, 3)), spec)
    a, b = raw_features(w[None]), raw_features(w[None].copy())
    assert a.shape == (1, 24) and np.isfinite(a).all() and np.array_equal(a, b)


def test_a_cold_model_whose_measured_load_misses_the_deadline_is_not_routed_to(har_test):
    with edge_eco.open(MODELS / "har") as eco:
        cands = list(eco.manifest.router.candidates)
        eco.residency.stats.load_times["active_tiny"] = 50.0     # as if its cold load had taken 50 ms
        mask = eco._mask(10.0)
        assert not mask[cands.index("active_tiny")] and mask.sum() == len(cands) - 1
        walking = next(e for e in har_test if e.label == "walking")
        a = eco.answer(walking.vector, deadline_ms=10.0)
        assert "active_tiny" not in a.provenance["route"]["candidates"]
        with eco.residency.use("active_tiny"):
            pass                                                  # resident now: no cold load to pay
        eco.residency.stats.load_times["active_tiny"] = 50.0
        assert eco._mask(10.0).all()

"""The C deferral router equals its numpy reference: same logits (bit for bit), order and probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco._native import Featurizer, RouterKernel
from edge_eco.errors import IntegrityError, NativeError
from edge_eco.featurizer import FeaturizerSpec
from edge_eco.router import DeferralWeights, route_reference

SPEC = FeaturizerSpec(seed=20261203, dim=1 << 16)


def weights(k: int, dim: int, seed: int) -> DeferralWeights:
    rng = np.random.default_rng(seed)
    return DeferralWeights(rng.integers(-127, 128, (dim, k)).astype(np.int8),
                           (rng.random(k) * 0.02).astype(np.float32), rng.normal(size=k).astype(np.float32),
                           rng.random(k).astype(np.float32))


def same(kernel: RouterKernel, w, idx, val, mask, lam) -> bool:
    order, probs, logits = kernel.route(idx, val, mask.astype(np.uint8), lam)
    ref = route_reference(w, idx, val, mask.astype(bool), lam)
    return (tuple(order.tolist()) == ref.order and np.array_equal(logits.view(np.uint32), ref.logits.view(np.uint32))
            and np.allclose(probs, ref.probs, rtol=0, atol=1e-12))


def test_kernel_equals_reference_on_every_clinc150_test_query(clinc_test):
    w = weights(12, SPEC.dim, 0)
    kernel, feat = RouterKernel(w), Featurizer(SPEC, use_native=True)
    rng = np.random.default_rng(1)
    bad = 0
    for text, _ in clinc_test:
        idx, val = feat(text.encode())
        mask = rng.random(12) > 0.2
        mask[rng.integers(12)] = True
        bad += not same(kernel, w, idx, val, mask, float(rng.random()))
    assert bad == 0


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 64), nnz=st.integers(0, 50), seed=st.integers(0, 2**16), lam=st.floats(0, 5))
def test_kernel_equals_reference_on_random_inputs(k, nnz, seed, lam):
    w = weights(k, 256, seed)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(256, size=nnz, replace=False)).astype(np.int32)
    val = rng.random(nnz).astype(np.float32)
    mask = rng.random(k) > 0.3
    assert same(RouterKernel(w), w, idx, val, mask, lam)


def test_ties_rank_by_index_and_masked_candidates_never_appear():
    w = DeferralWeights(np.zeros((256, 4), np.int8), np.ones(4, np.float32), np.zeros(4, np.float32),
                        np.zeros(4, np.float32))
    order, probs, _ = RouterKernel(w).route(np.zeros(0, np.int32), np.zeros(0, np.float32),
                                            np.array([1, 0, 1, 1], np.uint8), 1.0)
    assert order.tolist() == [0, 2, 3]
    assert probs.tolist() == [0.5, 0.5, 0.5]


def test_out_of_range_index_is_refused_by_the_kernel():
    w = weights(3, 256, 0)
    with pytest.raises(NativeError, match="ee_router_route"):
        RouterKernel(w).route(np.array([300], np.int32), np.ones(1, np.float32), np.ones(3, np.uint8), 0.0)


def test_malformed_weights_are_integrity_errors():
    with pytest.raises(IntegrityError):
        DeferralWeights(np.zeros((8, 3), np.float32), np.ones(3, np.float32), np.zeros(3, np.float32),
                        np.zeros(3, np.float32))
    with pytest.raises(IntegrityError):
        DeferralWeights(np.zeros((8, 65), np.int8), *(np.ones(65, np.float32),) * 3)


def test_fused_featurize_and_route_equals_the_reference_on_every_clinc150_test_query(clinc_test):
    """ee_route_text == featurize_reference + router.route: same features, order and probabilities."""
    from edge_eco.featurizer import featurize_reference
    from edge_eco.router import RouterWeights, route

    rng = np.random.default_rng(3)
    k = 11
    w = RouterWeights(rng.integers(-127, 128, (SPEC.dim, k)).astype(np.int8), (rng.random(k) * 0.02).astype(np.float32),
                      rng.normal(size=k).astype(np.float32), 0.7)
    kernel, feat = RouterKernel(w), Featurizer(SPEC, use_native=True)
    bad = 0
    for text, _ in clinc_test:
        mask = rng.random(k) > 0.2
        mask[rng.integers(k)] = True
        idx, val, order, probs = kernel.route_text(feat, text.encode(), mask.astype(np.uint8), w.temperature)
        ri, rv = featurize_reference(SPEC, text.encode())
        r = route(w, ri, rv, mask)
        bad += not (np.array_equal(idx, ri) and np.array_equal(val, rv) and tuple(order) == r.order
                    and np.allclose(probs, r.probs, rtol=0, atol=1e-12))
    assert bad == 0


def test_fused_utility_route_equals_the_reference_on_every_clinc150_test_query(clinc_test):
    """ee_route_text in utility mode == featurize_reference + route_reference (correctness router)."""
    from edge_eco.featurizer import featurize_reference

    rng = np.random.default_rng(4)
    k = 11
    w = weights(k, SPEC.dim, 5)
    kernel, feat = RouterKernel(w), Featurizer(SPEC, use_native=True)
    bad = 0
    for i, (text, _) in enumerate(clinc_test):
        mask = rng.random(k) > 0.2
        mask[rng.integers(k)] = True
        lam = 0.0 if i % 2 else 0.3
        idx, val, order, probs = kernel.route_text(feat, text.encode(), mask.astype(np.uint8), lam, 1)
        ri, rv = featurize_reference(SPEC, text.encode())
        r = route_reference(w, ri, rv, mask, lam)
        bad += not (np.array_equal(idx, ri) and np.array_equal(val, rv) and tuple(order) == r.order
                    and np.allclose(probs, r.probs, rtol=0, atol=1e-12))
    assert bad == 0


def test_long_inputs_take_the_int64_path_and_still_match():
    """More than 16,384 features: the kernel accumulates in int64 and agrees with the reference."""
    w = weights(8, SPEC.dim, 6)
    rng = np.random.default_rng(7)
    idx = np.sort(rng.choice(SPEC.dim, 20000, replace=False)).astype(np.int32)
    val = rng.random(20000).astype(np.float32)
    val /= np.float32(np.sqrt((val.astype(np.float64) ** 2).sum()))
    assert same(RouterKernel(w), w, idx, val, np.ones(8, bool), 0.1)


def test_route_text_refuses_an_unknown_mode_and_a_bad_parameter():
    w = weights(3, SPEC.dim, 8)
    kernel, feat = RouterKernel(w), Featurizer(SPEC, use_native=True)
    mask = np.ones(3, np.uint8)
    for mode, param in ((2, 1.0), (0, 0.0), (1, -1.0)):
        with pytest.raises(NativeError):
            kernel.route_text(feat, b"hello there", mask, param, mode)


@pytest.mark.parametrize("k", [1, 10, 16, 17])
def test_lane_scoring_edges_match_the_reference(k):
    """k <= 16 reads every weight row as 16 lanes: the last rows (fewer than 16 bytes left) and a
    value of 1.0 (q = 32768, outside int16) take the plain loop; k = 17 takes the general one."""
    dim = 256
    w = weights(k, dim, 11 + k)
    kernel = RouterKernel(w)
    mask = np.ones(k, bool)
    cases = [(np.array([dim - 1], np.int32), np.array([1.0], np.float32)),          # q = 32768, last row
             (np.array([0], np.int32), np.array([1.0], np.float32)),                # q = 32768, first row
             (np.arange(dim - 4, dim, dtype=np.int32), np.full(4, 0.5, np.float32)),  # the last rows
             (np.arange(0, dim, 3, dtype=np.int32), np.full(86, 0.999, np.float32))]
    for idx, val in cases:
        assert same(kernel, w, idx, val, mask, 0.0)


def test_route_text_of_a_one_feature_text_matches_the_reference():
    """A single word with word n-grams only has one feature of value 1.0 (the q = 32768 case)."""
    from edge_eco.featurizer import featurize_reference

    spec = FeaturizerSpec(seed=3, dim=1 << 16, char_ngram_max=0, char_ngram_min=0)
    w = weights(10, spec.dim, 12)
    kernel, feat = RouterKernel(w), Featurizer(spec, use_native=True)
    idx, val, order, probs = kernel.route_text(feat, b"balance", np.ones(10, np.uint8), 0.2, 1)
    assert val.tolist() == [1.0]
    ri, rv = featurize_reference(spec, b"balance")
    r = route_reference(w, ri, rv, np.ones(10, bool), 0.2)
    assert tuple(order) == r.order and np.allclose(probs, r.probs, rtol=0, atol=1e-12)


def test_route_text_follows_a_changed_mask_and_parameter_on_the_same_thread():
    """The per-thread job is rebound when the mask array, the mode or the parameter changes."""
    from edge_eco.featurizer import featurize_reference

    w = weights(6, SPEC.dim, 13)
    kernel, feat = RouterKernel(w), Featurizer(SPEC, use_native=True)
    a, b = np.array([1, 1, 1, 0, 0, 0], np.uint8), np.array([0, 0, 0, 1, 1, 1], np.uint8)
    text = b"book a table for two"
    ri, rv = featurize_reference(SPEC, text)
    for mask, lam in ((a, 0.0), (b, 0.0), (a, 2.0), (a, 2.0), (b, 0.5)):
        _, _, order, probs = kernel.route_text(feat, text, mask, lam, 1)
        r = route_reference(w, ri, rv, mask.astype(bool), lam)
        assert tuple(order) == r.order and np.allclose(probs, r.probs, rtol=0, atol=1e-12)
    b[:] = [1, 0, 0, 0, 0, 0]  # the same array changed in place: read at the call, as before
    assert kernel.route_text(feat, text, b, 0.5, 1)[2] == [0]

"""Tests of the router decision (edge_eco.router) and the router weights file (edge_eco.routerfile).

Weights are tiny hand-made arrays (dim 4, three candidates) so expected probabilities can be
computed by hand; the property tests draw random int8 weights and sparse features.
"""

from __future__ import annotations

import math
import mmap

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_eco.errors import IntegrityError, RoutingError
from edge_eco.router import Route, RouterWeights, linear_logits, route
from edge_eco.routerfile import MAGIC, read_router, write_router

# Feature 0 speaks for candidate 2, feature 1 for candidate 0; features 2 and 3 are neutral.
WEIGHT = np.array([[0, 10, 40],
                   [30, 0, 0],
                   [0, 0, 0],
                   [1, 1, 1]], dtype=np.int8)
SCALE = np.array([0.1, 0.1, 0.1], dtype=np.float32)
BIAS = np.array([0.0, 0.5, 0.0], dtype=np.float32)
ALL = np.ones(3, dtype=bool)


def weights(temperature: float = 1.0) -> RouterWeights:
    return RouterWeights(WEIGHT, SCALE, BIAS, temperature)


def features(*pairs: tuple[int, float]) -> tuple[np.ndarray, np.ndarray]:
    idx = np.array([i for i, _ in pairs], dtype=np.int32)
    val = np.array([v for _, v in pairs], dtype=np.float32)
    return idx, val


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


# --- route ------------------------------------------------------------------------------------

def test_ranks_by_probability_with_hand_computed_values():
    idx, val = features((0, 1.0))
    # logits = [0, 10, 40] * 0.1 + [0, 0.5, 0] = [0, 1.5, 4]
    expected = softmax([0.0, 1.5, 4.0])
    r = route(weights(), idx, val, ALL)
    assert r.order == (2, 1, 0)
    assert r.probs == pytest.approx([expected[2], expected[1], expected[0]], rel=1e-6)
    assert r.confidence == r.probs[0]


def test_feature_values_weight_the_rows():
    # Values are scored in fixed point (1/32768): 0.75 and 1.0 are exact, so the tie is exact too.
    idx, val = features((0, 0.75), (1, 1.0))
    # logits = 0.75 * [0, 10, 40] * 0.1 + 1.0 * [30, 0, 0] * 0.1 + bias = [3.0, 1.25, 3.0]
    expected = softmax([3.0, 1.25, 3.0])
    r = route(weights(), idx, val, ALL)
    assert r.order == (0, 2, 1)  # tie between 0 and 2 keeps candidate order
    assert r.probs == pytest.approx([expected[0], expected[2], expected[1]], rel=1e-5)


def test_no_features_ranks_by_bias():
    idx, val = features()
    r = route(weights(), idx, val, ALL)
    assert r.order[0] == 1
    assert r.probs[0] == pytest.approx(softmax([0.0, 0.5, 0.0])[1], rel=1e-6)


def test_masked_candidate_is_left_out_and_the_rest_renormalised():
    idx, val = features((0, 1.0))
    r = route(weights(), idx, val, np.array([True, True, False]))
    assert r.order == (1, 0)
    assert r.probs == pytest.approx(softmax([1.5, 0.0]), rel=1e-6)
    assert sum(r.probs) == pytest.approx(1.0)


def test_single_eligible_candidate_gets_probability_one():
    idx, val = features((0, 1.0))
    r = route(weights(), idx, val, np.array([True, False, False]))
    assert r == Route((0,), (1.0,))


def test_all_false_mask_raises_routing_error():
    idx, val = features((0, 1.0))
    with pytest.raises(RoutingError, match="no model is eligible"):
        route(weights(), idx, val, np.zeros(3, dtype=bool))


def test_masked_candidate_never_returned_even_when_probabilities_underflow():
    # Temperature 1e-3 is allowed by the manifest; a logit gap of 1 then becomes 1000 and
    # exp(-1000) underflows to 0, the same value as a masked candidate.
    w = RouterWeights(np.zeros((4, 3), np.int8), SCALE, np.array([0.0, 0.0, -1.0], np.float32), 1e-3)
    idx, val = features()
    r = route(w, idx, val, np.array([False, True, True]))
    assert sorted(r.order) == [1, 2]
    assert r.order[0] == 1


def test_higher_temperature_flattens_lower_sharpens():
    idx, val = features((0, 1.0))
    cold, base, hot = (route(weights(t), idx, val, ALL) for t in (0.5, 1.0, 4.0))
    assert cold.order == base.order == hot.order == (2, 1, 0)
    assert cold.confidence > base.confidence > hot.confidence
    assert hot.confidence == pytest.approx(softmax([0.0, 0.375, 1.0])[2], rel=1e-6)
    very_hot = route(weights(1000.0), idx, val, ALL)
    assert very_hot.probs == pytest.approx([1 / 3] * 3, abs=2e-3)


@pytest.mark.parametrize("w, s, b", [
    (WEIGHT.astype(np.float32), SCALE, BIAS),       # weight must be int8
    (WEIGHT, SCALE[:2], BIAS),                      # scale [K]
    (WEIGHT, SCALE, BIAS[:2]),                      # bias [K]
    (WEIGHT[:, 0], SCALE[:1], BIAS[:1]),            # weight must be 2-D
])
def test_router_weights_shapes_are_checked(w, s, b):
    with pytest.raises(IntegrityError, match="router weights"):
        RouterWeights(w, s, b)


@st.composite
def router_case(draw, min_temperature=0.05, max_temperature=20.0):
    dim = draw(st.integers(1, 16))
    k = draw(st.integers(1, 6))
    weight = draw(hnp.arrays(np.int8, (dim, k)))
    scale = draw(hnp.arrays(np.float32, k, elements=st.floats(0.0625, 1.0, width=32)))
    bias = draw(hnp.arrays(np.float32, k, elements=st.floats(-5.0, 5.0, width=32)))
    temperature = draw(st.floats(min_temperature, max_temperature))
    idx = np.array(sorted(draw(st.sets(st.integers(0, dim - 1), max_size=dim))), dtype=np.int32)
    val = draw(hnp.arrays(np.float32, idx.shape[0], elements=st.floats(0.0, 1.0, width=32)))
    eligible = draw(hnp.arrays(np.bool_, k))
    return RouterWeights(weight, scale, bias, temperature), idx, val, eligible


@settings(max_examples=150, deadline=None)
@given(router_case())
def test_route_properties(case):
    w, idx, val, eligible = case
    assume(eligible.any())
    r = route(w, idx, val, eligible)
    assert len(r.order) == len(r.probs) == int(eligible.sum())
    assert len(set(r.order)) == len(r.order)
    assert all(0.0 <= p <= 1.0 for p in r.probs)
    assert sum(r.probs) <= 1.0 + 1e-6
    assert all(a >= b for a, b in zip(r.probs, r.probs[1:]))
    # The best candidate is eligible and has the highest logit among the eligible ones (that the
    # whole order is eligible is checked by the test below).
    logits = linear_logits(w, idx, val)  # what route() ranks by (fixed-point, exact)
    assert eligible[r.order[0]]
    assert logits[r.order[0]] == max(logits[i] for i in np.flatnonzero(eligible))


@settings(max_examples=150, deadline=None)
@given(router_case(min_temperature=1e-3, max_temperature=1e3))
def test_route_returns_exactly_the_eligible_candidates_at_any_manifest_temperature(case):
    w, idx, val, eligible = case
    assume(eligible.any())
    r = route(w, idx, val, eligible)
    assert sorted(r.order) == sorted(int(i) for i in np.flatnonzero(eligible))


@settings(max_examples=80, deadline=None)
@given(router_case())
def test_route_raises_on_an_all_false_mask(case):
    w, idx, val, eligible = case
    with pytest.raises(RoutingError):
        route(w, idx, val, np.zeros_like(eligible))


@settings(max_examples=80, deadline=None)
@given(router_case())
def test_route_is_deterministic(case):
    w, idx, val, eligible = case
    assume(eligible.any())
    assert route(w, idx, val, eligible) == route(w, idx, val, eligible)


# --- routerfile -------------------------------------------------------------------------------

ARRAYS = {
    "weight": np.arange(-24, 24, dtype=np.int8).reshape(16, 3),
    "scale": np.array([0.25, 0.5, 0.125], dtype=np.float32),
    "bias": np.array([-1.0, 0.0, 2.5], dtype=np.float32),
}


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of an mmap (through ndarray bases and a memoryview)."""
    base = a
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


@pytest.fixture
def router_path(tmp_path):
    path = tmp_path / "router.bin"
    write_router(path, "linear-softmax", ARRAYS, {"dim": 16, "n_out": 3})
    return path


def test_round_trip(router_path):
    header, arrays = read_router(router_path)
    assert header["kind"] == "linear-softmax" and header["dim"] == 16 and header["n_out"] == 3
    assert set(arrays) == {"weight", "scale", "bias"}
    for name, a in ARRAYS.items():
        assert arrays[name].dtype == a.dtype and arrays[name].shape == a.shape
        np.testing.assert_array_equal(arrays[name], a)
    assert header["arrays"]["weight"] == {"dtype": "int8", "shape": [16, 3],
                                          "offset": header["arrays"]["weight"]["offset"], "nbytes": 48}


def test_arrays_are_aligned_read_only_memory_maps(router_path):
    header, arrays = read_router(router_path)
    for name, a in arrays.items():
        assert header["arrays"][name]["offset"] % 64 == 0
        assert not a.flags.writeable
        assert _mapped(a)
    with pytest.raises(ValueError):
        arrays["weight"][0, 0] = 1


def test_read_arrays_feed_the_router(router_path):
    _, a = read_router(router_path)
    r = route(RouterWeights(a["weight"], a["scale"], a["bias"]), *features((0, 1.0)), np.ones(3, bool))
    # logits = [-24, -23, -22] * [0.25, 0.5, 0.125] + [-1, 0, 2.5] = [-7, -11.5, -0.25]
    assert r.order == (2, 0, 1)


def test_deterministic_bytes_for_equal_input(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_router(a, "linear-softmax", ARRAYS, {"dim": 16})
    reordered = {k: ARRAYS[k].copy() for k in ("scale", "bias", "weight")}
    write_router(b, "linear-softmax", reordered, {"dim": 16})
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes().startswith(MAGIC)


def test_big_endian_input_is_stored_little_endian(tmp_path):
    path = tmp_path / "r.bin"
    write_router(path, "linear-softmax", {"scale": np.array([1.5, -2.0], dtype=">f4")})
    _, arrays = read_router(path)
    np.testing.assert_array_equal(arrays["scale"], [1.5, -2.0])


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(TypeError, match="float64"):
        write_router(tmp_path / "r.bin", "linear-softmax", {"scale": np.zeros(2)})


def test_bad_magic(router_path):
    data = bytearray(router_path.read_bytes())
    data[:8] = b"NOTROUTE"
    router_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="bad magic"):
        read_router(router_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(IntegrityError, match="empty"):
        read_router(path)


def test_every_truncation_is_an_integrity_error(router_path):
    data = router_path.read_bytes()
    header, _ = read_router(router_path)
    end = max(s["offset"] + s["nbytes"] for s in header["arrays"].values())
    for n in [*range(1, end, 3), end - 1]:
        router_path.write_bytes(data[:n])
        with pytest.raises(IntegrityError):
            read_router(router_path)
    # Trailing alignment padding is not data: the file still reads without it.
    router_path.write_bytes(data[:end])
    np.testing.assert_array_equal(read_router(router_path)[1]["weight"], ARRAYS["weight"])


def test_header_that_is_not_a_map(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(MAGIC + (1).to_bytes(4, "little") + b"\x01" + b"\0" * 64)
    with pytest.raises(IntegrityError):
        read_router(path)

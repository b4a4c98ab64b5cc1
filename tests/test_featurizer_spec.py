"""Tests of the featurizer spec and its numpy reference (edge_eco.featurizer), pure parts only.

The oracle below is a plain-Python reading of the spec in the module docstring (regex tokens,
FNV-1a-32 with the kind byte first, fmix32, integer weights, sqrt(count / total)), written
independently of the vectorised reference. The C kernel's agreement is tested elsewhere.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_eco.errors import ManifestError
from edge_eco.featurizer import VERSION, FeaturizerSpec, featurize_reference

MASK = 0xFFFFFFFF
WORD = re.compile(rb"[a-z0-9\x80-\xff]+")
NON_WORD_BYTES = bytes(b for b in range(256) if not (chr(b).isascii() and chr(b).isalnum()) and b < 0x80)


def fnv1a(seed: int, kind: int, data: bytes) -> int:
    h = 2166136261 ^ seed
    for c in bytes([kind]) + data:
        h = ((h ^ c) * 16777619) & MASK
    return h


def fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK
    return h ^ (h >> 16)


def ngrams(spec: FeaturizerSpec, data: bytes) -> list[tuple[int, bytes, int]]:
    """Every n-gram occurrence as (kind, bytes, weight), before any merging."""
    tokens = WORD.findall(data.lower())   # bytes.lower() folds ASCII A-Z only
    out = []
    for t in range(len(tokens)):
        for n in range(1, min(spec.word_ngram_max, t + 1) + 1):
            out.append((n, b" ".join(tokens[t - n + 1:t + 1]), spec.word_weight))
        if spec.char_ngram_max:
            padded = b" " + tokens[t] + b" "
            for n in range(spec.char_ngram_min, spec.char_ngram_max + 1):
                out += [(16 + n, padded[i:i + n], spec.char_weight) for i in range(len(padded) - n + 1)]
    return out


def oracle(spec: FeaturizerSpec, data: bytes) -> dict[int, float]:
    counts: Counter[int] = Counter()
    for kind, gram, weight in ngrams(spec, data):
        counts[fmix32(fnv1a(spec.seed, kind, gram)) & (spec.dim - 1)] += weight
    total = sum(counts.values())
    return {i: math.sqrt(c / total) for i, c in counts.items()}


def has_word_byte(data: bytes) -> bool:
    return WORD.search(data.lower()) is not None


specs = st.builds(
    FeaturizerSpec, seed=st.integers(0, MASK), dim=st.sampled_from([256, 1024, 1 << 16]),
    word_ngram_max=st.integers(1, 3), char_ngram_min=st.integers(1, 4), char_ngram_max=st.integers(4, 8),
    word_weight=st.integers(1, 255), char_weight=st.integers(1, 255))


@st.composite
def any_specs(draw):
    """Any valid spec, char n-grams off (char_ngram_max = 0) included."""
    word_max = draw(st.integers(0, 3))
    char_max = draw(st.integers(0 if word_max else 1, 8))
    char_min = draw(st.integers(1, char_max)) if char_max else draw(st.integers(0, 8))
    return FeaturizerSpec(seed=draw(st.integers(0, MASK)), dim=256, word_ngram_max=word_max,
                          char_ngram_min=char_min, char_ngram_max=char_max)


texts = st.one_of(st.binary(max_size=120), st.text(max_size=60).map(lambda s: s.encode("utf-8")))


# --- spec validation --------------------------------------------------------------------------

def test_defaults_are_valid():
    spec = FeaturizerSpec()
    assert (spec.version, spec.seed, spec.dim) == (VERSION, 0, 65536)
    assert (spec.word_ngram_max, spec.char_ngram_min, spec.char_ngram_max) == (2, 2, 4)
    assert (spec.word_weight, spec.char_weight) == (3, 1)


@pytest.mark.parametrize("kwargs, field", [
    ({"version": "hash-ngram-v2"}, "version"),
    ({"seed": -1}, "seed"),
    ({"seed": 1 << 32}, "seed"),
    ({"dim": 1000}, "dim"),
    ({"dim": 128}, "dim"),
    ({"dim": 1 << 25}, "dim"),
    ({"dim": 0}, "dim"),
    ({"word_ngram_max": 4}, "word_ngram_max"),
    ({"word_ngram_max": -1}, "word_ngram_max"),
    ({"char_ngram_max": 9}, "char_ngram_max"),
    ({"char_ngram_min": 0}, "char_ngram_min"),
    ({"char_ngram_min": 5}, "char_ngram_min"),
    ({"word_ngram_max": 0, "char_ngram_max": 0}, "word_ngram_max and char_ngram_max are both 0"),
    ({"word_weight": 0}, "word_weight"),
    ({"char_weight": 256}, "char_weight"),
])
def test_invalid_spec_names_the_field(kwargs, field):
    with pytest.raises(ManifestError, match=re.escape(field)) as info:
        FeaturizerSpec(**kwargs)
    assert str(info.value).startswith("featurizer: ")
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ManifestError) as info:
        FeaturizerSpec(dim=1000, word_weight=0, seed=-5)
    msg = str(info.value)
    assert "dim 1000" in msg and "word_weight 0" in msg and "seed -5" in msg


@pytest.mark.parametrize("dim", [256, 4096, 1 << 24])
def test_power_of_two_dims_in_range_are_valid(dim):
    assert FeaturizerSpec(dim=dim).dim == dim


def test_char_ngram_min_is_free_when_char_ngrams_are_off():
    spec = FeaturizerSpec(char_ngram_max=0, char_ngram_min=0)
    idx, val = featurize_reference(spec, b"hello world")
    assert len(idx) >= 1 and float(np.sum(val.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-5)


# --- capacity ---------------------------------------------------------------------------------

def test_capacity_hand_values():
    spec = FeaturizerSpec()                   # 2 word sizes, 3 char sizes
    assert spec.capacity(0) == 2 + 3 * 2 + 1
    assert spec.capacity(10) == 6 * 2 + (10 + 12) * 3 + 1


@settings(max_examples=150, deadline=None)
@given(spec=any_specs(), data=texts)
@example(spec=FeaturizerSpec(word_ngram_max=3, char_ngram_min=1, char_ngram_max=8), data=b"a " * 60)
@example(spec=FeaturizerSpec(word_ngram_max=3, char_ngram_min=1, char_ngram_max=8), data=b"a" * 120)
@example(spec=FeaturizerSpec(word_ngram_max=3, char_ngram_min=1, char_ngram_max=8), data=b"\xff.a" * 40)
def test_ngram_count_never_exceeds_capacity(spec, data):
    assert len(ngrams(spec, data)) <= spec.capacity(len(data))


# --- featurize_reference ----------------------------------------------------------------------

def test_hand_computed_single_letter():
    spec = FeaturizerSpec(dim=256, word_ngram_max=1, char_ngram_min=2, char_ngram_max=2)
    # "a": word 1-gram "a" (weight 3), char 2-grams " a" and "a " (weight 1 each); total 5.
    expected: Counter[int] = Counter()
    expected[fmix32(fnv1a(0, 1, b"a")) & 255] += 3
    expected[fmix32(fnv1a(0, 18, b" a")) & 255] += 1
    expected[fmix32(fnv1a(0, 18, b"a ")) & 255] += 1
    idx, val = featurize_reference(spec, b"a")
    assert idx.tolist() == sorted(expected)
    np.testing.assert_allclose(val, [math.sqrt(expected[i] / 5) for i in sorted(expected)], rtol=1e-6)


def test_known_fnv1a_value():
    # FNV-1a-32 of the bytes [0x01, 'a'] from the standard offset basis, computed by hand.
    h = ((2166136261 ^ 1) * 16777619) & MASK
    h = ((h ^ 0x61) * 16777619) & MASK
    assert fnv1a(0, 1, b"a") == h


@settings(max_examples=120, deadline=None)
@given(spec=specs, data=texts)
def test_matches_the_plain_python_oracle(spec, data):
    idx, val = featurize_reference(spec, data)
    want = oracle(spec, data)
    assert idx.tolist() == sorted(want)
    np.testing.assert_allclose(val, [want[i] for i in sorted(want)], rtol=1e-6)


@settings(max_examples=150, deadline=None)
@given(spec=specs, data=texts)
def test_output_properties(spec, data):
    idx, val = featurize_reference(spec, data)
    assert idx.dtype == np.int32 and val.dtype == np.float32 and idx.shape == val.shape and idx.ndim == 1
    assert np.all(np.diff(idx) > 0)
    assert np.all((idx >= 0) & (idx < spec.dim))
    if has_word_byte(data):
        assert len(idx) >= 1 and np.all(val > 0)
        assert abs(float(np.sum(val.astype(np.float64) ** 2)) - 1.0) <= 1e-5
    else:
        assert len(idx) == 0


@given(st.lists(st.sampled_from(NON_WORD_BYTES), max_size=60).map(bytes))
def test_no_word_bytes_no_features(data):
    idx, val = featurize_reference(FeaturizerSpec(), data)
    assert idx.shape == (0,) and val.shape == (0,)
    assert idx.dtype == np.int32 and val.dtype == np.float32


@pytest.mark.parametrize("data", [b"", b"   ", b"?!.,;:-_()", b"\t\n\r", b"\x00\x01\x7f"])
def test_texts_without_word_bytes_are_empty(data):
    idx, val = featurize_reference(FeaturizerSpec(), data)
    assert len(idx) == 0 and len(val) == 0


def test_ascii_case_insensitive():
    spec = FeaturizerSpec(seed=7, dim=4096)
    a, b = featurize_reference(spec, b"HeLLo"), featurize_reference(spec, b"hello")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_non_ascii_letters_are_not_case_folded():
    spec = FeaturizerSpec(seed=7, dim=1 << 16)
    upper = featurize_reference(spec, "É".encode())[0]
    lower = featurize_reference(spec, "é".encode())[0]
    assert upper.tolist() != lower.tolist()


def test_utf8_letters_stay_inside_their_word():
    spec = FeaturizerSpec(word_ngram_max=1, char_ngram_max=0)
    idx, val = featurize_reference(spec, "café".encode())
    assert len(idx) == 1 and val.tolist() == [1.0]


def test_punctuation_separates_words():
    spec = FeaturizerSpec(seed=3, dim=4096)
    for a, b in [(b"hello, world!", b"hello world"), (b"a-b", b"a b"), (b"x\ty\nz", b"x y z")]:
        assert featurize_reference(spec, a)[0].tolist() == featurize_reference(spec, b)[0].tolist()


def test_seed_changes_the_indices():
    a = featurize_reference(FeaturizerSpec(seed=0), b"transfer money to savings")[0]
    b = featurize_reference(FeaturizerSpec(seed=1), b"transfer money to savings")[0]
    assert a.tolist() != b.tolist()


@given(spec=specs, data=texts)
def test_case_insensitive_and_deterministic(spec, data):
    a = featurize_reference(spec, data)
    b = featurize_reference(spec, data.lower())
    c = featurize_reference(spec, data)
    for x, y in ((a, b), (a, c)):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])

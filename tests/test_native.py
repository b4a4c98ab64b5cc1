"""The compiled featurizer equals the numpy reference bit for bit; the fallback warns once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco import _native
from edge_eco.errors import NativeError
from edge_eco.featurizer import FeaturizerSpec, featurize_reference

SPECS = [FeaturizerSpec(seed=20261203, dim=1 << 16), FeaturizerSpec(seed=1, dim=256, word_ngram_max=3,
                                                                     char_ngram_min=1, char_ngram_max=8,
                                                                     word_weight=255, char_weight=2),
         FeaturizerSpec(word_ngram_max=0), FeaturizerSpec(char_ngram_max=0, char_ngram_min=0)]


def _same(spec, native, data: bytes) -> bool:
    i1, v1 = native(data)
    i2, v2 = featurize_reference(spec, data)
    return i1.dtype == i2.dtype and np.array_equal(i1, i2) and np.array_equal(v1.view(np.uint32), v2.view(np.uint32))


def test_kernel_is_compiled_in_this_install():
    # CI installs the compiled kernel; its absence there would silently slow every request.
    assert _native.available()


@pytest.mark.parametrize("spec", SPECS[:2])
def test_kernel_equals_reference_on_every_clinc150_test_query(spec, clinc_test):
    native = _native.Featurizer(spec, use_native=True)
    mismatches = [t for t, _ in clinc_test if not _same(spec, native, t.encode())]
    assert len(clinc_test) == 5500
    assert mismatches == []


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), which=st.integers(0, len(SPECS) - 1))
def test_kernel_equals_reference_on_arbitrary_bytes(data, which):
    spec = SPECS[which]
    assert _same(spec, _native.Featurizer(spec, use_native=True), data)


def test_known_vector_is_stable():
    # Frozen output of hash-ngram-v1: a change here breaks every shipped model.
    idx, val = _native.Featurizer(FeaturizerSpec(seed=0, dim=1 << 16), use_native=True)(b"what is my balance")
    assert idx.size == 52
    assert idx[:5].tolist() == [348, 708, 1050, 1598, 3107]
    assert float(np.dot(val, val)) == pytest.approx(1.0, abs=1e-6)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_warned", False)
    spec = SPECS[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = _native.Featurizer(spec)
        b = _native.Featurizer(spec)
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "numpy reference" in str(caught[0].message)
    assert not a.native and not b.native
    with pytest.raises(NativeError, match="unavailable"):
        _native.Featurizer(spec, use_native=True)


def test_kernel_status_becomes_native_error():
    f = _native.Featurizer(SPECS[0], use_native=True)
    f._cfg.dim = 1000  # not a power of two: the C side re-checks and refuses
    with pytest.raises(NativeError, match="config out of range"):
        f(b"hello")


def test_ecology_answers_the_same_without_the_compiled_kernel(clinc_test):
    """The numpy fallback path (featurizer, router) gives the same answers as the C path."""
    import edge_eco
    from conftest import MODELS

    sample = [t for t, _ in clinc_test[::25]]
    with edge_eco.open(MODELS / "clinc150", use_native=True) as c, edge_eco.open(MODELS / "clinc150", use_native=False) as py:
        assert c._kernel is not None and py._kernel is None
        for text in sample:
            a, b = c.answer(text, local_only=True), py.answer(text, local_only=True)
            assert (a.label, a.path, a.provenance["route"]) == (b.label, b.path, b.provenance["route"])
            assert a.confidence == pytest.approx(b.confidence, abs=1e-9)


@pytest.mark.parametrize("dim", [1 << 8, 1 << 16, 1 << 24])
def test_every_sort_path_equals_the_reference(dim):
    """Short, CLINC-sized and long texts: insertion sort (<= 48 n-grams), one bucket pass + insertion
    sort (<= 2,048), LSD radix (longer), at the smallest, the shipped and the largest dimension."""
    spec = FeaturizerSpec(seed=7, dim=dim)
    native = _native.Featurizer(spec, use_native=True)
    words = b"transfer money from my checking account to savings please Quickly 42 caf\xc3\xa9".split()
    rng = np.random.default_rng(dim)
    for n_words in (1, 2, 6, 30, 150, 900):
        text = b" ".join(words[i] for i in rng.integers(len(words), size=n_words))
        assert _same(spec, native, text), n_words

"""Tests of request contracts (edge_eco.policy): text validation and the eligibility filter.

The population mirrors tests/test_manifest.py (banking/travel specialists, a generalist) with
hand-set measured costs: the generalist is slow to load but, once resident, fast enough.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_eco.errors import RequestError
from edge_eco.featurizer import FeaturizerSpec
from edge_eco.manifest import Cost, FileEntry, Manifest, ModelEntry, Policy
from edge_eco.policy import RequestContract, eligible_mask, expected_latency_ms, validate_text

# --- validate_text ----------------------------------------------------------------------------


def test_valid_str_is_returned_as_utf8():
    assert validate_text("what is my balance?", 64) == b"what is my balance?"
    assert validate_text("café ☕", 64) == "café ☕".encode("utf-8")


def test_valid_bytes_are_returned_unchanged():
    data = "naïve".encode("utf-8")
    assert validate_text(data, 64) == data


@pytest.mark.parametrize("text", ["", b"", " ", "\t\n  \r\n", b"   "])
def test_empty_or_whitespace_only(text):
    with pytest.raises(RequestError, match="empty"):
        validate_text(text, 64)


def test_over_the_limit_names_the_limit():
    with pytest.raises(RequestError) as info:
        validate_text("x" * 17, 16)
    assert "17 bytes" in str(info.value) and "16" in str(info.value) and "max_text_bytes" in str(info.value)


def test_limit_counts_utf8_bytes_not_characters():
    assert validate_text("é" * 8, 16) == "é".encode() * 8   # 16 bytes: at the limit
    with pytest.raises(RequestError, match="18 bytes"):
        validate_text("é" * 9, 16)


@pytest.mark.parametrize("data, where", [(b"\xff\xfe", "byte 0"), (b"ok \xc3(", "byte 3"),
                                         (b"abc\xe2\x82", "byte 3"), (b"\xed\xa0\x80", "byte 0")])
def test_invalid_utf8_bytes(data, where):
    with pytest.raises(RequestError, match="not valid UTF-8") as info:
        validate_text(data, 64)
    assert where in str(info.value)


def test_str_with_a_lone_surrogate():
    with pytest.raises(RequestError, match="not valid UTF-8.*character 5"):
        validate_text("hello\ud800world", 64)


@pytest.mark.parametrize("value", [None, 42, 3.5, ["hello"], bytearray(b"hello"), memoryview(b"hello")])
def test_other_types_are_refused(value):
    with pytest.raises(RequestError, match="str or bytes"):
        validate_text(value, 64)


@pytest.mark.parametrize("blank", ["\u00a0", "\u3000 \u2003", "\t\n"])
def test_unicode_whitespace_only_is_empty(blank):
    with pytest.raises(RequestError, match="empty"):
        validate_text(blank, 64)


def test_request_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate_text("", 64)


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip()))
def test_any_non_blank_text_round_trips(text):
    assert validate_text(text, 1 << 10) == text.encode("utf-8")
    assert validate_text(text.encode("utf-8"), 1 << 10) == text.encode("utf-8")


@given(st.binary(max_size=40))
def test_bytes_are_accepted_unchanged_or_refused(data):
    try:
        out = validate_text(data, 32)
    except RequestError:
        valid = True
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            valid = False
        assert not valid or len(data) > 32 or not data.decode("utf-8").strip()
    else:
        assert out == data and len(data) <= 32
        data.decode("utf-8")


# --- eligible_mask ----------------------------------------------------------------------------

def model(model_id: str, risk: str, load_ms: float, p95_us: float) -> ModelEntry:
    return ModelEntry(id=model_id, version="1", role="specialist", backend="fake",
                      file=FileEntry(f"models/{model_id}.npz", "ab" * 32), input="hashed-text",
                      labels=("a", "b"), cost=Cost(resident_bytes=100_000, load_ms=load_ms,
                                                   p50_us=p95_us / 2, p95_us=p95_us), risk=risk)


MODELS = (model("banking", "medium", load_ms=20.0, p95_us=2_000.0),   # cold 22 ms, warm 2 ms
          model("travel", "low", load_ms=5.0, p95_us=1_000.0),       # cold 6 ms, warm 1 ms
          model("general", "high", load_ms=300.0, p95_us=8_000.0))   # cold 308 ms, warm 8 ms
ECO = Manifest(name="banking-travel", version="3", description="", reject_label="out_of_scope",
               featurizer=FeaturizerSpec(dim=4096), policy=Policy(), remote=None, router=None,
               models=MODELS, files=())
CANDIDATES = ("banking", "travel", "general")
NONE = frozenset()


def mask(contract: RequestContract, resident=NONE, candidates=CANDIDATES) -> list[bool]:
    out = eligible_mask([ECO.model(c) for c in candidates], contract, frozenset(resident))
    assert out.dtype == np.bool_ and out.shape == (len(candidates),)
    return out.tolist()


def test_expected_latency_cold_and_resident():
    assert expected_latency_ms(MODELS[0], resident=False) == pytest.approx(22.0)
    assert expected_latency_ms(MODELS[0], resident=True) == pytest.approx(2.0)


def test_contract_defaults():
    assert RequestContract() == RequestContract(local_only=False, deadline_ms=None, max_risk="medium")


@pytest.mark.parametrize("max_risk, expected", [("low", [False, True, False]), ("medium", [True, True, False]),
                                                ("high", [True, True, True])])
def test_risk_filter(max_risk, expected):
    assert mask(RequestContract(max_risk=max_risk)) == expected


def test_deadline_uses_cold_costs_for_models_not_resident():
    assert mask(RequestContract(deadline_ms=10.0, max_risk="high")) == [False, True, False]
    assert mask(RequestContract(deadline_ms=25.0, max_risk="high")) == [True, True, False]


def test_deadline_uses_resident_costs_for_loaded_models():
    assert mask(RequestContract(deadline_ms=10.0, max_risk="high"), {"general", "banking"}) == [True, True, True]


def test_deadline_boundary_is_inclusive():
    assert mask(RequestContract(deadline_ms=22.0, max_risk="medium")) == [True, True, False]


def test_risk_and_deadline_combine():
    # general fits once resident but its risk is not allowed
    assert mask(RequestContract(deadline_ms=10.0, max_risk="medium"), {"general"}) == [False, True, False]


def test_deadline_excluding_everything_is_relaxed_to_the_risk_rule():
    assert mask(RequestContract(deadline_ms=0.5, max_risk="medium")) == [True, True, False]
    assert mask(RequestContract(deadline_ms=0.5, max_risk="high")) == [True, True, True]


def test_relaxation_ignores_risk_only_candidates_that_fit():
    # Only 'general' fits the deadline, but risk forbids it: relaxed to the risk rule alone.
    assert mask(RequestContract(deadline_ms=10.0, max_risk="medium"), {"general"},
                candidates=("banking", "general")) == [True, False]


def test_no_model_at_allowed_risk_gives_an_all_false_mask():
    assert mask(RequestContract(max_risk="low"), candidates=("banking", "general")) == [False, False]
    assert mask(RequestContract(deadline_ms=1000.0, max_risk="low"), candidates=("general",)) == [False]


def test_candidates_keep_their_order():
    assert mask(RequestContract(deadline_ms=10.0, max_risk="high"), candidates=("general", "travel")) == [False, True]


@given(deadline=st.one_of(st.none(), st.floats(0, 400)), risk=st.sampled_from(["low", "medium", "high"]),
       resident=st.sets(st.sampled_from(CANDIDATES)),
       candidates=st.lists(st.sampled_from(CANDIDATES), min_size=1, max_size=3, unique=True))
def test_mask_properties(deadline, risk, resident, candidates):
    contract = RequestContract(deadline_ms=deadline, max_risk=risk)
    out = mask(contract, resident, tuple(candidates))
    order = {"low": 0, "medium": 1, "high": 2}
    risk_ok = [order[ECO.model(c).risk] <= order[risk] for c in candidates]
    assert all(r for o, r in zip(out, risk_ok) if o)          # never above the allowed risk
    assert any(out) == any(risk_ok)                           # never empty while a risk-ok model exists
    if deadline is not None:
        fits = [expected_latency_ms(ECO.model(c), c in resident) <= deadline for c in candidates]
        if any(f and r for f, r in zip(fits, risk_ok)):
            assert out == [f and r for f, r in zip(fits, risk_ok)]
        else:
            assert out == risk_ok
    else:
        assert out == risk_ok


def test_the_cached_deadline_mask_equals_eligible_mask():
    """Ecology._mask computes the per-candidate static parts once (deadline_mask); it must agree
    with eligible_mask over the manifest's entries for every deadline and resident set."""
    import itertools

    from edge_eco.policy import deadline_mask

    entries = [model(f"m{i}", r, l, p) for i, (r, l, p) in
               enumerate([("low", 5.0, 100.0), ("high", 1.0, 50.0), ("medium", 20.0, 2000.0), ("low", 0.5, 9000.0)])]
    risk_ok = eligible_mask(entries, RequestContract(), frozenset())
    for deadline in (0.1, 1.0, 3.0, 6.0, 10.0, 25.0):
        for k in range(len(entries) + 1):
            for resident in itertools.combinations([e.id for e in entries], k):
                lat = [e.cost.p95_us / 1e3 + (0.0 if e.id in resident else e.cost.load_ms) for e in entries]
                assert np.array_equal(deadline_mask(risk_ok, lat, deadline),
                                      eligible_mask(entries, RequestContract(deadline_ms=deadline), frozenset(resident)))

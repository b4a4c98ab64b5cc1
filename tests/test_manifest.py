"""Tests of ecology.toml parsing/validation (edge_eco.manifest) and writing (edge_eco.tomlwrite).

The manifest below is hand-written: a small banking/travel assistant with two specialists
that decline outside their niche, one generalist reading tokens, and a linear-softmax router.
Every validation test changes one line of it, so each failure has exactly one cause.
"""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco.errors import EdgeEcoError, ManifestError
from edge_eco.featurizer import FeaturizerSpec
from edge_eco.manifest import (
    Calibration, Cost, FileEntry, Manifest, Policy, RemoteSpec, RouterSpec, parse_manifest,
)
from edge_eco.tomlwrite import manifest_to_toml

SHA_ROUTER = "a1" * 32
SHA_BANKING = "b2" * 32
SHA_TRAVEL = "c3" * 32
SHA_GENERAL = "d4" * 32
SHA_TOKENIZER = "e5" * 32

BASE = f"""\
schema = 1
name = "banking-travel"
version = "3"
description = "two specialists and a generalist for a small assistant"
reject_label = "out_of_scope"
budget_bytes = 8000000

[featurizer]
version = "hash-ngram-v1"
seed = 7
dim = 4096
word_ngram_max = 2
char_ngram_min = 2
char_ngram_max = 4
word_weight = 3
char_weight = 1

[policy]
direct_threshold = 0.85
fallback_threshold = 0.4
coalition_size = 2
coalition_timeout_ms = 40.0
max_text_bytes = 4096
remote = "allowed"

[remote]
protocol = "v2"
url = "http://127.0.0.1:8000"
model = "minilm"
timeout_ms = 1500.0

[router]
path = "router.bin"
sha256 = "{SHA_ROUTER}"
kind = "linear-softmax"
temperature = 0.7
candidates = ["banking", "travel", "general"]

[[files]]
path = "tokenizer.json"
sha256 = "{SHA_TOKENIZER}"

[[models]]
id = "banking"
version = "1"
role = "specialist"
backend = "fake"
path = "models/banking.npz"
sha256 = "{SHA_BANKING}"
input = "hashed-text"
labels = ["balance", "transfer", "not_mine"]
decline_label = "not_mine"
risk = "medium"

[models.calibration]
temperature = 1.3
reject_below = 0.2

[models.cost]
resident_bytes = 400000
load_ms = 12.5
p50_us = 80.0
p95_us = 150.0

[models.niches]
domain = "banking"

[[models]]
id = "travel"
version = "2"
role = "specialist"
backend = "fake"
path = "models/travel.npz"
sha256 = "{SHA_TRAVEL}"
input = "hashed-text"
labels = ["book_flight", "hotel", "not_mine"]
decline_label = "not_mine"

[[models]]
id = "general"
version = "1"
role = "generalist"
backend = "ort"
path = "models/general.onnx"
sha256 = "{SHA_GENERAL}"
input = "text-tokens"
tokenizer = "tokenizer.json"
max_tokens = 64
labels = ["balance", "transfer", "book_flight", "hotel", "out_of_scope"]
risk = "high"
"""

# A single model needs neither a router nor, when it reads tokens, a featurizer.
MINIMAL = f"""\
schema = 1
name = "solo"
version = "1"
reject_label = "unknown"

[[files]]
path = "tok.json"
sha256 = "{SHA_TOKENIZER}"

[[models]]
id = "only"
version = "1"
role = "generalist"
backend = "ort"
path = "only.onnx"
sha256 = "{SHA_GENERAL}"
input = "text-tokens"
tokenizer = "tok.json"
labels = ["yes", "no"]
"""


def variant(old: str, new: str, base: str = BASE) -> str:
    """``base`` with the one occurrence of ``old`` replaced by ``new``."""
    assert base.count(old) == 1, f"{old!r} occurs {base.count(old)} times"
    return base.replace(old, new)


def rejects(text: str, *fragments: str) -> ManifestError:
    """Parse ``text``, expecting a ManifestError whose message contains every fragment."""
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
    return info.value


# --- a valid manifest -------------------------------------------------------------------------

def test_parses_every_field_of_the_realistic_manifest():
    m = parse_manifest(BASE)
    assert (m.name, m.version, m.reject_label, m.budget_bytes) == ("banking-travel", "3", "out_of_scope", 8_000_000)
    assert m.description == "two specialists and a generalist for a small assistant"
    assert m.featurizer == FeaturizerSpec(seed=7, dim=4096)
    assert m.policy == Policy(direct_threshold=0.85, fallback_threshold=0.4, coalition_size=2,
                              coalition_timeout_ms=40.0, max_text_bytes=4096, remote="allowed")
    assert m.remote == RemoteSpec("v2", "http://127.0.0.1:8000", "minilm", 1500.0)
    assert m.router == RouterSpec(FileEntry("router.bin", SHA_ROUTER), "linear-softmax",
                                  ("banking", "travel", "general"), 0.7)
    assert m.files == (FileEntry("tokenizer.json", SHA_TOKENIZER),)
    assert [x.id for x in m.models] == ["banking", "travel", "general"]

    banking, travel, general = m.models
    assert banking.version == "1" and banking.role == "specialist" and banking.backend == "fake"
    assert banking.file == FileEntry("models/banking.npz", SHA_BANKING)
    assert banking.input == "hashed-text" and banking.output == "logits"
    assert banking.labels == ("balance", "transfer", "not_mine")
    assert banking.decline_label == "not_mine" and banking.risk == "medium"
    assert banking.calibration == Calibration(temperature=1.3, reject_below=0.2)
    assert banking.cost == Cost(resident_bytes=400_000, load_ms=12.5, p50_us=80.0, p95_us=150.0)
    assert dict(banking.niches) == {"domain": "banking"}
    assert isinstance(banking.niches, MappingProxyType)

    # Defaults of the fields the travel specialist leaves out.
    assert travel.calibration == Calibration() and travel.cost == Cost()
    assert travel.risk == "low" and travel.tokenizer is None and travel.max_tokens == 128
    assert dict(travel.niches) == {}

    assert general.role == "generalist" and general.backend == "ort" and general.input == "text-tokens"
    assert general.tokenizer == "tokenizer.json" and general.max_tokens == 64
    assert general.decline_label is None and general.risk == "high"


def test_labels_are_the_union_without_decline_labels_plus_reject_label():
    m = parse_manifest(BASE)
    assert m.labels == ("balance", "book_flight", "hotel", "out_of_scope", "transfer")


def test_all_files_lists_models_router_and_extra_files():
    m = parse_manifest(BASE)
    assert [f.path for f in m.all_files()] == [
        "models/banking.npz", "models/travel.npz", "models/general.onnx", "router.bin", "tokenizer.json"]


def test_model_lookup_by_id():
    m = parse_manifest(BASE)
    assert m.model("travel").labels == ("book_flight", "hotel", "not_mine")
    with pytest.raises(ManifestError, match="'weather'"):
        m.model("weather")


def test_minimal_manifest_takes_the_defaults():
    m = parse_manifest(MINIMAL)
    assert m.featurizer is None and m.router is None and m.remote is None
    assert m.policy == Policy() and m.description == "" and m.budget_bytes == 0
    assert m.policy.direct_threshold == 0.9 and m.policy.fallback_threshold == 0.5
    assert m.models[0].calibration == Calibration(1.0, 0.0)


def test_integers_are_accepted_for_float_fields():
    m = parse_manifest(variant("temperature = 0.7", "temperature = 2"))
    assert m.router.temperature == 2.0 and isinstance(m.router.temperature, float)


def test_manifest_error_is_a_value_error_and_an_edge_eco_error():
    err = rejects(variant("schema = 1", "schema = 2"))
    assert isinstance(err, ValueError) and isinstance(err, EdgeEcoError)


# --- malformed text and schema ---------------------------------------------------------------

def test_invalid_toml():
    rejects(variant('name = "banking-travel"', 'name = "banking-travel'), "not valid TOML")


@pytest.mark.parametrize("schema", ["0", "2"])
def test_unsupported_schema(schema):
    rejects(variant("schema = 1", f"schema = {schema}"), "schema", schema)


def test_schema_must_be_an_integer():
    rejects(variant("schema = 1", 'schema = "1"'), "schema", "expected int")


# --- missing required fields ------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "schema = 1", 'name = "banking-travel"', 'version = "3"', 'reject_label = "out_of_scope"'])
def test_missing_required_top_level_field(line):
    key = line.split(" =")[0]
    rejects(variant(line + "\n", ""), "missing required field", repr(key))


def test_missing_models():
    rejects(MINIMAL.split("[[models]]")[0], "missing required field 'models'")


@pytest.mark.parametrize("old, new, key", [
    ('id = "travel"\nversion = "2"\n', 'id = "travel"\n', "version"),
    ('version = "2"\nrole = "specialist"\n', 'version = "2"\n', "role"),
    ('role = "specialist"\nbackend = "fake"\npath = "models/travel.npz"\n',
     'role = "specialist"\npath = "models/travel.npz"\n', "backend"),
    ('path = "models/travel.npz"\n', "", "path"),
    (f'sha256 = "{SHA_TRAVEL}"\n', "", "sha256"),
    ('input = "hashed-text"\nlabels = ["book_flight"', 'labels = ["book_flight"', "input"),
    ('labels = ["book_flight", "hotel", "not_mine"]\n', "", "labels"),
], ids=["version", "role", "backend", "path", "sha256", "input", "labels"])
def test_missing_required_model_field(old, new, key):
    rejects(variant(old, new), "models[1] (travel)", "missing required field", repr(key))


def test_missing_model_id():
    rejects(variant('id = "travel"\n', ""), "models[1]", "missing required field 'id'")


@pytest.mark.parametrize("line", ['kind = "linear-softmax"', 'path = "router.bin"', f'sha256 = "{SHA_ROUTER}"',
                                  'candidates = ["banking", "travel", "general"]'])
def test_missing_required_router_field(line):
    key = line.split(" =")[0]
    rejects(variant(line + "\n", ""), "router", "missing required field", repr(key))


# --- unknown fields ---------------------------------------------------------------------------

@pytest.mark.parametrize("anchor, where", [
    ('budget_bytes = 8000000\n', "ecology.toml"),
    ("remote = \"allowed\"\n", "policy"),
    ('timeout_ms = 1500.0\n', "remote"),
    ("temperature = 0.7\n", "router"),
    ('id = "travel"\n', "models[1] (travel)"),
    ("reject_below = 0.2\n", "models[0] (banking).calibration"),
    ("p95_us = 150.0\n", "models[0] (banking).cost"),
    (f'sha256 = "{SHA_TOKENIZER}"\n', "files[0]"),
], ids=["top", "policy", "remote", "router", "model", "calibration", "cost", "files"])
def test_unknown_field_is_an_error(anchor, where):
    rejects(variant(anchor, anchor + "colour = 3\n"), where, "unknown field", "colour")


def test_unknown_featurizer_field():
    rejects(variant("char_weight = 1\n", "char_weight = 1\ncolour = 3\n"), "featurizer", "colour")


def test_misspelt_policy_field_is_not_silently_defaulted():
    rejects(variant("direct_threshold = 0.85", "direct_treshold = 0.85"), "policy", "direct_treshold")


# --- wrong types ------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, field", [
    ('name = "banking-travel"', "name = 3", "name"),
    ("budget_bytes = 8000000", "budget_bytes = 1.5", "budget_bytes"),
    ("direct_threshold = 0.85", 'direct_threshold = "high"', "direct_threshold"),
    ("coalition_size = 2", "coalition_size = 2.5", "coalition_size"),
    ("coalition_size = 2", "coalition_size = true", "coalition_size"),
    ("max_tokens = 64", "max_tokens = true", "max_tokens"),
    ("max_tokens = 64", 'max_tokens = "64"', "max_tokens"),
    ('labels = ["book_flight", "hotel", "not_mine"]', 'labels = "book_flight"', "labels"),
    ('labels = ["book_flight", "hotel", "not_mine"]', 'labels = ["book_flight", 3]', "labels"),
    ('labels = ["book_flight", "hotel", "not_mine"]', 'labels = ["book_flight", ""]', "labels"),
    ('candidates = ["banking", "travel", "general"]', 'candidates = "banking"', "candidates"),
    ("temperature = 1.3", 'temperature = "warm"', "temperature"),
    ("resident_bytes = 400000", "resident_bytes = 4.0e5", "resident_bytes"),
    ('domain = "banking"', "domain = 1", "domain"),
    ("dim = 4096", 'dim = "4096"', "dim"),
    ("seed = 7", "seed = 7.0", "seed"),
])
def test_wrong_type_names_the_field(old, new, field):
    rejects(variant(old, new), field, "expected")


def test_table_given_as_a_value():
    policy_table = BASE[BASE.index("[policy]"):BASE.index("[remote]")]
    text = variant(policy_table, "")
    text = variant("budget_bytes = 8000000\n", 'budget_bytes = 8000000\npolicy = "strict"\n', text)
    rejects(text, "policy", "expected a table")


# --- values out of range ----------------------------------------------------------------------

@pytest.mark.parametrize("old, new, field", [
    ("direct_threshold = 0.85", "direct_threshold = 1.5", "direct_threshold"),
    ("fallback_threshold = 0.4", "fallback_threshold = -0.1", "fallback_threshold"),
    ("direct_threshold = 0.85", "direct_threshold = nan", "direct_threshold"),
    ("fallback_threshold = 0.4", "fallback_threshold = inf", "fallback_threshold"),
    ("coalition_size = 2", "coalition_size = 0", "coalition_size"),
    ("coalition_size = 2", "coalition_size = 9", "coalition_size"),
    ("coalition_timeout_ms = 40.0", "coalition_timeout_ms = 0.0", "coalition_timeout_ms"),
    ("max_text_bytes = 4096", "max_text_bytes = 15", "max_text_bytes"),
    ("budget_bytes = 8000000", "budget_bytes = -1", "budget_bytes"),
    ("temperature = 1.3", "temperature = 0.0", "temperature"),
    ("temperature = 1.3", "temperature = 1001.0", "temperature"),
    ("reject_below = 0.2", "reject_below = 1.2", "reject_below"),
    ("temperature = 0.7", "temperature = 0.0001", "temperature"),
    ("max_tokens = 64", "max_tokens = 0", "max_tokens"),
    ("max_tokens = 64", "max_tokens = 4097", "max_tokens"),
    ("load_ms = 12.5", "load_ms = -1.0", "load_ms"),
    ("timeout_ms = 1500.0", "timeout_ms = 0.5", "timeout_ms"),
])
def test_value_out_of_range_names_the_field(old, new, field):
    rejects(variant(old, new), field)


@pytest.mark.parametrize("value", ["0.0", "1.0"])
def test_threshold_bounds_are_inclusive(value):
    m = parse_manifest(variant("direct_threshold = 0.85", f"direct_threshold = {value}"))
    assert m.policy.direct_threshold == float(value)


@pytest.mark.parametrize("old, new, field", [
    ('role = "generalist"', 'role = "judge"', "role"),
    ('backend = "ort"', 'backend = "tensorrt"', "backend"),
    ('input = "text-tokens"', 'input = "image"', "input"),
    ('risk = "high"', 'risk = "extreme"', "risk"),
    ('remote = "allowed"', 'remote = "sometimes"', "remote"),
    ('kind = "linear-softmax"', 'kind = "mlp"', "kind"),
    ('protocol = "v2"', 'protocol = "v1"', "protocol"),
])
def test_value_not_among_the_choices(old, new, field):
    rejects(variant(old, new), field, "is not one of")


# --- files: sha256 and paths ------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["b2" * 31, "B2" * 32, "g2" * 32, "b2" * 32 + "0", ""])
def test_bad_model_sha256(bad):
    rejects(variant(f'sha256 = "{SHA_BANKING}"', f'sha256 = "{bad}"'), "models[0] (banking).sha256")


def test_bad_router_sha256():
    rejects(variant(f'sha256 = "{SHA_ROUTER}"', 'sha256 = "abc"'), "router.sha256")


def test_bad_extra_file_sha256():
    rejects(variant(f'sha256 = "{SHA_TOKENIZER}"', 'sha256 = "xyz"'), "files[0].sha256")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../banking.npz", "models/../../banking.npz", ".."])
def test_model_path_outside_the_bundle(bad):
    rejects(variant('path = "models/banking.npz"', f'path = "{bad}"'), "models[0] (banking).path",
            "relative path inside the bundle")


def test_empty_model_path():
    rejects(variant('path = "models/banking.npz"', 'path = ""'), "models[0] (banking).path")


@pytest.mark.parametrize("bad", ["/srv/router.bin", "../router.bin"])
def test_router_path_outside_the_bundle(bad):
    rejects(variant('path = "router.bin"', f'path = "{bad}"'), "router.path")


def test_extra_file_path_outside_the_bundle():
    rejects(variant('path = "tokenizer.json"', 'path = "../tokenizer.json"'), "files[0].path")


def test_dotdot_inside_a_name_is_allowed():
    m = parse_manifest(variant('path = "models/banking.npz"', 'path = "models/banking..v1.npz"'))
    assert m.model("banking").file.path == "models/banking..v1.npz"


def test_file_listed_twice():
    rejects(variant('path = "models/travel.npz"', 'path = "models/banking.npz"'), "listed twice")


# --- references between entries ---------------------------------------------------------------

def test_duplicate_model_ids():
    rejects(variant('id = "travel"', 'id = "banking"'), "duplicate model ids", "banking")


def test_router_candidate_that_is_not_a_model():
    rejects(variant('candidates = ["banking", "travel", "general"]', 'candidates = ["banking", "weather"]'),
            "router.candidates", "weather")


def test_duplicate_router_candidates():
    rejects(variant('candidates = ["banking", "travel", "general"]', 'candidates = ["banking", "banking"]'),
            "router.candidates", "duplicate")


def test_text_tokens_without_tokenizer():
    rejects(variant('tokenizer = "tokenizer.json"\n', ""), "models[2] (general)", "tokenizer")


def test_tokenizer_not_listed_in_files():
    rejects(variant('tokenizer = "tokenizer.json"', 'tokenizer = "vocab.txt"'), "general", "vocab.txt",
            "[[files]]")


def test_decline_label_not_in_labels():
    rejects(variant('labels = ["book_flight", "hotel", "not_mine"]', 'labels = ["book_flight", "hotel"]'),
            "models[1] (travel).decline_label", "not_mine")


def test_a_classifier_needs_two_labels():
    rejects(variant('labels = ["book_flight", "hotel", "not_mine"]\ndecline_label = "not_mine"',
                    'labels = ["book_flight"]'), "models[1] (travel).labels", "at least 2")


def test_duplicate_labels():
    rejects(variant('labels = ["book_flight", "hotel", "not_mine"]', 'labels = ["hotel", "hotel", "not_mine"]'),
            "models[1] (travel).labels", "duplicate")


def test_no_models():
    text = "models = []\n" + MINIMAL.split("[[models]]")[0]
    rejects(text, "no models")


def test_hashed_text_needs_a_featurizer():
    text = BASE.split("[featurizer]")[0] + "[policy]" + BASE.split("[policy]")[1]
    rejects(text, "'banking'", "hashed-text", "[featurizer]")


def test_several_models_need_a_router():
    text = BASE.split("[router]")[0] + "[[files]]" + BASE.split("[[files]]")[1]
    rejects(text, "[router]")


def test_router_needs_a_featurizer():
    text = (BASE.split("[featurizer]")[0] + "[policy]" + BASE.split("[policy]")[1]).replace(
        'input = "hashed-text"', 'input = "text-tokens"\ntokenizer = "tokenizer.json"')
    rejects(text, "router", "[featurizer]")


# --- featurizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, field", [
    ("dim = 4096", "dim = 1000", "dim"),
    ("dim = 4096", "dim = 128", "dim"),
    ('version = "hash-ngram-v1"', 'version = "hash-ngram-v2"', "version"),
    ("seed = 7", "seed = -1", "seed"),
    ("word_ngram_max = 2", "word_ngram_max = 4", "word_ngram_max"),
    ("char_ngram_min = 2", "char_ngram_min = 5", "char_ngram_min"),
    ("word_weight = 3", "word_weight = 0", "word_weight"),
])
def test_featurizer_validation(old, new, field):
    rejects(variant(old, new), "featurizer", field)


def test_featurizer_fields_may_be_left_out():
    text = variant("seed = 7\ndim = 4096\nword_ngram_max = 2\nchar_ngram_min = 2\nchar_ngram_max = 4\n"
                   "word_weight = 3\nchar_weight = 1\n", "")
    assert parse_manifest(text).featurizer == FeaturizerSpec()


# --- writing back: tomlwrite -----------------------------------------------------------------

def test_round_trip_of_the_realistic_manifest():
    m = parse_manifest(BASE)
    assert parse_manifest(manifest_to_toml(m)) == m


def test_round_trip_of_the_minimal_manifest():
    m = parse_manifest(MINIMAL)
    text = manifest_to_toml(m)
    assert parse_manifest(text) == m
    assert "[router]" not in text and "[featurizer]" not in text and "budget_bytes" not in text


def test_written_text_is_stable():
    m = parse_manifest(BASE)
    text = manifest_to_toml(m)
    assert manifest_to_toml(parse_manifest(text)) == text
    assert text.startswith("# edge_eco ecology manifest") and "schema = 1\n" in text


def test_round_trip_keeps_max_tokens_of_a_model_without_tokenizer():
    # parse_manifest accepts max_tokens on any model, so the writer must keep it.
    m = parse_manifest(variant('decline_label = "not_mine"\nrisk = "medium"',
                               'decline_label = "not_mine"\nrisk = "medium"\nmax_tokens = 32'))
    assert m.model("banking").max_tokens == 32
    assert parse_manifest(manifest_to_toml(m)) == m


@pytest.mark.parametrize("label", ['say "hi"', "back\\slash", "tab\there", "line\nbreak", "naïve ☃ 🙂",
                                   "nul\x00byte", "del\x7fbyte"])
def test_round_trip_of_labels_that_need_escaping(label):
    m = parse_manifest(BASE)
    travel = dataclasses.replace(m.model("travel"), labels=(label, "hotel", "not_mine"))
    m2 = dataclasses.replace(m, models=(m.models[0], travel, m.models[2]))
    assert parse_manifest(manifest_to_toml(m2)) == m2


def test_round_trip_of_a_quoted_niche_key():
    # "topic area" is a valid TOML key when quoted; the writer must quote it back.
    m = parse_manifest(variant('domain = "banking"', 'domain = "banking"\n"topic area" = "payments"'))
    assert dict(m.model("banking").niches) == {"domain": "banking", "topic area": "payments"}
    assert parse_manifest(manifest_to_toml(m)) == m


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
temperature = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
label = st.text(min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(direct=unit, fallback=unit, router_t=temperature, model_t=temperature, reject_below=unit,
       timeout_ms=st.floats(min_value=0.1, max_value=60000, allow_nan=False),
       labels=st.lists(label, min_size=2, max_size=5, unique=True), data=st.data())
def test_round_trip_generated(direct, fallback, router_t, model_t, reject_below, timeout_ms, labels, data):
    m = parse_manifest(BASE)
    decline = data.draw(st.sampled_from(labels))
    reject = data.draw(label)
    banking = dataclasses.replace(m.model("banking"), labels=tuple(labels), decline_label=decline,
                                  calibration=Calibration(model_t, reject_below))
    m2 = dataclasses.replace(
        m, reject_label=reject, models=(banking,) + m.models[1:],
        policy=dataclasses.replace(m.policy, direct_threshold=direct, fallback_threshold=fallback,
                                   coalition_timeout_ms=timeout_ms),
        router=dataclasses.replace(m.router, temperature=router_t))
    back = parse_manifest(manifest_to_toml(m2))
    assert back == m2
    assert back.policy.direct_threshold == direct and back.router.temperature == router_t


def test_manifest_is_frozen():
    m = parse_manifest(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "other"  # type: ignore[misc]
    assert isinstance(m, Manifest) and re.fullmatch(r"[0-9a-f]{64}", m.router.file.sha256)

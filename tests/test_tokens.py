"""Tests of edge_eco.tokens (the "text-tokens" input adapter) and of the models/minilm bundle.

The tokenizer is the committed ``models/minilm/tokenizer.json`` (all-MiniLM-L6-v2's BERT uncased
WordPiece); the expected ids below were read from it once and checked against the BERT vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from edge_eco.errors import InferenceError, ManifestError, ModelLoadError, RequestError

from edge_eco.tokens import INPUT_NAMES, TokenEncoder

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "minilm"
TOKENIZER = BUNDLE / "tokenizer.json"

# `edge-eco build recipes/minilm.toml` measured 87.7 % overall accuracy on all 5,500 test queries (build.json);
# this fixed sample scores 0.94 (47/50) at batch 1. The floor (43/50) leaves room for int8 kernels
# that round differently on other CPUs (a few borderline queries), not for a regression.
SAMPLE_ACCURACY_FLOOR = 0.86


@pytest.fixture(scope="module")
def encoder() -> TokenEncoder:
    return TokenEncoder(TOKENIZER, max_tokens=128)


def test_known_ids_of_a_short_sentence(encoder):
    feeds = encoder(["what's my balance?"])
    assert list(feeds) == list(INPUT_NAMES)
    # [CLS] what ' s my balance ? [SEP]
    assert feeds["input_ids"].tolist() == [[101, 2054, 1005, 1055, 2026, 5703, 1029, 102]]
    assert feeds["attention_mask"].tolist() == [[1] * 8]
    assert feeds["token_type_ids"].tolist() == [[0] * 8]
    for array in feeds.values():
        assert array.dtype == np.int64


def test_lowercases_and_strips_accents(encoder):
    assert encoder(["CAFÉ"])["input_ids"].tolist() == encoder(["cafe"])["input_ids"].tolist() == [[101, 7668, 102]]


def test_pads_to_the_longest_text_of_the_batch(encoder):
    feeds = encoder(["hi", "transfer 50 dollars to my savings account"])
    assert feeds["input_ids"].shape == (2, 9)  # not the file's fixed 128
    assert feeds["input_ids"].tolist() == [
        [101, 7632, 102, 0, 0, 0, 0, 0, 0],
        [101, 4651, 2753, 6363, 2000, 2026, 10995, 4070, 102],
    ]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0], [1] * 9]
    assert feeds["token_type_ids"].tolist() == [[0] * 9, [0] * 9]


def test_truncates_to_max_tokens_and_keeps_sep():
    short = TokenEncoder(TOKENIZER, max_tokens=8)
    feeds = short(["transfer 50 dollars to my savings account"])
    assert feeds["input_ids"].tolist() == [[101, 4651, 2753, 6363, 2000, 2026, 10995, 102]]
    assert TokenEncoder(TOKENIZER, 128)(["word " * 500])["input_ids"].shape == (1, 128)


def test_empty_string_is_cls_sep(encoder):
    assert encoder([""])["input_ids"].tolist() == [[101, 102]]


@pytest.mark.parametrize("texts", [[], "a string", ["ok", 3], [None], [b"bytes"], ["lone \ud800 surrogate"]])
def test_bad_texts_are_request_errors(encoder, texts):
    with pytest.raises(RequestError):
        encoder(texts)


def test_tokenizer_failure_becomes_inference_error(encoder, monkeypatch):
    def boom(texts):
        raise Exception("rust panic")

    monkeypatch.setattr(encoder, "_tokenizer", type("T", (), {"encode_batch": staticmethod(boom)})())
    with pytest.raises(InferenceError, match="rust panic"):
        encoder(["hello"])


@pytest.mark.parametrize("max_tokens", [0, 1, -5, 2.5, True, "128"])
def test_bad_max_tokens(max_tokens):
    with pytest.raises(ManifestError):
        TokenEncoder(TOKENIZER, max_tokens)


def test_missing_or_corrupt_tokenizer_file(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        TokenEncoder(tmp_path / "nope.json", 16)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        TokenEncoder(bad, 16)


def test_missing_tokenizers_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ModelLoadError, match=r"pip install edge_eco\[remote\]"):
        TokenEncoder(TOKENIZER, 16)


# --- the models/minilm bundle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict:
    return tomllib.loads((BUNDLE / "ecology.toml").read_text(encoding="utf-8"))


def test_bundle_files_match_their_sha256(manifest):
    entries = manifest["files"] + [{"path": m["path"], "sha256": m["sha256"]} for m in manifest["models"]]
    for entry in entries:
        digest = hashlib.sha256((BUNDLE / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["path"]
    assert (BUNDLE / "minilm.onnx").stat().st_size < 25_000_000


def test_runtime_manifest_parser_accepts_the_bundle():
    from edge_eco.manifest import parse_manifest

    m = parse_manifest((BUNDLE / "ecology.toml").read_text(encoding="utf-8"))
    (entry,) = m.models
    assert (entry.input, entry.tokenizer, entry.max_tokens, entry.output) == ("text-tokens", "tokenizer.json", 128, "logits")
    assert len(entry.labels) == 151 and "oos" in entry.labels
    assert 0.0 < entry.calibration.reject_below < 1.0


def test_minilm_classifies_real_clinc150_queries(encoder, manifest, clinc_test):
    import onnxruntime as ort

    (entry,) = manifest["models"]
    labels = np.array(entry["labels"])
    cal = entry["calibration"]
    sess = ort.InferenceSession(str(BUNDLE / entry["path"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["edge_eco.labels"]) == entry["labels"]
    sample = clinc_test[::110]  # every 110th of test + oos_test: 50 queries, 9 of them oos
    texts = [t for t, _ in sample]
    gold = np.array([label for _, label in sample])
    (batched,) = sess.run(["logits"], encoder(texts))
    assert batched.shape == (50, 151) and batched.dtype == np.float32
    single = np.concatenate([sess.run(["logits"], encoder([t]))[0] for t in texts])  # as served
    z = single.astype(np.float64) / cal["temperature"]
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = np.where(probs.max(axis=1) < cal["reject_below"], "oos", labels[probs.argmax(axis=1)])
    accuracy = float((pred == gold).mean())
    assert accuracy >= SAMPLE_ACCURACY_FLOOR, f"accuracy {accuracy:.2f} on 50 CLINC150 test queries"
    # Dynamic int8 quantization scales activations per batch, so a query's logits depend a little on
    # its batch-mates and padding: measured 97.7 % argmax agreement over the whole test split (0.98 here).
    assert (batched.argmax(axis=1) == single.argmax(axis=1)).mean() >= 0.94

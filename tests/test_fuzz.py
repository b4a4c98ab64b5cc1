"""Corrupt artefacts: the structural preflight, the load-time probe, and a short fuzz run (the full
run is `edge-eco fuzz models/clinc150 --cases 1000`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edge_eco
from edge_eco import backends
from edge_eco.artifacts import preflight
from edge_eco.bundle import sha256_file
from edge_eco.errors import EdgeEcoError, IntegrityError, ModelLoadError
from edge_eco.fuzz import cases_for, run_fuzz
from edge_eco.fuzz_cases import LFS_POINTER

from conftest import MODELS

BUNDLE = MODELS / "clinc150"


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "clinc150"
    shutil.copytree(BUNDLE, dst)
    return dst


def _rehash(folder: Path, name: str, old_sha: str) -> None:
    """Re-list ``name`` with its new sha256, as a build (or a signer) of a corrupt file would."""
    path = folder / "ecology.toml"
    path.write_text(path.read_text().replace(old_sha, sha256_file(folder / name)))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (LFS_POINTER, "Git LFS pointer"),
    (b"\0" * 700, "only zero bytes"),
    (b"PK\x03\x04" + b"x" * 700, "not a valid ONNX model"),
])
def test_preflight_names_the_damage(bundle, content, message):
    (bundle / "banking.onnx").write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        backends.open_model("ort", bundle / "banking.onnx")


def test_preflight_catches_truncated_external_data(bundle):
    data = bundle / "banking.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"'banking.onnx.data' holds 1000 bytes.*truncated"):
        preflight(bundle / "banking.onnx")


def test_preflight_refuses_external_data_outside_the_folder(bundle):
    g = bundle / "banking.onnx"
    raw = g.read_bytes()
    # Same length, so the protobuf lengths stay valid: only the location changes.
    g.write_bytes(raw.replace(b"banking.onnx.data", b"../banking.o.data", 1))
    with pytest.raises(ModelLoadError, match="must name a file beside the model"):
        preflight(g)


def test_lfs_pointer_with_matching_hash_never_becomes_ready(bundle):
    old = sha256_file(bundle / "travel.onnx")
    (bundle / "travel.onnx").write_bytes(LFS_POINTER)
    _rehash(bundle, "travel.onnx", old)
    with edge_eco.open(bundle) as eco:
        with pytest.raises(ModelLoadError, match="travel.onnx: is a Git LFS pointer"):
            eco.predict_with("travel", "book a flight")
        assert "travel" not in eco.residency.resident()
        assert eco.predict_with("banking", "what is my balance").label == "balance"


def test_probe_refuses_a_model_whose_output_does_not_fit_the_manifest(bundle):
    """A graph swapped for another valid one (home's 16 labels under banking's entry with one label
    dropped) loads in ONNX Runtime; the probe run refuses it before it is marked ready."""
    toml = bundle / "ecology.toml"
    text = toml.read_text()
    start = text.index('id = "banking"')
    labels_at = text.index("labels = [", start)
    end = text.index("]", labels_at)
    labels = text[labels_at:end].split(", ")
    toml.write_text(text[:labels_at] + ", ".join(labels[:-2] + [labels[-1]]) + text[end:])
    with edge_eco.open(bundle) as eco:
        with pytest.raises(ModelLoadError, match=r"banking.onnx: a probe run answered shape \(16,\).*15 labels"):
            eco.predict_with("banking", "what is my balance")
        assert "banking" not in eco.residency.resident()


def test_a_layer_without_models_is_a_clear_error():
    # a trial ran `edge-eco fuzz models/clinc150 --layer tflite`: ValueError from random.randrange
    with pytest.raises(EdgeEcoError, match="no tflite models"):
        cases_for("tflite", BUNDLE, 5, 1)


def test_cases_are_deterministic_and_cover_every_kind():
    a = cases_for("ort", BUNDLE, 300, 5)
    assert a == cases_for("ort", BUNDLE, 300, 5)
    assert {c.op for c in a} >= {"truncate", "bitflip", "empty", "lfs", "magic", "zeros", "garbage", "missing"}
    b = cases_for("bundle", BUNDLE, 300, 5)
    assert {c.op for c in b} >= {"truncate", "bitflip", "missing", "replace", "lfs"}
    assert any(c.target == "ecology.toml" for c in b) and any(c.target.endswith(".data") for c in b)


@pytest.mark.parametrize("layer", ["bundle", "ort"])
def test_short_fuzz_run_refuses_every_damage(layer):
    """100 cases per layer (the full run: 1,000; README figures). Every must-refuse case is refused
    with an edge_eco error; nothing crashes, hangs or leaks a foreign exception."""
    r = run_fuzz(layer, BUNDLE, 100, seed=11)
    assert r.failures == [] and r.must_refuse_accepted == []
    assert sum(r.outcomes.values()) == 100
    assert r.outcomes["refused"] >= 80
    assert set(r.outcomes) <= {"refused", "accepted-same", "accepted-changed"}


def test_unlisted_external_data_is_refused_at_open(bundle):
    """A manifest that no longer lists a model's weight file would leave it unchecked."""
    toml = bundle / "ecology.toml"
    text = toml.read_text()
    at = text.index('path = "banking.onnx.data"')
    start, end = text.rindex("[[files]]", 0, at), text.index("\n\n", at) + 2
    toml.write_text(text[:start] + text[end:])
    with pytest.raises(IntegrityError, match=r"'banking.onnx' uses external data 'banking.onnx.data', which "
                                             r"ecology.toml does not list"):
        edge_eco.open(bundle)


def test_a_crashing_or_hanging_runtime_is_counted_and_the_run_goes_on():
    """The harness itself survives what it looks for: a loader that segfaults on some cases and
    never returns on others (tests/fuzz_crash_plugin.py) is counted case by case."""
    r = run_fuzz("crashy", BUNDLE, 20, seed=2, case_timeout_s=1.5, plugin="fuzz_crash_plugin")
    assert sum(r.outcomes.values()) == 20
    assert r.outcomes["crash"] >= 1 and r.outcomes["hang"] >= 1 and r.outcomes["refused"] >= 5
    assert not r.ok and any(f.startswith("crash (exit -11)") for f in r.failures)


def test_short_fuzz_run_of_the_tflite_backend():
    """100 damaged .tflite files of the HAR sensor ecology handed to the LiteRT backend (the full
    run: 1,000); none crashes the process, every must-refuse case is refused."""
    r = run_fuzz("tflite", MODELS / "har", 100, seed=11)
    assert r.failures == [] and r.must_refuse_accepted == []
    assert sum(r.outcomes.values()) == 100 and r.outcomes["refused"] >= 70


def test_short_fuzz_run_of_the_har_bundle():
    """The bundle layer on the sensor ecology (TFLite models, router, window featurizer, manifest),
    probed with accelerometer windows: 100 cases (the full run: 1,000), every one refused."""
    r = run_fuzz("bundle", MODELS / "har", 100, seed=11)
    assert r.failures == [] and r.must_refuse_accepted == []
    assert sum(r.outcomes.values()) == 100 and r.outcomes["refused"] >= 90
    cases = cases_for("bundle", MODELS / "har", 100, 11)
    assert {c.op for c in cases} >= {"truncate", "bitflip", "missing", "replace", "lfs", "empty", "magic"}
    assert any(c.target.endswith(".tflite") for c in cases) and any(c.target == "ecology.toml" for c in cases)


def test_every_manifest_edit_applies_to_the_manifest_it_was_made_for():
    """An edit whose text is absent would fail while the case is written (it once named a router
    kind models/clinc150 no longer has)."""
    import random

    from edge_eco.fuzz_cases import apply, manifest_edits

    for name in ("clinc150", "har"):
        text = (MODELS / name / "ecology.toml").read_bytes()
        edits = manifest_edits(text.decode(), random.Random(0))
        assert len(edits) >= 30
        for old, new in edits:
            assert apply("replace", (old, new), text) != text


def test_dense_probes_answer_like_their_activities():
    import edge_eco
    from edge_eco.fuzz import dense_probes

    with edge_eco.open(MODELS / "har") as eco:
        labels = [eco.answer_features(w.reshape(-1), local_only=True).label for w in dense_probes(52, 3)]
    assert labels == ["stationary", "walking", "running"]


def test_a_plugin_that_cannot_be_imported_is_named_in_one_line(capsys):
    """A trial's `edge-eco fuzz models/clinc150 --plugin nonexistent_mod` printed a
    ModuleNotFoundError traceback (rc 1)."""
    from edge_eco.cli import main

    assert main(["fuzz", str(BUNDLE), "--plugin", "nonexistent_mod", "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert err == ("edge-eco fuzz: error: fuzz plugin 'nonexistent_mod' cannot be imported: ModuleNotFoundError: "
                   "No module named 'nonexistent_mod' (give a module name on the Python path; PYTHONPATH=DIR "
                   "adds a folder)\n")

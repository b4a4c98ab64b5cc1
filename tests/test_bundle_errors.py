"""Bad bundles are refused with an error naming the problem; nothing crashes or half-loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edge_eco
from edge_eco.bundle import sha256_file
from edge_eco.errors import IntegrityError, ManifestError, ModelLoadError

from conftest import MODELS

BUNDLE = MODELS / "clinc150"


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "clinc150"
    shutil.copytree(BUNDLE, dst)
    return dst


def _edit_manifest(folder: Path, old: str, new: str) -> None:
    path = folder / "ecology.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_shipped_bundle_opens(bundle):
    with edge_eco.open(bundle) as eco:
        assert eco.answer("what is my checking account balance", local_only=True).label == "balance"


def test_wrong_sha256_names_the_file(bundle):
    sha = sha256_file(bundle / "banking.onnx.data")
    _edit_manifest(bundle, sha, "0" * 64)
    with pytest.raises(IntegrityError, match=r"'banking.onnx.data' does not match its sha256"):
        edge_eco.open(bundle)


def test_missing_model_file_names_the_file(bundle):
    (bundle / "travel.onnx").unlink()
    with pytest.raises(IntegrityError, match=r"'travel.onnx' listed in ecology.toml is missing"):
        edge_eco.open(bundle)


def test_truncated_model_is_caught_by_its_hash(bundle):
    data = (bundle / "home.onnx.data").read_bytes()
    (bundle / "home.onnx.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"'home.onnx.data'.*truncated, corrupt or replaced"):
        edge_eco.open(bundle)


def test_truncated_model_with_matching_hash_is_refused_by_the_backend(bundle):
    """Even a manifest re-signed over a truncated file never answers from it."""
    path = bundle / "home.onnx"
    old = sha256_file(path)
    path.write_bytes(path.read_bytes()[:100])
    _edit_manifest(bundle, old, sha256_file(path))
    with edge_eco.open(bundle) as eco:
        with pytest.raises(ModelLoadError, match="home.onnx"):
            eco.predict_with("home", "turn off the lights")
        # The rest of the population still answers.
        assert eco.predict_with("banking", "what is my balance").label == "balance"


def test_empty_model_file(bundle):
    (bundle / "meta.onnx").write_bytes(b"")
    with pytest.raises(IntegrityError, match="'meta.onnx' is empty"):
        edge_eco.open(bundle)


def test_unknown_field_is_refused(bundle):
    _edit_manifest(bundle, "[policy]\n", "[policy]\ndirect_treshold = 0.5\n")
    with pytest.raises(ManifestError, match=r"unknown field\(s\) \['direct_treshold'\]"):
        edge_eco.open(bundle)


@pytest.mark.parametrize("field, value", [("direct_threshold", "1.5"), ("fallback_threshold", "-0.2")])
def test_threshold_out_of_range_is_refused(bundle, field, value):
    text = (bundle / "ecology.toml").read_text()
    line = next(l for l in text.splitlines() if l.startswith(f"{field} = "))
    _edit_manifest(bundle, line, f"{field} = {value}")
    with pytest.raises(ManifestError, match=f"policy.{field}: {value} is out of range"):
        edge_eco.open(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ManifestError, match="no such directory"):
        edge_eco.open(tmp_path / "nope")
    with pytest.raises(ManifestError, match="has no ecology.toml"):
        edge_eco.open(tmp_path)


def test_garbage_manifest(bundle):
    (bundle / "ecology.toml").write_bytes(b"\x00\xff not toml [[[")
    with pytest.raises(ManifestError):
        edge_eco.open(bundle)


@pytest.mark.parametrize("feeds, message", [
    ({"indices": [[1, 2]], "values": [[0.5, 0.5]]}, "expects rank 1"),            # 2-D: wrong rank
    ({"indices": [70000], "values": [1.0]}, "onnxruntime run failed"),            # index past dim
    ({"indices": [1, 2], "values": [1.0]}, "dimension .nnz. is 1 here but 2"),      # length mismatch (would broadcast)
    ({"indices": [1.0, 2.0], "values": [1.0, 1.0]}, "dtype float64 where the model expects int32"),
])
def test_wrong_tensor_shapes_are_inference_errors(feeds, message):
    import numpy as np

    from edge_eco.backends import open_model
    from edge_eco.errors import InferenceError

    sess = open_model("ort", BUNDLE / "banking.onnx", optimize=False)
    arrays = {"indices": np.asarray(feeds["indices"]), "values": np.asarray(feeds["values"], np.float32)}
    if arrays["indices"].dtype == np.int64:
        arrays["indices"] = arrays["indices"].astype(np.int32)
    with pytest.raises(InferenceError, match=message):
        sess.run(arrays)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "edge-eco"
    for args, needle in [(["run", str(tmp_path / "none"), "--requests", str(tmp_path / "r.jsonl")], "requests file"),
                         (["info", str(tmp_path)], "has no ecology.toml")]:
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert needle in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "r.jsonl").write_text('{"text": "hi"}\nnot json\n')
    done = subprocess.run([str(exe), "run", str(BUNDLE), "--requests", str(tmp_path / "r.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "r.jsonl:2: not valid JSON" in done.stderr


def test_edited_featurizer_in_manifest_is_caught_by_the_router_header(bundle):
    """ecology.toml cannot hash itself; the router records the featurizer it was trained with."""
    _edit_manifest(bundle, "seed = 20261203", "seed = 1")
    with pytest.raises(IntegrityError, match=r"(router|correctness)\.bin was built for featurizer"):
        edge_eco.open(bundle)

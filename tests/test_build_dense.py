"""`edge-eco build` of dense-vector recipes: recipe validation, data problems of vector rows (found
before training), and two small builds on real STM32 HAR recordings (10 recordings a class, copied
from ../shared/data into tmp): raw recordings cut into windows (accel-window-v1, TFLite), built twice
and compared byte for byte, then scored with `edge-eco eval`; and plain vectors in JSON lines
(vector-v1, ONNX), answered through the runtime's feature-vector entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from edge_eco.build.data import prepare
from edge_eco.build.pipeline import build
from edge_eco.build.recipe import parse_recipe
from edge_eco.errors import BuildError, DataError, RecipeError, RequestError

from conftest import DATA

HAR = DATA / "stm32_har"
CLASSES = ("running", "stationary", "walking")
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
pytest.importorskip("sklearn", reason="needs scikit-learn (build extra)")

RECORDINGS = """
[bundle]
name = "har-small"
reject_label = "unknown"
budget_bytes = 0
seed = 7
[data]
format = "recordings"
label_field = "label"
niche_field = "label"
[[data.files]]
path = "har/{label}/*.csv"
[data.windows]
samples = 52
axes = 3
hop = 52
train_hop = 26
[split]
mode = "by-recording"
[dense]
featurizer = "accel-window-v1"
max_abs = 4000.0
[specialists]
niche = "activity"
balance_decline = false
model = { hidden = [8], tier = "tiny", max_iter = 60, l2 = 1e-3 }
[specialists.groups]
still = ["stationary"]
active = ["running", "walking"]
active_large = ["running", "walking"]
[specialists.models]
active_large = { hidden = [32], tier = "large", max_iter = 60, l2 = 1e-3 }
[generalist]
reject_floor = false
model = { hidden = [16], tier = "generalist", max_iter = 60, l2 = 1e-3 }
[router]
model = { l2 = 1e-4, max_iter = 100 }
[policy]
target_remote_rate = 0.0
[card]
licence = "BSD-3-Clause (test fixture: STM32 HAR recordings)"
licence_file = "har/LICENSE_upstream.txt"
"""

VECTORS = """
[bundle]
name = "vec"
reject_label = "unknown"
budget_bytes = 0
seed = 3
[data]
format = "jsonl"
vector_field = "v"
niche_field = "motion"
split_field = "split"
[[data.files]]
path = "rows.jsonl"
[specialists]
niche = "motion"
model = { hidden = [12], backend = "ort", max_iter = 80, l2 = 1e-3 }
[generalist]
model = { hidden = [16], backend = "ort", max_iter = 80, l2 = 1e-3 }
[policy]
target_remote_rate = 0.0
[card]
licence = "BSD-3-Clause (test fixture: STM32 HAR windows as plain vectors)"
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_eco.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def har_small(tmp_path_factory) -> Path:
    """A data folder with the first 10 recordings of each class (2 test, 2 val, 6 train by the cycle)."""
    if not HAR.is_dir():
        pytest.fail(f"STM32 HAR data not found at {HAR} (set EDGE_ECO_DATA)")
    root = tmp_path_factory.mktemp("data")
    for label in CLASSES:
        (root / "har" / label).mkdir(parents=True)
        for f in sorted((HAR / label).glob("*.csv"))[:10]:
            shutil.copy(f, root / "har" / label / f.name)
    shutil.copy(HAR / "LICENSE_upstream.txt", root / "har" / "LICENSE_upstream.txt")
    return root


def _rows(folder: Path, rows: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_recordings_build_is_byte_identical_and_scores_like_eval(har_small, tmp_path):
    (tmp_path / "har.toml").write_text(RECORDINGS)
    for out in ("a", "b"):
        done = _cli("build", str(tmp_path / "har.toml"), "--out", str(tmp_path / out), "--data", str(har_small),
                    "--quiet")
        assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == ["MODEL_CARD.md", "active.tflite", "active_large.tflite", "build.json", "ecology.toml",
                     "featurizer.bin", "generalist.tflite", "router.bin", "still.tflite"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build_json = json.loads((tmp_path / "a" / "build.json").read_text())
    # 6 train recordings x 37 windows (hop 26) per class; 2 val and 2 test recordings x 19 windows (hop 52)
    assert (build_json["data"]["train"], build_json["data"]["val"], build_json["data"]["test"]) == (666, 114, 114)
    assert build_json["dense"]["recordings"]["test"] == ["running_01_26Hz_4g_mg.csv", "running_06_26Hz_4g_mg.csv",
                                                         "stationary_01_26Hz_4g_mg.csv", "stationary_06_26Hz_4g_mg.csv",
                                                         "walking_01_26Hz_4g_mg.csv", "walking_06_26Hz_4g_mg.csv"]
    test = build_json["test"]
    assert test["accuracy"] >= 0.95 and test["remote_rate"] == 0.0 and test["errors"] == 0
    assert set(test["eval"]["by_niche_local"]) == set(CLASSES)
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert build_json["data"]["fingerprint_sha256"] in card and "Redistributions in binary form" in card
    assert "accel-window-v1" in card and "| running |" in card and "calibration error (ECE" in card
    with edge_eco.open(tmp_path / "a") as eco:
        m = eco.manifest
        assert m.dense.kind == "accel-window-v1" and (m.dense.samples, m.dense.axes) == (52, 3)
        # cheapest first: the router's target for running/walking is the tiny tier
        assert m.router.candidates == ("still", "active", "active_large", "generalist")
        assert dict(m.model("active_large").niches) == {"activity": "running,walking", "tier": "large"}
        assert all(e.backend == "tflite" and e.input == "dense-vector" for e in m.models)
        assert eco.feature_dim == 156
    # `edge-eco eval` on the same recordings (the stm32_har folder reader splits them the same way)
    out = tmp_path / "eval.json"
    done = _cli("eval", str(tmp_path / "a"), "--requests", str(har_small / "har"), "--split", "test", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["requests"] == 114 and report["accuracy"] == test["accuracy"]
    assert report["eval"]["local_accuracy"] == test["eval"]["local_accuracy"]


def test_vector_rows_build_onnx_models_served_as_feature_vectors(har_small, tmp_path):
    from edge_eco.dense import raw_features
    from edge_eco.har_data import read_recording, windows

    rows = []  # feature vectors a user computed elsewhere: here 24 window statistics, rounded to 4 digits
    for label in CLASSES:
        for i, f in enumerate(sorted((har_small / "har" / label).glob("*.csv"))):
            split = ("test", "val", "train", "train", "train")[i % 5]
            for v in raw_features(windows(read_recording(f), 52)):
                rows.append({"v": [round(float(x), 4) for x in v], "label": label, "split": split,
                             "motion": "still" if label == "stationary" else "moving"})
    _rows(tmp_path / "data", rows)
    recipe = parse_recipe(VECTORS)
    report = build(recipe, tmp_path / "data", tmp_path / "vec")
    assert sorted(p.name for p in (tmp_path / "vec").glob("*.onnx")) == ["generalist.onnx", "moving.onnx",
                                                                         "still.onnx"]
    assert report["dense"] == {"featurizer": "vector-v1", "samples": 24, "axes": 1, "max_abs": 1e9, "features": 24}
    assert report["test"]["accuracy"] >= 0.9 and report["data"]["test"] == 114
    test_rows = [r for r in rows if r["split"] == "test"]
    with edge_eco.open(tmp_path / "vec") as eco:
        assert eco.manifest.dense.kind == "vector-v1" and eco.feature_dim == 24
        answers = [eco.answer_features(np.array(r["v"], np.float32)) for r in test_rows]
        with pytest.raises(RequestError, match=r"expected a flat row of 24 features .*got shape \[23\]"):
            eco.answer_features(np.zeros(23, np.float32))
        with pytest.raises(RequestError, match="NaN or infinity"):
            eco.answer(np.full(24, np.nan))
        with pytest.raises(RequestError, match=r"^this ecology takes vectors of 24 floats, not text \(got str\)$"):
            eco.answer("walking briskly")
        acc = np.mean([a.label == r["label"] for a, r in zip(answers, test_rows)])
    assert round(float(acc), 5) == report["test"]["accuracy"]  # the report rounds to 5 digits
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"features": " ".join(map(str, r["v"])), "label": r["label"]})
                                              + "\n" for r in test_rows))
    done = _cli("eval", str(tmp_path / "vec"), "--requests", str(tmp_path / "t.jsonl"), "--vector-field", "features")
    assert done.returncode == 0, done.stderr
    assert f"{100 * acc:.2f}%" in done.stdout
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "walking briskly", "label": "walking"}) + "\n")
    done = _cli("run", str(tmp_path / "vec"), "--requests", str(tmp_path / "text.jsonl"))
    assert done.returncode == 2 and done.stderr.startswith(
        "edge-eco run: error: vec takes vectors of 24 floats, not text: `edge-eco run` read the 'text' field"), done.stderr


def test_vector_data_problems_are_reported_together_before_training(tmp_path):
    good = [{"v": [float(i), 2.0, 3.0], "label": lab, "split": s, "motion": "m"}
            for i, (lab, s) in enumerate([("a", "train"), ("b", "train"), ("a", "val"), ("b", "test")] * 2)]
    bad = [{"v": [1.0, 2.0], "label": "a", "split": "train"},          # another length
           {"v": "1 two 3", "label": "a", "split": "train"},          # text that is not numbers
           {"v": [1, "2", 3], "label": "a", "split": "train"},        # a string among numbers
           '{"v": [1.0, NaN, 3.0], "label": "a", "split": "train"}',  # NaN (Python's json reads it)
           {"v": [], "label": "a", "split": "train"},                 # empty vector
           {"label": "a", "split": "train"}]                          # no vector at all
    _rows(tmp_path, good + bad)
    r = parse_recipe(VECTORS)
    with pytest.raises(DataError) as err:
        prepare(tmp_path, r.data, r.split)
    msg = str(err.value)
    assert "nothing was trained" in msg
    for what, line in [("vector field 'v' holds text that is not numbers: 1", 10),
                       ("vector field 'v' not a list of numbers (mixed types): 1", 11),
                       ("vector field 'v' holds NaN or infinity: 1", 12),
                       ("vector field 'v' is an empty vector: 1", 13), ("vector field 'v' missing: 1", 14)]:
        assert f"{what} (first: {tmp_path.name}/rows.jsonl:{line})" in msg, (what, msg)
    assert "vectors of different lengths {3: 8, 2: 1}" in msg


def test_vector_leakage_range_and_shape_are_checked_before_training(tmp_path):
    rows = [{"v": [float(i % 4), 1.0], "label": "ab"[i % 2], "split": ("train", "val", "test")[i % 3], "motion": "m"}
            for i in range(24)]
    _rows(tmp_path, rows)
    r = parse_recipe(VECTORS)
    with pytest.raises(DataError, match=r"leakage: the same vector in train and test: .* \d+ test row\(s\) \(\d "
                                        r"distinct vectors\) also appear in train"):
        prepare(tmp_path, r.data, r.split)
    rows = [{"v": [float(i), 9000.0 if i == 5 else 1.0], "label": "ab"[i % 2], "split": ("train", "val", "test")[i % 3],
             "motion": "m"} for i in range(24)]
    _rows(tmp_path, rows)
    capped = VECTORS.replace("[specialists]", "[dense]\nmax_abs = 4000.0\n[specialists]")
    with pytest.raises(BuildError, match=r"1 vector\(s\) hold a reading beyond dense.max_abs 4000 \(first: "
                                         r".*rows.jsonl:6\)"):
        build(parse_recipe(capped), tmp_path, tmp_path / "out")
    shaped = VECTORS.replace("[specialists]", "[dense]\nsamples = 3\n[specialists]")
    with pytest.raises(BuildError, match=r"the vectors have 2 numbers; \[dense\] says samples x axes = 3 x 1"):
        build(parse_recipe(shaped), tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_bad_recordings_are_named_with_file_and_line(tmp_path):
    folder = tmp_path / "har" / "walking"
    folder.mkdir(parents=True)
    (folder / "w1.csv").write_text("x, y, z\n" + "1, 2, 3\n" * 60)
    r = parse_recipe(RECORDINGS)
    with pytest.raises(DataError, match=r"w1.csv:1: not a number .*no header"):
        prepare(tmp_path, r.data, r.split)
    (folder / "w1.csv").write_text("1, 2, 3\n" * 30 + "1, 2\n")
    with pytest.raises(DataError, match=r"w1.csv:31: 2 field\(s\) where a recording row has 3"):
        prepare(tmp_path, r.data, r.split)
    (folder / "w1.csv").write_text("1, 2, 3\n" * 30)
    with pytest.raises(DataError, match=r"w1.csv: 30 rows, fewer than one window of 52"):
        prepare(tmp_path, r.data, r.split)


@pytest.mark.parametrize("edit, why", [
    (('mode = "by-recording"', 'mode = "stratified"'), "windows of one recording in train and test"),
    (("hop = 52", "hop = 40"), "hop 40 must be a multiple of train_hop 26"),
    (("max_abs = 4000.0", "max_abs = 4000.0\nsamples = 50"), "dense: samples x axes 50 x 3 differ from data.windows"),
    (('model = { hidden = [16], tier = "generalist", max_iter = 60, l2 = 1e-3 }', 'model = { family = "sparse-linear" }'),
     "generalist.model: dense vectors train family 'mlp'"),
    (("[policy]", '[remote]\nmodel = "x"\n[policy]'), "remote generalist clients send text"),
    (("hidden = [8]", "hidden = []"), r"hidden: a non-empty list of layer sizes"),
    (("active_large = { hidden", "nobody = { hidden"), r"specialists.models: \['nobody'\] are not specialists"),
    (("[router]", '[router]\nkind = "correctness"'), "'correctness' reads text features"),
    (("[policy]", '[calibration]\nmethod = "temperature-reject-bias"\n[policy]'), "dense models are calibrated by temperature only"),
])
def test_dense_recipe_mistakes_are_named(edit, why):
    with pytest.raises(RecipeError, match=why):
        parse_recipe(RECORDINGS.replace(*edit))


def test_text_recipes_cannot_ask_for_mlp_or_dense():
    text = VECTORS.replace('vector_field = "v"\n', "").replace('hidden = [12], backend = "ort", ', "") \
        .replace('hidden = [16], backend = "ort", ', "")
    parse_recipe(text)  # the same recipe over text rows: sparse-linear models
    with pytest.raises(RecipeError, match="model family 'mlp' takes dense vectors"):
        parse_recipe(text.replace("model = { max_iter = 80", 'model = { family = "mlp", max_iter = 80', 1))
    with pytest.raises(RecipeError, match=r"\[dense\] describes vector data"):
        parse_recipe(text.replace("[policy]", "[dense]\n[policy]"))


def test_the_shipped_har_recipe_parses():
    from edge_eco.build.recipe import load_recipe

    r = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "har.toml")
    assert r.dense.featurizer == "accel-window-v1" and r.data.windows.train_hop == 13
    assert r.specialists.family("active_large").hidden == (64, 64) and r.specialists.family("active_tiny").hidden == (8,)
    assert r.card.licence_file == "stm32_har/LICENSE_upstream.txt"


def test_the_har_recipe_rebuilds_the_shipped_bundle(tmp_path):
    """models/har is what recipes/har.toml builds. On this machine the rebuild is byte-identical; float
    sums in training may round differently on another CPU's BLAS, so the bytes of the tiny models
    (the ones the router uses) and the figures are what must match everywhere."""
    root = Path(__file__).resolve().parent.parent
    shipped = root / "models" / "har"
    done = _cli("build", str(root / "recipes" / "har.toml"), "--out", str(tmp_path / "har"), "--data", str(DATA),
                "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "har").iterdir()) == sorted(p.name for p in shipped.iterdir())
    for name in ("featurizer.bin", "still_tiny.tflite", "active_tiny.tflite"):
        assert (tmp_path / "har" / name).read_bytes() == (shipped / name).read_bytes(), name
    new, old = (json.loads((d / "build.json").read_text()) for d in (tmp_path / "har", shipped))
    assert new["data"] == old["data"] and new["dense"] == old["dense"]
    assert abs(new["test"]["accuracy"] - old["test"]["accuracy"]) <= 0.003  # one window of 380
    assert old["test"]["accuracy"] == 0.97632 and old["test"]["paths"] == {"direct": 363, "coalition": 17,
                                                                            "remote": 0, "unavailable": 0}

"""`edge-eco build` and `edge-eco eval`: recipe validation, data checks before training, a small
real build (3 CLINC150 domains from ../shared/data, written as JSON lines in tmp) built twice and
compared byte for byte, and `eval` on the result with the keys of `edge-eco run`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_eco.build.data import prepare
from edge_eco.build.recipe import parse_recipe
from edge_eco.errors import DataError, RecipeError

from conftest import CLINC

DOMAINS = ("banking", "travel", "utility")
RECIPE = """
[bundle]
name = "tiny"
reject_label = "oos"
seed = 3
[data]
format = "jsonl"
niche_field = "domain"
niche_map = "domains.json"
[[data.files]]
path = "rows.jsonl"
[split]
mode = "stratified"
seed = 5
val_fraction = 0.2
test_fraction = 0.2
[featurizer]
seed = 11
dim = 2048
[specialists]
niche = "domain"
model = { max_iter = 60 }
[generalist]
model = { max_iter = 60 }
[router]
model = { max_iter = 60 }
[policy]
target_remote_rate = 0.0
[card]
licence = "CC BY 3.0 (test fixture derived from CLINC150)"
"""


def _write_tiny(folder: Path) -> None:
    """30 queries per intent of three CLINC150 domains, plus 60 out-of-scope queries, as JSON lines."""
    data = json.loads(CLINC.read_text())
    domains = json.loads((CLINC.parent / "domains.json").read_text())
    keep = {d: domains[d] for d in DOMAINS}
    intents = {i for v in keep.values() for i in v}
    rows, per = [], {}
    for text, label in data["train"] + data["oos_train"]:
        if (label in intents or label == "oos") and per.get(label, 0) < (30 if label != "oos" else 60):
            per[label] = per.get(label, 0) + 1
            rows.append({"text": text, "label": label})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "domains.json").write_text(json.dumps(keep))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_eco.cli", *args], capture_output=True, text=True, timeout=600)


def test_recipe_rejects_unknown_fields_and_missing_licence():
    with pytest.raises(RecipeError, match=r"specialists: unknown field\(s\) \['nich'\]"):
        parse_recipe(RECIPE.replace('niche = "domain"\nmodel', 'niche = "domain"\nnich = "x"\nmodel'))
    with pytest.raises(RecipeError, match="missing required table \\[card\\]"):
        parse_recipe(RECIPE[: RECIPE.index("[card]")])
    with pytest.raises(RecipeError, match="featurizer: .*dim 1000 is not a power of two"):
        parse_recipe(RECIPE.replace("dim = 2048", "dim = 1000"))
    with pytest.raises(RecipeError, match="l2: .* out of range"):
        parse_recipe(RECIPE.replace("model = { max_iter = 60 }\n[generalist]", "model = { l2 = -1.0 }\n[generalist]"))


def test_recipe_refuses_an_empty_reject_label_a_path_like_name_and_no_room_for_training():
    # each was accepted: an empty reject label made 'oos' an ordinary label; the name became path segments
    # and the v2 model name; fractions summing to 1 failed later with spurious data errors
    with pytest.raises(RecipeError, match=r"^bundle.reject_label: must not be empty"):
        parse_recipe(RECIPE.replace('reject_label = "oos"', 'reject_label = ""'))
    with pytest.raises(RecipeError, match=r"^bundle.reject_label: must not be empty"):
        parse_recipe(RECIPE.replace('reject_label = "oos"', 'reject_label = "  "'))
    for name in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(RecipeError, match=rf"^bundle.name: {re.escape(repr(name))} cannot name a bundle"):
            parse_recipe(RECIPE.replace('name = "tiny"', f'name = "{name}"'))
    with pytest.raises(RecipeError, match=r"^split: val_fraction \+ test_fraction = 1 leaves no training rows"):
        parse_recipe(RECIPE.replace("val_fraction = 0.2\ntest_fraction = 0.2", "val_fraction = 0.5\ntest_fraction = 0.5"))
    assert parse_recipe(RECIPE.replace("test_fraction = 0.2", "test_fraction = 0.5")).split.test_fraction == 0.5


def _rows(folder: Path, rows: list[dict], niche_map: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "domains.json").write_text(json.dumps(niche_map or {"money": ["a", "b"], "trips": ["c"]}))


def _prepare(folder: Path, recipe: str = RECIPE):
    r = parse_recipe(recipe)
    return prepare(folder, r.data, r.split, reject_label=r.reject_label)


def test_data_problems_are_reported_together_before_training(tmp_path):
    rows = [{"text": f"pay my bill {i}", "label": "a"} for i in range(10)]
    rows += [{"text": f"move money {i}", "label": "b"} for i in range(10)]
    rows += [{"text": f"book a trip {i}", "label": "c"} for i in range(10)]
    rows += [{"text": "no label here"}, {"text": "empty label", "label": " "}, {"text": 42, "label": "a"},
             {"text": "   ", "label": "b"}]
    _rows(tmp_path, rows)
    with pytest.raises(DataError) as err:
        _prepare(tmp_path)
    msg = str(err.value)
    assert "nothing was trained" in msg
    assert "missing label: 1 (first: " in msg and "rows.jsonl:31" in msg
    assert "empty or non-scalar label: 1 (first: " in msg and "rows.jsonl:32" in msg
    assert "not a string (mixed types): 1 (first: " in msg and "rows.jsonl:33" in msg
    assert "empty text in 'text': 1 (first: " in msg and "rows.jsonl:34" in msg


def test_too_few_examples_and_a_niche_without_data(tmp_path):
    rows = [{"text": f"pay my bill {i}", "label": "a"} for i in range(10)] + [{"text": "move money", "label": "b"}]
    _rows(tmp_path, rows, {"money": ["a", "b"], "trips": ["c"]})
    with pytest.raises(DataError) as err:
        _prepare(tmp_path)
    msg = str(err.value)
    assert "labels with fewer than 3 examples" in msg and "'b' (1)" in msg
    assert "niches with no training data: 1 (first: trips)" in msg


def test_a_label_under_two_niches_is_an_error(tmp_path):
    rows = [{"text": f"pay my bill {i}", "label": lab} for lab in ("a", "b", "c") for i in range(10)]
    _rows(tmp_path, rows, {"money": ["a", "b"], "trips": ["c", "a"]})
    with pytest.raises(DataError, match="label 'a' is listed under niches 'money' and 'trips'"):
        _prepare(tmp_path)


def test_leakage_is_an_error_with_counts_unless_the_recipe_allows_it(tmp_path):
    rows = [{"text": "same text every time", "label": lab} for lab in ("a", "b", "c") for _ in range(10)]
    _rows(tmp_path, rows)
    with pytest.raises(DataError, match=r"leakage: the same text in train and test: .*\d+ test row\(s\) \(1 distinct "
                                        r"texts\) also appear in train"):
        _prepare(tmp_path)
    ds = _prepare(tmp_path, RECIPE.replace('niche_map = "domains.json"', 'niche_map = "domains.json"\nleakage = "drop"'))
    assert ds.test == () or all(r.text != "same text every time" for r in ds.test)
    assert any("dropped from test" in n for n in ds.notes)


def test_the_empty_text_column(tmp_path):
    _rows(tmp_path, [{"text": "", "label": "a"}] * 3)
    with pytest.raises(DataError, match=r"empty text in 'text': 3 \(first: "):
        _prepare(tmp_path)
    # the data problems of vector rows: tests/test_build_dense.py


@pytest.mark.skipif(not CLINC.exists(), reason=f"CLINC150 not found at {CLINC}")
def test_small_build_is_byte_identical_and_eval_has_the_run_keys(tmp_path):
    data = tmp_path / "data"
    _write_tiny(data)
    (tmp_path / "tiny.toml").write_text(RECIPE)
    for out in ("a", "b"):
        done = _cli("build", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / out), "--data", str(data),
                    "--quiet")
        assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {"ecology.toml", "router.bin", "MODEL_CARD.md", "build.json", "generalist.onnx", "banking.onnx"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    build = json.loads((tmp_path / "a" / "build.json").read_text())
    assert "CC BY 3.0 (test fixture derived from CLINC150)" in card
    assert build["data"]["fingerprint_sha256"] in card
    assert build["test"]["eval"]["local_accuracy"] > 0.6  # 3 domains, 45 intents + oos, 30 examples each
    assert "| banking |" in card and "calibration error (ECE" in card
    info = _cli("info", str(tmp_path / "a"))
    assert info.returncode == 0 and "sha256 verified" in info.stdout
    test_rows = tmp_path / "test.jsonl"
    test_rows.write_text((data / "rows.jsonl").read_text().splitlines()[0] + "\n"
                         + json.dumps({"text": "what is my balance", "label": "balance"}) + "\n")
    report_path = tmp_path / "report.json"
    done = _cli("eval", str(tmp_path / "a"), "--requests", str(test_rows), "--out", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    run_keys = {"requests", "accuracy", "in_scope_accuracy", "oos_recall", "remote_rate", "paths", "latency_ms",
                "peak_rss_bytes", "loads", "evictions", "baselines"}
    assert run_keys <= set(report) and report["requests"] == 2
    assert {"local_accuracy", "ece_local", "by_niche_local"} <= set(report["eval"])


def test_build_says_which_extra_is_missing(monkeypatch):
    import builtins

    from edge_eco.build import require
    from edge_eco.errors import BuildError

    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.delitem(sys.modules, "onnx", raising=False)
    with pytest.raises(BuildError, match=r"pip install 'edge_eco\[build\]'"):
        require("onnx")



def test_the_shipped_recipes_parse():
    from edge_eco.build.recipe import load_recipe

    root = Path(__file__).resolve().parent.parent
    clinc = load_recipe(root / "recipes" / "clinc150.toml")
    sib = load_recipe(root / "recipes" / "sib200.toml")
    assert clinc.remote is not None and (clinc.base_dir / clinc.remote.bundle / "ecology.toml").exists()
    assert "CC BY-SA 4.0" in sib.card.licence and sib.data.niche_field == "language"
    assert sum(len(v) for _, v in sib.specialists.groups) == 28


def test_the_runtime_never_imports_build_dependencies():
    code = ("import sys, edge_eco, edge_eco.cli, edge_eco.evaljob, edge_eco.build.recipe, edge_eco.build.data; "
            "bad = [m for m in ('scipy', 'onnx', 'sklearn', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_recipe_declares_the_correctness_router():
    r = parse_recipe(RECIPE.replace("[router]\n", '[router]\nkind = "correctness"\nlambda = 0.05\n'))
    assert r.correctness is not None and r.correctness.lam == 0.05 and not r.correctness.include_generalist
    assert parse_recipe(RECIPE).correctness is None
    with pytest.raises(RecipeError, match="kind"):
        parse_recipe(RECIPE.replace("[router]\n", '[router]\nkind = "oracle"\n'))

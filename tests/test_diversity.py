"""Diversity diagnostics on the real CLINC150 ecology: perturbations, error correlation, oracle gap."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings, strategies as st

import edge_eco
from edge_eco.bundle import read_bundle, sha256_file
from edge_eco.cli import main as cli
from edge_eco.diversity import measure, phi
from edge_eco.manifest import FileEntry
from edge_eco.perturb import KINDS, perturb
from edge_eco.tomlwrite import manifest_to_toml

import numpy as np
from conftest import CLINC

ROOT = Path(__file__).resolve().parent.parent


@given(st.text(min_size=1, max_size=60), st.sampled_from(KINDS), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_perturbations_are_seeded(text, kind, seed):
    assert perturb(text, kind, random.Random(seed)) == perturb(text, kind, random.Random(seed))


def test_phi():
    a = np.array([1, 1, 0, 0, 1], bool)
    assert phi(a, a) == 1.0 and phi(a, ~a) == -1.0 and phi(a, np.zeros(5, bool)) == 0.0


def test_a_duplicated_model_is_flagged_redundant_and_niches_report_the_oracle_gap(tmp_path, clinc_test):
    root = tmp_path / "clinc150"
    shutil.copytree(ROOT / "models" / "clinc150", root)
    _, m = read_bundle(root)
    shutil.copyfile(root / "home.onnx", root / "home_copy.onnx")  # same weights (home.onnx.data)
    home = m.model("home")
    copy = replace(home, id="home_copy", file=FileEntry("home_copy.onnx", sha256_file(root / "home_copy.onnx")))
    (root / "ecology.toml").write_text(manifest_to_toml(replace(m, models=m.models + (copy,))))
    with edge_eco.open(root) as eco:
        r = measure(eco, clinc_test, limit=60, seed=3)
        again = measure(eco, clinc_test, limit=60, seed=3)
    assert r == again  # seeded
    assert r["texts"] == 60 * (1 + len(KINDS)) and len(r["pairs"]) == 12 * 11 // 2
    assert [(p["a"], p["b"]) for p in r["redundant"]] == [("home", "home_copy")]
    for n in r["niches"].values():
        assert 0 <= n["ecology_acc"] <= 1 and 0 <= n["oracle_acc"] <= 1
        assert abs(n["gap"] - (n["oracle_acc"] - n["ecology_acc"])) < 1e-12
    assert sum(v["unsolved"] for v in r["perturbations"].values()) == len(r["unsolved"])
    assert sum(v["n"] for v in r["perturbations"].values()) == r["texts"]


def test_cli_diversity_prints_tables(capsys):
    data = CLINC  # $EDGE_ECO_DATA, else ../shared/data (conftest)
    assert cli(["diversity", str(ROOT / "models" / "clinc150"), "--requests", str(data), "--split", "test",
                "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "oracle gap per niche" in out and "redundant pairs: 0" in out and "no local model solves" in out


def test_eval_without_a_niche_field_takes_each_rows_niche_from_the_bundle(tmp_path):
    """Found by a tester: without --niche-field every row was under "(none)". The label -> niche map is the
    one `edge-eco diversity` uses (a specialist's domain, else its id; the reject label is its own niche)."""
    import json

    from conftest import make_fake_ecology

    eco = make_fake_ecology(tmp_path / "eco")
    assert read_bundle(eco)[1].label_niches() == {"balance": "money", "transfer": "money", "book_flight": "travel",
                                                  "alarm": "travel", "oos": "oos"}
    rows = [("what is my account balance", "balance"), ("transfer money to savings", "transfer"),
            ("book a flight to paris", "book_flight"), ("set an alarm for six", "alarm"),
            ("tell me a joke about the weather", "oos"), ("what is the weather", "weather")]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    assert cli(["eval", str(eco), "--requests", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "e.json")]) == 0
    by_niche = json.loads((tmp_path / "e.json").read_text())["eval"]["by_niche_local"]
    assert {k: v["requests"] for k, v in by_niche.items()} == {"(none)": 1, "money": 2, "oos": 1, "travel": 2}
    assert by_niche["money"]["accuracy"] == 1.0 and by_niche["(none)"]["accuracy"] == 0.0

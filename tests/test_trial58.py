"""Defects a fresh-clone trial of ``edge-eco build`` / ``assign`` / ``run --plan`` found (issue 58)."""

from __future__ import annotations

import dataclasses

import pytest

from edge_eco import cli
from edge_eco.build.outdir import clear_out
from edge_eco.plan import open_with_plan, parse_plan, plan_to_toml, read_plan

from conftest import DATA, MODELS
from edge_eco.errors import BuildError


def test_out_refuses_a_folder_of_user_files_and_clears_only_what_a_build_wrote(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.md").write_text("keep me")
    with pytest.raises(BuildError, match="not an edge_eco bundle"):
        clear_out(user)
    assert (user / "notes.md").read_text() == "keep me"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "ecology.toml").write_text('name = "x"\n[[models]]\nid = "a"\npath = "a.onnx"\n'
                                         '[router]\npath = "router.bin"\n[[files]]\npath = "a.onnx.data"\n')
    for name in ("a.onnx", "a.onnx.data", "router.bin", "build.json", "MODEL_CARD.md", "mine.json", "other.onnx"):
        (bundle / name).write_text("x")
    clear_out(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["mine.json", "other.onnx"]
    clear_out(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir()
    clear_out(tmp_path / "new" / "deep")  # an empty folder is fine


def test_an_all_excluded_plan_opens_and_answers_unavailable_and_feasibility_round_trips(fake_ecology):
    from test_profile_plan import _fake_plan
    plan = _fake_plan(fake_ecology, {"money": "excluded", "travel": "excluded", "generalist": "excluded"})
    with open_with_plan(fake_ecology, plan) as eco:  # was: ValueError max() arg is an empty sequence
        a = eco.answer("book a flight to paris")
        assert (a.label, a.confidence, a.path) == ("oos", 0.0, "unavailable")
    bad = dataclasses.replace(plan, feasible=False)
    text = plan_to_toml(bad)
    assert "feasible = false" in text and parse_plan(text).feasible is False
    assert parse_plan(text.replace("feasible = false\n", "")).feasible is True  # plans written before the field


@pytest.mark.skipif(not (DATA / "sib200").is_dir(), reason="SIB-200 not found")
def test_assign_plans_all_local_for_a_remote_forbidding_ecology_and_exits_3_when_infeasible(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    base = ["assign", str(MODELS / "sib200"), "--requests", str(DATA / "sib200"), "--limit", "40", "--out", str(plan)]
    assert cli.main(base + ["--platform", "rpi-zero-2w"]) == 0  # was: "no remote generalist bundle at .../generalist"
    assert "forbids the remote: an all-local plan" in capsys.readouterr().err
    assert read_plan(plan).remote_policy == "forbidden" and read_plan(plan).feasible
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\nmemory_budget_bytes = 1000\nlatency_budget_ms = 0.001\nnetwork = "offline"\n')
    assert cli.main(base + ["--platform", str(tiny)]) == 3
    assert "INFEASIBLE" in capsys.readouterr().err and read_plan(plan).feasible is False
    assert cli.main(["run", str(MODELS / "sib200"), "--plan", str(plan), "--requests", str(DATA / "sib200"),
                     "--limit", "5"]) == 0
    assert "is infeasible" in capsys.readouterr().err


def test_recipe_checks_delimiter_data_fields_and_group_ids():
    from edge_eco.build.recipe import parse_recipe
    from edge_eco.errors import RecipeError
    from test_build import RECIPE
    parse_recipe(RECIPE)
    with pytest.raises(RecipeError, match="data.delimiter: one character"):  # was: a raw TypeError
        parse_recipe(RECIPE.replace('format = "jsonl"', 'format = "csv"\ndelimiter = "ab"'))
    with pytest.raises(RecipeError, match=r"data: unknown field\(s\) \['text_feild'\]"):  # was: ignored
        parse_recipe(RECIPE.replace('format = "jsonl"', 'format = "jsonl"\ntext_feild = "q"'))
    with pytest.raises(RecipeError, match="cannot name a model"):
        parse_recipe(RECIPE.replace("[specialists]\n", '[specialists]\ngroups = { "../x" = ["a"] }\n'))
    with pytest.raises(RecipeError, match="non-empty list"):
        parse_recipe(RECIPE.replace("[specialists]\n", '[specialists]\ngroups = { g = [] }\n'))


def _dataset(train, val):
    from edge_eco.build.data import Dataset, Row
    rows = lambda niches, split: tuple(Row(f"t{i}", "a", n, split, f"f:{i}") for i, n in enumerate(niches))  # noqa
    return Dataset(rows(train, "train"), rows(val, "val"), rows(val, "test"), "0" * 64, (), ())


def test_niches_that_cannot_name_files_or_lack_val_rows_fail_before_training(tmp_path):
    from edge_eco.build.pipeline import population
    from edge_eco.build.recipe import parse_recipe
    from edge_eco.errors import DataError
    from test_build import RECIPE, _prepare, _rows
    recipe = parse_recipe(RECIPE)
    assert population(recipe, _dataset(["x", "y"], ["x", "y"])).specialists == (("x", ("x",)), ("y", ("y",)))
    with pytest.raises(BuildError, match="cannot name a model file"):  # was: a crash after training
        population(recipe, _dataset(["a/b", "..", "y"], ["a/b", "..", "y"]))
    with pytest.raises(BuildError, match=r"\['y'\] have no validation rows"):  # was: a TypeError after training
        population(recipe, _dataset(["x", "y"], ["x"]))
    rows = [{"text": f"pay {i}", "label": "a", "domain": 7 if i == 3 else "money"} for i in range(12)]
    _rows(tmp_path, rows)
    with pytest.raises(DataError, match="niche field 'domain' not a string"):  # was: str(7) used as a niche
        _prepare(tmp_path, RECIPE.replace('niche_map = "domains.json"\n', ""))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_data_with_a_bom_and_unicode_line_separators_inside_strings_loads(tmp_path, fmt):
    import json

    from edge_eco.build.data import load_rows
    from edge_eco.build.recipe import parse_recipe
    from edge_eco.errors import DataError
    from test_build import RECIPE
    texts = [f"pay\u2028bill\u0085 {i}" for i in range(4)]
    if fmt == "jsonl":
        body = "".join(json.dumps({"text": t, "label": "a"}, ensure_ascii=False) + "\n" for t in texts)
    else:
        body = "text,label\r\n" + "".join(f'"{t}",a\r\n' for t in texts)
    (tmp_path / f"rows.{fmt}").write_text("\ufeff" + body, encoding="utf-8", newline="")
    recipe = RECIPE.replace('format = "jsonl"', f'format = "{fmt}"').replace("rows.jsonl", f"rows.{fmt}")
    recipe = recipe.replace('niche_field = "domain"\nniche_map = "domains.json"\n', "")
    rows, _, _ = load_rows(tmp_path, parse_recipe(recipe).data)
    assert [r.text for r in rows] == texts and {r.label for r in rows} == {"a"}
    if fmt == "csv":
        (tmp_path / "rows.csv").write_text("query,intent\nx,a\n")
        with pytest.raises(DataError, match=r"no column\(s\) \['text', 'label'\]; the header has \['query', 'intent'\]"):
            load_rows(tmp_path, parse_recipe(recipe).data)


def test_recipe_data_mismatches_are_found_before_training(tmp_path):
    import dataclasses as dc

    from edge_eco.build.data import Row
    from edge_eco.build.precheck import check_before_training
    from edge_eco.build.recipe import parse_recipe
    from test_build import RECIPE
    data = _dataset(["x", "y"], ["x", "y"])
    recipe = parse_recipe(RECIPE)
    check_before_training(recipe, data)
    long = dc.replace(data, test=data.test + (Row("z" * 20000, "a", "x", "test", "f:9"),))
    with pytest.raises(BuildError, match="exceed the runtime's request limit of 16384 bytes"):
        check_before_training(recipe, long)
    bad = parse_recipe(RECIPE.replace("[policy]", '[remote]\nbundle = "nowhere"\n[policy]')
                       .replace("[specialists]\n", '[specialists]\ndecline_label = "a"\n')
                       .replace('seed = 3\n', 'seed = 3\nbudget_bytes = 100\n'), tmp_path)
    with pytest.raises(BuildError, match=r"(?s)nowhere is not an edge_eco bundle.*'a' is also a label.*below the"):
        check_before_training(bad, data)


def test_external_data_files_get_the_umask_mode_like_other_files(tmp_path):
    import os

    import numpy as np

    from edge_eco.build.export import write_onnx
    old = os.umask(0o022)
    try:
        files = write_onnx(np.ones((2048, 3), np.float32), np.zeros(3, np.float32), tmp_path, "m")
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    modes = {f: (tmp_path / f).stat().st_mode & 0o777 for f in files + ["plain"]}
    assert modes == {"m.onnx": 0o644, "m.onnx.data": 0o644, "plain": 0o644}  # .data was 0600


def test_labels_of_mixed_types_are_a_data_problem(tmp_path):
    from edge_eco.errors import DataError
    from test_build import RECIPE, _prepare, _rows
    rows = [{"text": f"pay {i}", "label": 1 if i < 2 else "1"} for i in range(12)]
    _rows(tmp_path, rows)
    with pytest.raises(DataError, match=r"labels of mixed types \(2 numbers, 10 strings\); the numbers: 2"):
        _prepare(tmp_path, RECIPE.replace('niche_map = "domains.json"\n', ""))


def test_eval_requests_files_say_what_is_wrong(tmp_path):
    import json

    from edge_eco.errors import RequestError
    from edge_eco.evaljob import load_labelled
    doc = tmp_path / "data_full.json"
    doc.write_text(json.dumps({"train": [["hi", "greet"]], "test": [["yo", "greet"]]}, indent=1))
    with pytest.raises(RequestError, match=r"one JSON document with keys \['test', 'train'\].*--split"):
        load_labelled(doc)
    rows = tmp_path / "r.jsonl"
    rows.write_text("\ufeff" + json.dumps({"text": "a\u2028b", "label": "x"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert [(e.text, e.label) for e in load_labelled(rows)] == [("a\u2028b", "x")]
    with pytest.raises(RequestError, match=r"no row has the niche field 'domian' \(the first row has \['label', 'text'\]\)"):
        load_labelled(rows, niche_field="domian")


def test_plans_and_profiles_refuse_unknown_fields_negative_values_and_another_version(fake_ecology):
    from edge_eco.bundle import read_bundle
    from edge_eco.errors import ManifestError
    from edge_eco.plan import apply_plan
    from test_profile_plan import _fake_plan
    plan = _fake_plan(fake_ecology, {"money": "pinned", "travel": "on_demand", "generalist": "on_demand"})
    text = plan_to_toml(plan)
    with pytest.raises(ManifestError, match=r"unknown field\(s\) \['foo'\]"):
        parse_plan(text.replace("schema = 1\n", "schema = 1\nfoo = 2\n"))
    with pytest.raises(ManifestError, match=r"negative or non-finite value\(s\) \['\w+\.load_ms'\]"):
        parse_plan(text.replace("load_ms = 0.1", "load_ms = -4", 1))
    _, m = read_bundle(fake_ecology)
    with pytest.raises(ManifestError, match="run `edge-eco assign` again"):
        apply_plan(m, dataclasses.replace(plan, ecology_version="9"))
    from edge_eco.profile import parse_profile
    prof = ('schema = 1\n[device]\ncpu_model = "x"\ncores = 2\nmemory_total_bytes = 10\nmemory_available_bytes = 5\n'
            '[ecology]\nname = "fake"\nversion = "1"\nrepeats = 1\nruns = 1\n[[models]]\nid = "money"\n'
            'load_ms = LOAD\np50_us = 1.0\np95_us = 2.0\np99_us = 3.0\nanon_bytes = 1\nfile_bytes = 1\n')
    from edge_eco.profile import PROFILE_SCHEMA
    prof = prof.replace("schema = 1", f"schema = {PROFILE_SCHEMA}")
    assert parse_profile(prof.replace("LOAD", "1.5")).models[0].load_ms == 1.5
    with pytest.raises(ManifestError, match=r"negative or non-finite measurement\(s\) \['money.load_ms'\]"):
        parse_profile(prof.replace("LOAD", "-4.0"))


@pytest.mark.parametrize("body, match", [
    ('text,label\n"pay,a\nmove,b\n', r"not valid CSV .*a quoted field is never closed"),
    ("text,label\npay,a\nmove\nbook,c,extra\n", r"2 row\(s\) with a different number of fields than the header "
                                                 r"\(2\), first at rows.csv:3, rows.csv:4")])
def test_malformed_csv_is_named(tmp_path, body, match):  # were: "missing label" at the last line
    from edge_eco.build.data import load_rows
    from edge_eco.build.recipe import parse_recipe
    from edge_eco.errors import DataError
    from test_build import RECIPE
    (tmp_path / "rows.csv").write_text(body)
    recipe = RECIPE.replace('format = "jsonl"', 'format = "csv"').replace("rows.jsonl", "rows.csv")
    with pytest.raises(DataError, match=match):
        load_rows(tmp_path, parse_recipe(recipe.replace('niche_field = "domain"\nniche_map = "domains.json"\n',
                                                        "")).data)

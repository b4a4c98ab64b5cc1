"""Every TOML file is read through edge_eco.tomlread: one nested too deeply for tomllib's recursion
is refused as malformed by its own loader's error, naming the file (a trial got a RecursionError
traceback, rc 1, from `edge-eco info`, `assign --platform` and `run --plan` on a file that began
``a = [[[...]]]`` 900 deep)."""

from __future__ import annotations

import json

import pytest

from edge_eco import tomlread
from edge_eco.build.outdir import clear_out
from edge_eco.build.recipe import parse_recipe
from edge_eco.cli import main
from edge_eco.errors import BuildError, ManifestError, RecipeError
from edge_eco.manifest import parse_manifest
from edge_eco.plan import parse_plan, plan_to_toml
from edge_eco.platform import parse_platform
from edge_eco.profile import parse_profile
from edge_eco.signing import load_trust

from conftest import MODELS

DEEP_ARRAY = "a = " + "[" * 900 + "]" * 900 + "\n"
DEEP_TABLE = "a = " + "{x = " * 900 + "1" + "}" * 900 + "\n"
NESTED = "arrays or tables nested too deeply to parse"


@pytest.mark.parametrize("text", [DEEP_ARRAY, DEEP_TABLE])
def test_deep_nesting_is_a_decode_error_and_shallow_nesting_parses(text):
    with pytest.raises(tomlread.TOMLDecodeError, match=NESTED):
        tomlread.loads(text)
    assert tomlread.loads("a = " + "[" * 50 + "]" * 50 + "\n")["a"]


@pytest.mark.parametrize("parse, error, message", [
    (parse_manifest, ManifestError, f"ecology.toml is not valid TOML: {NESTED}"),
    (lambda t: parse_platform(t, "deep.toml"), ManifestError, f"deep.toml: not valid TOML: {NESTED}"),
    (lambda t: parse_plan(t, "deep.toml"), ManifestError, f"deep.toml: not valid TOML: {NESTED}"),
    (lambda t: parse_profile(t, "deep.toml"), ManifestError, f"deep.toml: not valid TOML: {NESTED}"),
    (parse_recipe, RecipeError, f"recipe is not valid TOML: {NESTED}"),
])
def test_each_loader_refuses_a_deep_file_with_its_own_error(parse, error, message):
    with pytest.raises(error) as err:
        parse(DEEP_ARRAY + 'name = "x"\n')
    assert str(err.value) == message


def test_a_deep_trust_file_and_build_output_manifest_are_refused(tmp_path):
    trust = tmp_path / "trust.toml"
    trust.write_text(DEEP_ARRAY)
    with pytest.raises(ManifestError) as err:
        load_trust(trust)
    assert str(err.value) == f"trust file {trust}: not valid TOML: {NESTED}"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ecology.toml").write_text(DEEP_ARRAY)
    with pytest.raises(BuildError, match=f"its ecology.toml cannot be read \\({NESTED}\\)"):
        clear_out(tmp_path / "out")


def _one_line_error(capsys, verb: str, path) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"edge-eco {verb}: error: {path}: ") and err.endswith(NESTED), err


def test_info_refuses_a_deeply_nested_manifest(fake_ecology, capsys):
    path = fake_ecology / "ecology.toml"
    path.write_text(DEEP_ARRAY + path.read_text())
    assert main(["info", str(fake_ecology)]) == 2
    _one_line_error(capsys, "info", path)


def test_assign_refuses_a_deeply_nested_platform(fake_ecology, tmp_path, capsys):
    deep = tmp_path / "deep.toml"
    deep.write_text(DEEP_ARRAY + (MODELS.parent / "platforms" / "dev-x86-2core.toml").read_text())
    assert main(["assign", str(fake_ecology), "--platform", str(deep)]) == 2
    _one_line_error(capsys, "assign", deep)


def test_run_refuses_a_deeply_nested_plan(fake_ecology, tmp_path, capsys):
    from test_profile_plan import _fake_plan
    deep = tmp_path / "deep.toml"
    plan = _fake_plan(fake_ecology, {"money": "pinned", "travel": "on_demand", "generalist": "on_demand"})
    deep.write_text(DEEP_ARRAY + plan_to_toml(plan))
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"text": "what is my account balance", "label": "balance"}) + "\n")
    assert main(["run", str(fake_ecology), "--requests", str(requests), "--plan", str(deep)]) == 2
    _one_line_error(capsys, "run", deep)

"""`edge-eco profile` and `edge-eco assign` through the CLI entry point (real models, a short replay)."""

from __future__ import annotations

import tomllib

import pytest

from edge_eco import cli
from edge_eco.plan import read_plan
from edge_eco.profile import read_profile

from conftest import CLINC, DATA, MODELS


def test_profile_then_assign_with_plot(tmp_path, capsys):
    device = tmp_path / "device.toml"
    assert cli.main(["profile", str(MODELS / "clinc150"), "--out", str(device), "--requests", str(CLINC),
                     "--repeats", "1", "--runs", "10"]) == 0
    out = capsys.readouterr()
    assert "profile written" in out.out and "11/11" in out.err  # the progress bar reached the end
    assert read_profile(device).ecology == "clinc150"
    plan, png, replay = tmp_path / "plan.toml", tmp_path / "p.png", tmp_path / "replay.json"
    args = ["assign", str(MODELS / "clinc150"), "--platform", "embedded-64mb", "--profile", str(device),
            "--requests", str(CLINC), "--limit", "150", "--remote-bundle", str(MODELS / "minilm"),
            "--out", str(plan), "--plot", str(png), "--replay", str(replay)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert f"expected on 150 requests of {CLINC} [val]: accuracy" in text and "x86-laptop" in text
    p = read_plan(plan)
    assert p.platform == "embedded-64mb" and p.memory_budget_bytes == 6 << 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(args[:-6] + ["--replay", str(replay)]) == 0  # from the saved replay: same plan
    assert capsys.readouterr().out.splitlines()[:13] == text.splitlines()[:13]
    assert tomllib.loads(plan.read_text())["expected"]["accuracy"] > 0


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    manifest = MODELS / "clinc150" / "ecology.toml"
    assert cli.main(["profile", str(MODELS / "clinc150"), "--out", str(manifest)]) == 2
    assert "never rewritten" in capsys.readouterr().err
    assert cli.main(["assign", str(MODELS / "clinc150"), "--platform", "toaster"]) == 2
    assert "no such file or preset" in capsys.readouterr().err
    assert cli.main(["assign", str(MODELS / "clinc150"), "--platform", "rpi4-2gb", "--niches", "cooking"]) == 2
    assert "not niches" in capsys.readouterr().err
    assert cli.main(["assign", str(MODELS / "clinc150"), "--platform", "rpi4-2gb", "--plot", "x.jpg"]) == 2
    assert "PNG" in capsys.readouterr().err
    bad = tmp_path / "plan.toml"
    bad.write_text("schema = 1\n")
    assert cli.main(["run", str(MODELS / "clinc150"), "--plan", str(bad), "--requests", str(CLINC),
                     "--split", "val"]) == 2
    assert "missing or malformed" in capsys.readouterr().err


def test_an_existing_replay_is_used_without_reading_the_data_set(tmp_path, capsys):
    """With --replay FILE present, assign reads no data set (a missing one is no error); without it, it does."""
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
    replay, nowhere = tmp_path / "replay.json", tmp_path / "no-data"
    args = ["assign", str(MODELS / "har"), "--platform", "embedded-64mb"]
    assert cli.main(args + ["--data", str(DATA), "--replay", str(replay)]) == 0
    first = capsys.readouterr().out
    assert cli.main(args + ["--data", str(nowhere), "--replay", str(replay)]) == 0
    assert capsys.readouterr().out.splitlines()[:6] == first.splitlines()[:6]  # same decisions
    assert cli.main(args + ["--data", str(nowhere), "--replay", str(tmp_path / "new.json")]) == 2
    assert str(nowhere) in capsys.readouterr().err

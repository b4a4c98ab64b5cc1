"""`edge-eco population ...`: clear errors (exit 2) for bad requests, readable tables."""

from __future__ import annotations

from edge_eco.cli import main as cli


def test_errors_name_the_problem(fake_ecology, tmp_path, capsys):
    eco = str(fake_ecology)
    assert cli(["population", "approve", eco, "7"]) == 2
    assert "no proposal 7" in capsys.readouterr().err
    assert cli(["population", "rollback", eco, "money"]) == 2
    assert "no archived champion of 'money'" in capsys.readouterr().err
    assert cli(["population", "rollback", eco, "nobody"]) == 2
    assert "no model with id 'nobody'" in capsys.readouterr().err
    (tmp_path / "ch").mkdir()
    assert cli(["population", "challengers", eco, "--add", str(tmp_path / "ch")]) == 2
    assert "challenger.toml" in capsys.readouterr().err
    (tmp_path / "ch" / "challenger.toml").write_text('[model]\nid = "money"\n')
    assert cli(["population", "challengers", eco, "--add", str(tmp_path / "ch")]) == 2
    assert "missing required field" in capsys.readouterr().err
    assert cli(["population", "audit", eco]) == 0
    assert "(none)" in capsys.readouterr().out  # nothing was changed by the failed commands


def test_status_lists_the_population(fake_ecology, capsys):
    assert cli(["population", "status", str(fake_ecology)]) == 0
    out = capsys.readouterr().out
    for word in ("money", "travel", "generalist", "outcome memory: 0 decisions", "auto-apply ['reject']"):
        assert word in out

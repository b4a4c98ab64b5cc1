"""Archive eviction by behavioural diversity, with the real CLINC150 home versions (models/challengers)
scored against the champion on real validation queries."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

from edge_eco.archive_score import score_archive
from edge_eco.cli import main as cli
from edge_eco.errors import RequestError
from edge_eco.manifest import FileEntry, Governance, model_entry
from edge_eco.population import Population

from conftest import CLINC

ROOT = Path(__file__).resolve().parent.parent
CHALLENGERS = ROOT / "models" / "challengers"
_spec = importlib.util.spec_from_file_location("population_scenario", ROOT / "tools" / "population_scenario.py")
_scenario = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_scenario)


def archive_challenger(pop: Population, folder: str, *, was_champion: bool) -> None:
    spec = tomllib.loads((CHALLENGERS / folder / "challenger.toml").read_text())
    entry = model_entry(spec["model"])
    files = (entry.file,) + tuple(FileEntry(f["path"], f["sha256"]) for f in spec.get("files", []))
    pop.archive.put(CHALLENGERS / folder, entry, files, lineage=dict(spec["lineage"]), was_champion=was_champion)


def test_diversity_scores_real_versions_and_the_budget_evicts_the_least_diverse_first(tmp_path, capsys):
    # champion: home v0 (a tenth of the data); archived: v2 (train + val) and v3 (another tenth)
    root = _scenario.scenario_bundle(tmp_path / "b", Governance(archive_bytes=0))
    data = json.loads(CLINC.read_text())
    val = [tuple(x) for x in data["val"]]
    with Population(root) as pop:
        home = set(pop.manifest.model("home").labels)
        examples = [r for r in val if r[1] in home] + [r for r in val if r[1] not in home][:300]
        archive_challenger(pop, "home-2", was_champion=False)
        archive_challenger(pop, "home-3", was_champion=False)
        scores = {v: (d, n) for _, v, d, n in score_archive(pop, examples, limit=600, seed=0)}
        print("diversity against home v0:", scores)
        assert set(scores) == {"2", "3"} and scores["2"][1] == scores["3"][1] == 600
        # v2 is right on many home queries v0 gets wrong; v3 (as little data as v0) fails more like v0
        assert 0.15 < scores["2"][0] < 0.40 and 0.05 < scores["3"][0] < scores["2"][0]
        assert pop.archive.get("home", "3").diversity == pytest.approx(scores["3"][0])
        # one version's bytes over budget: the least diverse non-champion goes first, lineage stays
        size = pop.archive.get("home", "2").bytes
        pop.archive.budget_bytes = 2 * size - 1
        assert pop.archive.enforce_budget() == [("home", "3")]
        gone = pop.archive.get("home", "3")
        assert gone.evicted and gone.data_fingerprint and gone.parent == "home:2:0a0319bf738e"
        # a prior champion outranks any non-champion, however diverse
        pop.archive.budget_bytes = 0  # no bound while it is archived
        archive_challenger(pop, "home-0", was_champion=True)  # same content as the champion: not scored
        pop.archive.set_diversity("home", "0", 0.0)
        pop.archive.budget_bytes = 2 * size - 1
        assert pop.archive.enforce_budget() == [("home", "2")]
        assert [a.version for a in pop.archive.list("home") if not a.evicted] == ["0"]
        with pytest.raises(RequestError, match="no labelled requests"):
            score_archive(pop, [])


def test_cli_diversity_archive_stores_scores(tmp_path, capsys):
    root = _scenario.scenario_bundle(tmp_path / "b", Governance())
    with Population(root) as pop:
        archive_challenger(pop, "home-2", was_champion=False)
    capsys.readouterr()
    assert cli(["diversity", str(root), "--requests", str(CLINC), "--split", "val", "--limit", "150",
                "--archive"]) == 0
    out = capsys.readouterr().out
    assert "archived versions against their champion" in out
    with Population(root, readonly=True) as pop:
        d = pop.archive.get("home", "2").diversity
    assert d is not None and f"home        2        150       {d:.3f}" in out

"""End to end on CLINC150 with real models, the real store and real traffic: the controller
proposes a rollback of a promotion the traffic later shows was a mistake, and retires a
challenger that stays undecided past its time bound (tools/population_scenario.py --rollback-demo:
phases, traffic and policy are described there). The review clock is simulated (cool-down, time
bound); models, shadow, swaps, archive and audit are real."""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from pathlib import Path

import pytest

import edge_eco
from edge_eco.bundle import read_bundle, sha256_file
from edge_eco.cli import main as cli
from edge_eco.errors import StoreError
from edge_eco.population import Population

from conftest import CLINC

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("population_scenario", ROOT / "tools" / "population_scenario.py")
_scenario = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_scenario)


def spec(folder: str) -> dict:
    return tomllib.loads((ROOT / "models" / "challengers" / folder / "challenger.toml").read_text())["model"]


def test_controller_rolls_back_a_bad_promotion_and_retires_an_undecided_challenger(tmp_path, capsys):
    said: list[str] = []
    demo = _scenario.rollback_demo(tmp_path / "scenario", CLINC, say=said.append)
    root = demo["bundle"]
    text = "\n".join(said)
    print(text)
    kinds = [(kind, version, applied) for kind, version, applied, _ in demo["proposals"]]
    # promote and rollback wait for a person (policy); retire applies by policy; nothing was
    # proposed inside the cool-down although the evidence was already there
    assert kinds == [("promote", "3", False), ("rollback", "0", False), ("retire", "3", True)]
    promote, rollback, retire = (ev for _, _, _, ev in demo["proposals"])
    assert promote["challenger_only"] > promote["champion_only"] and promote["p_better"] < 0.01 / 5
    assert rollback["status"] == "watch" and rollback["n"] >= 200
    assert rollback["p_better"] < 0.01 / 5 or rollback["regressed"], rollback  # overall or a niche slice
    assert "in cool-down for" in text and "wait" in text
    assert retire["n"] < 200  # too few labelled pairs for the first look, a month after registration

    _, m = read_bundle(root)
    v0 = spec("home-0")
    assert (m.model("home").version, m.model("home").file.sha256) == ("0", v0["sha256"])
    with edge_eco.open(root) as eco:  # the restored champion serves
        a = eco.answer("add milk to my shopping list", local_only=True)
        assert a.provenance["models"]["home"] == f"0:{v0['sha256'][:12]}"

    with Population(root) as pop:
        audit = pop.audit()
        assert [(r[3], r[5], r[6], r[10]) for r in audit] == [
            ("register", "0", "3", "done"), ("promote", "0", "3", "done"), ("rollback", "3", "0", "done"),
            ("register", "0", "3", "done"), ("retire", "0", "3", "done")]
        assert audit[2][2] == "operator" and audit[4][2] == "controller"
        status = dict(((c.entry.version, st) for c, st, _ in pop.challengers(None)))
        assert status == {"0": "reinstated", "3": "retired"}
        assert not pop.challengers("watch")  # the model rolled back from is not watched: no flip-flop
        assert not (root / "population" / "staged" / "home-3").exists()  # retired: only the archive keeps it
        archived = pop.archive.get("home", "3")
        assert archived is not None and not archived.evicted and archived.was_champion
        # diversity: the error disagreement on the retired challenger's labelled pairs with v0
        assert archived.diversity is not None and 0.0 < archived.diversity < 0.5
        assert pop.archive.get("home", "0").diversity == pytest.approx(
            (promote["champion_only"] + promote["challenger_only"]) / promote["n"], abs=0.05)
        out = tmp_path / "restored"
        out.mkdir()
        restored = pop.archive.restore(out, "home", "3")  # nothing lost: the retired files come back
        assert sha256_file(out / restored.entry.file.path) == spec("home-3")["sha256"]
        applied = [p for p in pop.proposals() if p.kind == "rollback"][0]
        with pytest.raises(StoreError, match="is applied, not pending"):
            pop.approve(applied.id, who="t")
        with pytest.raises(StoreError, match="no proposal 99"):
            pop.approve(99, who="t")

    capsys.readouterr()
    assert cli(["population", "challengers", str(root), "--all"]) == 0
    assert cli(["population", "archive", str(root)]) == 0
    assert cli(["population", "status", str(root)]) == 0
    out = capsys.readouterr().out
    print(out)
    for word in ("reinstated", "retired", "retire after"):
        assert word in out


def test_a_stale_rollback_proposal_is_refused(tmp_path):
    """A rollback proposed against v3 cannot apply once a person has already rolled back by hand."""
    root = _scenario.scenario_bundle(tmp_path / "b", _scenario.DEMO_GOVERNANCE)
    with Population(root) as pop:
        pop.add_challenger(ROOT / "models" / "challengers" / "home-3", who="t")
        pid = pop.propose("home", "promote", "3", "test", {}, now_s=0.0)
        pop.approve(pid, who="t", now_s=1e12)
        assert [c.entry.version for c, _, _ in pop.challengers("watch")] == ["0"]
        rid = pop.propose("home", "rollback", "0", "test", {}, now_s=2e12)
        pop.rollback("home", who="person", why="by hand")
        with pytest.raises(StoreError, match="champion of 'home' is now v0, the proposal was made against v3"):
            pop.approve(rid, who="t", now_s=3e12)
        assert pop.manifest.model("home").version == "0" and not pop.challengers("watch")
        with pytest.raises(StoreError, match="not in shadow or watched"):
            pop.approve(pop.propose("home", "retire", "3", "test", {}, now_s=3e12), who="t", now_s=3e12)


def test_policy_names_the_kinds_that_apply_alone_and_refuses_unknown_ones():
    from edge_eco.errors import ManifestError
    from edge_eco.manifest import parse_manifest

    text = (ROOT / "models" / "clinc150" / "ecology.toml").read_text()
    g = parse_manifest(text + '\n[governance]\nauto_apply = ["rollback", "retire"]\nretire_after_s = 3600.0\n').governance
    assert g.auto_apply == ("rollback", "retire") and g.retire_after_s == 3600.0
    with pytest.raises(ManifestError, match=r"auto_apply: \['demote'\] not among \['promote', 'reject', 'rollback', "
                                            r"'retire'\]"):
        parse_manifest(text + '\n[governance]\nauto_apply = ["demote"]\n')
    with pytest.raises(ManifestError, match="retire_after_s"):
        parse_manifest(text + '\n[governance]\nretire_after_s = -1.0\n')


def test_a_watch_ends_by_retire_when_the_new_champion_holds_up(tmp_path):
    """home v2 (really better) replaces v0; v0 watches it; at the last look (one look of 100 pairs
    here) v0 has not been better, so the watch is retired into the archive and stops shadowing."""
    import json
    from dataclasses import replace

    gov = replace(_scenario.DEMO_GOVERNANCE, min_pairs=100, looks=1)
    root = _scenario.scenario_bundle(tmp_path / "b", gov)
    with Population(root) as pop:
        pop.add_challenger(ROOT / "models" / "challengers" / "home-2", who="t")
        pop.approve(pop.propose("home", "promote", "2", "test", {}, now_s=0.0), who="t", now_s=0.0)
    data = json.loads(CLINC.read_text())
    _scenario.traffic(root, [tuple(x) for x in data["test"]][:1500], seed=4)
    with Population(root) as pop:
        made = pop.review(now_s=10 ** 10)
        assert [(p.kind, p.version, applied) for p, applied in made] == [("retire", "0", True)]
        ev = made[0][0].evidence
        assert ev["status"] == "watch" and ev["n"] == 100 and ev["champion_only"] > ev["challenger_only"]
        assert pop.manifest.model("home").version == "2" and not pop.challengers("watch")
        a = pop.archive.get("home", "0")
        assert a.was_champion and not a.evicted and a.diversity is not None
        assert not (root / "population" / "staged" / "home-0").exists()
        assert [r[3] for r in pop.audit()][-1] == "retire"


def test_the_scenario_bundle_leaves_the_source_devices_population_state_behind(tmp_path):
    # A trial ran the README's Population snippet on models/clinc150 first; the scenario's copy then
    # started with that device's decisions and feedback.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "models" / "clinc150", src)
    (src / "population").mkdir()
    (src / "population" / "outcomes.db").write_bytes(b"another device's memory")
    out = _scenario.scenario_bundle(tmp_path / "scenario", source=src)
    assert not (out / "population").exists() and (out / "ecology.toml").is_file()

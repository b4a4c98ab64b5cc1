"""End to end on CLINC150 with real models and the real SQLite store: a better challenger is
promoted once enough labelled traffic has been seen, a worse one is rejected, a rollback restores
the previous champion, and the audit log shows all three.

The scenario's starting ecology is the shipped one whose ``home`` specialist is a first version
trained on a seeded tenth of the train split (about 10 queries per intent: models/challengers/
home-0, v0). Challengers: ``home`` v2, the same recipe on train + validation (120 per intent,
models/challengers/home-2), and ``home`` v3, on another seeded tenth (home-3). All three are
built by tools/train_challenger.py.
Traffic: the 5,500 CLINC150 test queries in a seeded order, answered locally, every answer
followed by ``eco.feedback`` with the true label.
"""

from __future__ import annotations

import importlib.util
import random
import tomllib
from pathlib import Path

import edge_eco
from edge_eco.bundle import read_bundle
from edge_eco.cli import main as cli
from edge_eco.manifest import Governance
from edge_eco.population import Population, rule_of
from edge_eco.promotion import decide

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("population_scenario", ROOT / "tools" / "population_scenario.py")
_scenario = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_scenario)
CHALLENGERS = ROOT / "models" / "challengers"
# The default promotion rule and policy; the shadow sees every routed request (the test has
# 5,500 requests, not a device's months of traffic).
GOVERNANCE = Governance(shadow_rate=1.0, shadow_cpu_share=1.0)


def model_id(folder: str) -> str:
    """The provenance id ("version:sha256[:12]") of a challenger folder's model."""
    spec = tomllib.loads((CHALLENGERS / folder / "challenger.toml").read_text())["model"]
    return f"{spec['version']}:{spec['sha256'][:12]}"


def scenario_bundle(tmp: Path, governance: Governance = GOVERNANCE) -> Path:
    """A copy of models/clinc150 whose ``home`` champion is the early version (home-0)."""
    return _scenario.scenario_bundle(tmp / "clinc150", governance)


def traffic(root: Path, requests: list[tuple[str, str]], seed: int) -> dict:
    """Answer ``requests`` (local only) with a recorder attached, feeding back every true label."""
    order = requests[:]
    random.Random(seed).shuffle(order)
    with edge_eco.open(root) as eco, Population(root) as pop:
        rec = pop.attach(eco, seed=seed)
        hashes = set()
        for text, label in order:
            a = eco.answer(text, local_only=True)
            eco.feedback(a.provenance["request_id"], label)
            hashes.add(a.provenance["models"].get("home"))
        rec.flush()
        counts = dict(rec.shadow.counts) if rec.shadow else {}
    return {"shadow": counts, "home_ids": hashes - {None}}


def test_promote_reject_rollback_with_audit(tmp_path, clinc_test, capsys):
    root = scenario_bundle(tmp_path)
    assert cli(["population", "challengers", str(root), "--add", str(CHALLENGERS / "home-2")]) == 0
    first = traffic(root, clinc_test, seed=1)
    assert first["shadow"]["run"] > 150 and first["shadow"]["skipped_budget"] == 0
    assert first["home_ids"] == {model_id("home-0")}

    with Population(root) as pop:  # the first look at which a controller reviewing often would promote
        ch = pop.challengers()[0][0]
        pairs, rule = pop.pairs(ch), rule_of(pop.manifest)
        looks = [rule.min_pairs << k for k in range(rule.looks) if rule.min_pairs << k <= len(pairs)]
        verdicts = {n: decide(pairs[:n], now_s=0, last_change_s=None, rule=rule) for n in looks}
        first_promote = min(n for n, v in verdicts.items() if v.action == "promote")
        print(f"\nlabelled pairs {len(pairs)}; first promoting look n={first_promote}: {verdicts[first_promote]}")
    assert cli(["population", "proposals", str(root), "--review"]) == 0
    print(capsys.readouterr().out)
    with Population(root) as pop:
        (prop,) = pop.proposals("pending")
        assert prop.kind == "promote" and prop.version == "2"
        ev = prop.evidence
        assert ev["n"] >= 200 and ev["challenger_only"] > ev["champion_only"] and ev["p_better"] < 0.01 / 5
        assert pop.manifest.model("home").version == "0"  # promotion waits for approval (policy)
    assert cli(["population", "approve", str(root), str(prop.id)]) == 0
    _, m = read_bundle(root)
    assert m.model("home").version == "2"
    with edge_eco.open(root) as eco:  # the new champion serves
        a = eco.answer("add milk to my shopping list", local_only=True)
        assert a.provenance["models"]["home"] == model_id("home-2") and a.label == "shopping_list_update"

    assert cli(["population", "challengers", str(root), "--add", str(CHALLENGERS / "home-3")]) == 0
    traffic(root, clinc_test, seed=2)
    with Population(root) as pop:
        made = pop.review()
        assert [(p.kind, p.version, applied) for p, applied in made] == [("reject", "3", True)]
        assert made[0][0].evidence["champion_only"] > made[0][0].evidence["challenger_only"]
        print("reject:", made[0][0].evidence, made[0][0].reason)
        assert pop.manifest.model("home").version == "2"

    assert cli(["population", "rollback", str(root), "home", "--why", "e2e test"]) == 0
    _, m = read_bundle(root)
    assert m.model("home").version == "0"
    with edge_eco.open(root) as eco:
        assert eco.answer("add milk to my shopping list", local_only=True).provenance["models"]["home"] \
            == model_id("home-0")
    capsys.readouterr()
    assert cli(["population", "audit", str(root)]) == 0
    log = capsys.readouterr().out
    print(log)
    with Population(root) as pop:
        actions = [(r[3], r[5], r[6]) for r in pop.audit()]
        assert actions == [("register", "0", "2"), ("promote", "0", "2"), ("register", "2", "3"),
                           ("reject", "2", "3"), ("rollback", "2", "0")]
        archived = {(a.version, a.was_champion) for a in pop.archive.list("home")}
        assert archived == {("0", True), ("2", True)}
        assert pop.archive.get("home", "2").parent == "home:" + model_id("home-0")
    for word in ("promote", "reject", "rollback"):
        assert word in log
    for command in ("status", "archive", "challengers"):
        assert cli(["population", command, str(root), *(["--all"] if command == "challengers" else [])]) == 0
    print(capsys.readouterr().out)

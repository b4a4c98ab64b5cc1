"""Make the README's governance scenario bundle: models/clinc150 with its ``home`` specialist
replaced by the early version home v0 (models/challengers/home-0). Used by tests/test_population_e2e.py.

    python tools/population_scenario.py --out build/scenario
    edge-eco population challengers build/scenario --add models/challengers/home-2
    # ... traffic with feedback (edge_eco.population.Population.attach), then
    edge-eco population proposals build/scenario --review

``--shadow-all`` sets ``shadow_rate = 1`` and ``shadow_cpu_share = 1`` (the e2e test's setting);
otherwise the [governance] defaults apply.

``--rollback-demo`` (used by tests/test_governance_rollback.py) runs the controller's rollback and
retire on that bundle with real traffic and prints the CLI tables. The traffic is CLINC150
queries that neither home v0 nor home v3 was trained on (the train rows outside both seeded
tenths, and the test split), with feedback, in three phases:

1. the home intents on which v3 beat v0 on the validation split (``A``), with a seeded sample
   of other requests: v3 is shadowed, the controller proposes ``promote``, a person approves;
   v0 now watches v3;
2. the traffic shifts to the other home intents (``B``): v0 is right where v3 is not; inside the
   cool-down the controller waits; after it, it proposes ``rollback`` and a person approves;
3. v3 is registered again and sees a little mixed traffic, too little to decide; past
   ``retire_after_s`` the controller retires it (applied by policy) into the archive.

The clock of the reviews is simulated (``now_s``: an hour for the cool-down, a month for the
time bound); everything else (models, store, shadow, swaps, archive) is real.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_eco.bundle import read_bundle  # noqa: E402
from edge_eco.manifest import FileEntry, Governance, model_entry  # noqa: E402
from edge_eco.tomlwrite import manifest_to_toml  # noqa: E402


def scenario_bundle(out: Path, governance: Governance | None = None, *, source: Path = ROOT / "models" / "clinc150",
                    early: Path = ROOT / "models" / "challengers" / "home-0") -> Path:
    """Copy ``source`` to ``out`` with ``home`` replaced by the challenger in ``early``; returns ``out``."""
    # the device's own population state (outcome memory, archive) stays behind: the scenario starts empty
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("population"))
    _, m = read_bundle(out)
    spec = tomllib.loads((early / "challenger.toml").read_text())
    entry = model_entry(spec["model"])
    for f in [entry.file.path] + [f["path"] for f in spec.get("files", [])]:
        shutil.copyfile(early / f, out / f)
    old = m.model("home")
    files = tuple(f for f in m.files if not f.path.startswith(old.file.path + ".")) + \
        tuple(FileEntry(f["path"], f["sha256"]) for f in spec.get("files", []))
    m = replace(m, models=tuple(entry if x.id == "home" else x for x in m.models), files=files,
                governance=governance or m.governance)
    (out / "ecology.toml").write_text(manifest_to_toml(m))
    for f in (old.file.path, old.file.path + ".data"):
        (out / f).unlink(missing_ok=True)
    read_bundle(out)  # verifies every file
    return out


# The rollback demo's policy: every routed request shadowed, a one-hour cool-down, retire applied
# by policy (promote and rollback wait for a person); the other thresholds are the defaults.
DEMO_GOVERNANCE = Governance(shadow_rate=1.0, shadow_cpu_share=1.0, cooldown_s=3600.0,
                             auto_apply=("reject", "retire"))
# the home intents on which v3 did not beat v0 on CLINC150's validation split (phase 2)
PHASE_B = ("calendar", "calendar_update", "order", "play_music", "smart_home")


def unseen_traffic(data: dict, home: set[str], seeds: tuple[int, ...] = (1, 2)) -> dict[str, list]:
    """Queries neither ``tiny`` model saw: train rows outside the tenths of ``seeds`` (the sampling of
    tools/train_challenger.py), and the test split. Returns {"A", "B", "other"} -> [(text, label)]."""
    train = [tuple(x) for x in data["train"] + data["oos_train"]]
    seen = set()
    for seed in seeds:
        rng = random.Random(seed)
        seen |= {i for i, _ in enumerate(train) if rng.random() < 0.10}
    rows = [r for i, r in enumerate(train) if i not in seen] + [tuple(x) for x in data["test"] + data["oos_test"]]
    out: dict[str, list] = {"A": [], "B": [], "other": []}
    for text, label in rows:
        out["B" if label in PHASE_B else "A" if label in home else "other"].append((text, label))
    return out


def traffic(root: Path, requests: list[tuple[str, str]], seed: int) -> dict:
    """Answer ``requests`` locally with a recorder attached, feeding back every true label."""
    import edge_eco
    from edge_eco.population import Population

    order = requests[:]
    random.Random(seed).shuffle(order)
    with edge_eco.open(root) as eco, Population(root) as pop:
        rec = pop.attach(eco, seed=seed)
        for text, label in order:
            a = eco.answer(text, local_only=True)
            eco.feedback(a.provenance["request_id"], label)
        rec.flush()
        return dict(rec.shadow.counts) if rec.shadow else {}


def rollback_demo(out: Path, data_file: Path, say=print) -> dict[str, Any]:
    """Run the three phases (module doc) on a new scenario bundle at ``out``; ``say`` gets the CLI text.

    Returns:
        {"proposals": [(kind, version, applied, evidence)], "bundle": out}.
    """
    from edge_eco.cli_population import audit, challengers, proposals
    from edge_eco.population import Population

    def cli(fn, **kw) -> None:
        say(fn(argparse.Namespace(ecology=str(out), trust=None, **kw), "demo"))

    root = scenario_bundle(out, DEMO_GOVERNANCE)
    data = json.loads(data_file.read_text())
    _, m = read_bundle(root)
    home = set(m.model("home").labels) - {m.model("home").decline_label}
    pool = unseen_traffic(data, home)
    rng = random.Random(7)
    made: list = []

    def review(now_s: float, label: str) -> None:
        with Population(root) as pop:
            got = pop.review(now_s=now_s, who="controller")
        say(f"\n$ edge-eco population proposals {out.name} --review    # {label}")
        say(f"controller review: {len(got)} new proposal(s), {sum(a for _, a in got)} applied by policy")
        made.extend((p.kind, p.version, applied, p.evidence) for p, applied in got)

    def approve(kind: str, now_s: float) -> None:
        with Population(root) as pop:
            (p,) = [p for p in pop.proposals("pending") if p.kind == kind]
            pop.approve(p.id, who="operator", now_s=now_s)
        say(f"\n$ edge-eco population approve {out.name} {p.id}\nproposal {p.id} applied: {kind} home v{p.version}")

    with Population(root) as pop:
        pop.add_challenger(_shown(CHALLENGERS / "home-3"), who="operator")
    say(f"phase 1: {len(pool['A'])} home queries of intents A + 500 others, v3 in shadow")
    traffic(root, pool["A"] + rng.sample(pool["other"], 500), seed=1)
    review(time.time(), "phase 1")
    cli(proposals, review=False, all=False)
    approve("promote", time.time())
    t_promote = time.time()
    say(f"\nphase 2: {len(pool['B'])} home queries of intents B {PHASE_B} + 500 others, v0 watches v3")
    traffic(root, pool["B"] + rng.sample(pool["other"], 500), seed=2)
    review(time.time(), "phase 2, inside the one-hour cool-down")
    cli(challengers, add=None, all=False)
    review(t_promote + 3600.0, "an hour after the promotion")
    cli(proposals, review=False, all=False)
    approve("rollback", t_promote + 3600.0)
    with Population(root) as pop:
        pop.add_challenger(_shown(CHALLENGERS / "home-3"), who="operator")
    say("\nphase 3: v3 registered again; 300 mixed queries (too few labelled pairs to decide)")
    traffic(root, rng.sample(pool["A"] + pool["B"] + pool["other"], 300), seed=3)
    review(time.time() + 31 * 86400.0, "a month later")
    cli(proposals, review=False, all=True)
    say(f"\n$ edge-eco population audit {out.name}")
    cli(audit)
    return {"proposals": made, "bundle": root}


CHALLENGERS = ROOT / "models" / "challengers"


def _shown(path: Path) -> Path:
    """``path`` relative to the working folder when it is under it (as the audit log will show it)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new bundle folder (must not exist)")
    ap.add_argument("--shadow-all", action="store_true", help="shadow every routed request, no CPU budget")
    ap.add_argument("--rollback-demo", action="store_true", help="run the rollback and retire phases (doc above)")
    ap.add_argument("--data", default=None, help="data folder (default: $EDGE_ECO_DATA or ../shared/data)")
    args = ap.parse_args()
    if args.rollback_demo:
        from edge_eco.datasets import data_root, fetch_clinc150

        folder = fetch_clinc150(data_root(args.data, os.environ.get("EDGE_ECO_DATA")))
        rollback_demo(Path(args.out), folder / "data_full.json")
        return 0
    gov = Governance(shadow_rate=1.0, shadow_cpu_share=1.0) if args.shadow_all else None
    print(f"wrote {scenario_bundle(Path(args.out), gov)} (home v0 champion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

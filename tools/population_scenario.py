"""Make the README's governance scenario bundle: models/clinc150 with its ``home`` specialist
replaced by the early version home v0 (models/challengers/home-0). Used by tests/test_population_e2e.py.

    python tools/population_scenario.py --out build/scenario
    edge-eco population challengers build/scenario --add models/challengers/home-2
    # ... traffic with feedback (edge_eco.population.Population.attach), then
    edge-eco population proposals build/scenario --review

``--shadow-all`` sets ``shadow_rate = 1`` and ``shadow_cpu_share = 1`` (the e2e test's setting);
otherwise the [governance] defaults apply.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_eco.bundle import read_bundle  # noqa: E402
from edge_eco.manifest import FileEntry, Governance, model_entry  # noqa: E402
from edge_eco.tomlwrite import manifest_to_toml  # noqa: E402


def scenario_bundle(out: Path, governance: Governance | None = None, *, source: Path = ROOT / "models" / "clinc150",
                    early: Path = ROOT / "models" / "challengers" / "home-0") -> Path:
    """Copy ``source`` to ``out`` with ``home`` replaced by the challenger in ``early``; returns ``out``."""
    shutil.copytree(source, out)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new bundle folder (must not exist)")
    ap.add_argument("--shadow-all", action="store_true", help="shadow every routed request, no CPU budget")
    args = ap.parse_args()
    gov = Governance(shadow_rate=1.0, shadow_cpu_share=1.0) if args.shadow_all else None
    print(f"wrote {scenario_bundle(Path(args.out), gov)} (home v0 champion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

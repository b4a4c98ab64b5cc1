"""Warm p99 of HAR answers while *another process* loads and closes CLINC150 specialists (one
every 10 ms plus the load, as `edge-eco bench residency`'s loading thread does), against
isolated p99 in interleaved rounds: what the loads' own work (CPU, caches, page cache) costs a
warm request, without the interpreter-lock hand-offs of a second thread in the same process.

    .venv/bin/python tools/warm_beside_process.py [--rounds 8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge_eco.ecology as ecology  # noqa: E402
from edge_eco.har_data import load_har  # noqa: E402

LOADER = r"""
import sys, time
import edge_eco.ecology as ecology
with ecology.open(sys.argv[1], budget_bytes=0) as eco:
    ids = [m.id for m in eco.manifest.models if m.role == "specialist"]
    print("ready", flush=True)
    i = 0
    while True:
        eco._load(ids[i % len(ids)]).close()
        i += 1
        time.sleep(0.01)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--round-s", type=float, default=1.0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    window = load_har(Path(args.data) / "stm32_har", "test")[0].vector

    with ecology.open(ROOT / "models" / "har", budget_bytes=0) as eco:
        def p99(seconds: float) -> float:
            out, until = [], time.perf_counter() + seconds
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                eco.answer(window)
                out.append((time.perf_counter() - t0) * 1e3)
            return float(np.percentile(out, 99))

        p99(0.5)
        ratios, isolated = [], []
        for _ in range(args.rounds):
            isolated.append(p99(args.round_s))
            proc = subprocess.Popen([sys.executable, "-c", LOADER, str(ROOT / "models" / "clinc150")],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            try:
                if proc.stdout.readline().strip() != "ready":
                    print("the loading process did not start", file=sys.stderr)
                    return 1
                ratios.append(p99(args.round_s) / isolated[-1])
            finally:
                proc.kill()
                proc.wait()
    print(f"warm p99 {statistics.median(isolated):.4f} ms isolated; loads in another process: "
          f"ratio {statistics.median(ratios):.3f} (median of {args.rounds} rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

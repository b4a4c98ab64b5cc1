"""Time a cold load (and close) of CLINC150 specialists, stage by stage, while another thread of
the same process keeps the interpreter busy: what the README's warm-p99 row explains.

    .venv/bin/python tools/load_beside.py [--beside answer|busy|sleep] [--loads 30]

``answer``: the other thread answers one HAR window after another (the bench's warm loop);
``busy``: it runs pure Python; ``sleep``: it sleeps (no contention, the baseline). Prints each
stage's median and max in ms: the integrity check (``before_load``), the preflight, the session
build, the probe run, the release, and the whole load+close.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge_eco.backends as backends  # noqa: E402
import edge_eco.ecology as ecology  # noqa: E402
import edge_eco.modelload as modelload  # noqa: E402
from edge_eco.backends import _ort_capi  # noqa: E402
from edge_eco.har_data import load_har  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beside", choices=("answer", "busy", "sleep"), default="busy")
    ap.add_argument("--loads", type=int, default=30)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
        return wrapper

    window = load_har(Path(args.data) / "stm32_har", "test")[0].vector
    with ecology.open(ROOT / "models" / "clinc150", budget_bytes=0) as ceco, \
            ecology.open(ROOT / "models" / "har", budget_bytes=0) as heco:
        ids = [m.id for m in ceco.manifest.models if m.role == "specialist"]
        calls = _ort_capi.runtime().calls
        if calls is None:
            print("the C API binding is not available here", file=sys.stderr)
            return 2
        backends.preflight = timed("preflight", backends.preflight)
        modelload.probe = timed("probe run", modelload.probe)
        calls.open_session = timed("session build", calls.open_session)
        calls.release_session = timed("release", calls.release_session)
        ceco.before_load = timed("integrity check", ceco.before_load)
        heco.answer(window)
        stop, done = threading.Event(), [0]

        def other() -> None:
            x = 0
            while not stop.is_set():
                if args.beside == "answer":
                    heco.answer(window)
                elif args.beside == "busy":
                    for _ in range(1000):
                        x += 1
                else:
                    time.sleep(0.001)
                done[0] += 1

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        for i in range(args.loads):
            t = time.perf_counter()
            ceco._load(ids[i % len(ids)]).close()
            times.setdefault("load+close", []).append((time.perf_counter() - t) * 1e3)
            time.sleep(0.01)
        stop.set()
        thread.join()
    print(f"beside: {args.beside} (switch interval {sys.getswitchinterval() * 1e3:g} ms)")
    for name, v in times.items():
        print(f"  {name:16s} n={len(v):3d}  median {statistics.median(v):8.3f} ms  max {max(v):8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures of the outcome memory and shadow evaluation, each against a baseline of the same run.

    python tools/bench_population.py [--data ../shared/data] [--requests 2000] [--rows 20000]

0. The call ``answer()`` makes on the request thread (``Recorder.record``: a closure on a queue).
1. Store write throughput: outcome rows (real provenance of CLINC150 answers) submitted as fast
   as possible, then flushed; rows per second with the default durability (synchronous=NORMAL)
   and with ``power_safe=True`` (fsync per batch).
2. Request-path overhead: the same CLINC150 test queries answered (local only) with no recorder,
   with a recorder, and with a recorder plus a ``home`` challenger in shadow on 10 % of traffic
   (5 % CPU budget); the three configurations alternate in blocks so drift hits all alike.
   Printed: p50 and mean per-request wall time, and their ratio to no recording.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge_eco  # noqa: E402
from edge_eco.bundle import read_bundle  # noqa: E402
from edge_eco.datasets import data_root  # noqa: E402
from edge_eco.outcomes import Recorder  # noqa: E402
from edge_eco.population import Population  # noqa: E402
from edge_eco.store import Store  # noqa: E402
from edge_eco.tomlwrite import manifest_to_toml  # noqa: E402


def throughput(tmp: Path, answers: list, rows: int, power_safe: bool) -> float:
    store = Store(tmp / f"tp-{power_safe}.db", power_safe=power_safe, queue_rows=rows + 10)
    rec = Recorder(store)
    t = time.perf_counter()
    for i in range(rows):
        a, text = answers[i % len(answers)]
        a = replace(a, provenance={**a.provenance, "request_id": f"r{i}"})
        rec.record(a, text)
    store.flush(timeout_s=600)
    dt = time.perf_counter() - t
    assert store.stats()["written"] == rows and store.stats()["dropped"] == 0
    store.close()
    return rows / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--blocks", type=int, default=10)
    args = ap.parse_args(argv)
    data = json.loads((data_root(args.data, os.environ.get("EDGE_ECO_DATA")) / "clinc150" / "data_full.json")
                      .read_text())
    texts = [t for t, _ in data["test"] + data["oos_test"]][: args.requests]
    tmp = Path(tempfile.mkdtemp(prefix="bench_population-"))
    try:
        root = tmp / "clinc150"
        shutil.copytree(ROOT / "models" / "clinc150", root)
        _, m = read_bundle(root)
        g = replace(m.governance, shadow_rate=0.1, shadow_cpu_share=0.05)
        (root / "ecology.toml").write_text(manifest_to_toml(replace(m, governance=g)))
        with Population(root) as pop:
            pop.add_challenger(ROOT / "models" / "challengers" / "home-2", who="bench")
        with edge_eco.open(root) as eco:
            answers = [(eco.answer(t, local_only=True), t) for t in texts[:500]]
        store = Store(tmp / "call.db", queue_rows=30000)
        rec, (a, text) = Recorder(store), answers[0]
        calls = []
        for _ in range(20000):
            t0 = time.perf_counter()
            rec.record(a, text)
            calls.append(time.perf_counter() - t0)
        store.close()
        calls.sort()
        print(f"Recorder.record() on the request thread: p50 {calls[len(calls) // 2] * 1e6:.2f} us, "
              f"p99 {calls[int(len(calls) * 0.99)] * 1e6:.2f} us (20000 calls)")
        for safe in (False, True):
            n = args.rows if not safe else max(1000, args.rows // 10)
            print(f"store write throughput ({'power_safe, fsync per batch' if safe else 'default, NORMAL'}): "
                  f"{throughput(tmp, answers, n, safe):,.0f} rows/s ({n} rows incl. flush)")
        times: dict[str, list[float]] = {"none": [], "recorder": [], "recorder+shadow": []}
        block = max(1, len(texts) // args.blocks)
        with edge_eco.open(root) as plain, edge_eco.open(root) as rec_eco, edge_eco.open(root) as sh_eco:
            rec_eco.attach_recorder(Recorder(Store(tmp / "overhead.db")))
            with Population(root) as pop:
                shadow_rec = pop.attach(sh_eco)
            for t in texts[:200]:  # warm every model in every ecology
                for e in (plain, rec_eco, sh_eco):
                    e.answer(t, local_only=True)
            for b in range(0, len(texts), block):
                for name, e in (("none", plain), ("recorder", rec_eco), ("recorder+shadow", sh_eco)):
                    for t in texts[b:b + block]:
                        t0 = time.perf_counter()
                        e.answer(t, local_only=True)
                        times[name].append(time.perf_counter() - t0)
            rec_eco.recorder.flush()
            shadow_rec.flush()
            counts = dict(shadow_rec.shadow.counts)
        base50, base_mean = statistics.median(times["none"]), statistics.fmean(times["none"])
        for name, ts in times.items():
            p50, mean = statistics.median(ts), statistics.fmean(ts)
            print(f"request path, {name:16}: p50 {p50 * 1e6:7.1f} us ({p50 / base50:.3f}x), "
                  f"mean {mean * 1e6:7.1f} us ({mean / base_mean:.3f}x), {len(ts)} requests")
        print(f"shadow: {counts}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

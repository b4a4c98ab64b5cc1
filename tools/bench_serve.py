"""Load benchmark of `edge-eco serve` on loopback, bounded in requests and time.

    python tools/bench_serve.py [--ecology models/clinc150] [--requests 600] [--max-seconds 20]

Starts `edge-eco serve ECOLOGY --port 0` as a subprocess and drives it with 1, 4 and 16 concurrent
clients, each thread on its own keep-alive connection (edge_eco's V2Client), sending one CLINC150
test query per request. Prints throughput and p50/p99 latency per level. Then the remote-path
overhead: the p50 of a remote call minus the p50 of the server's own work for the same texts
(``answer(local_only=True)`` of the same ecology in this process, measured in the same run), and
the cost of a request while the breaker is open (from tools/bench_latency.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import edge_eco  # noqa: E402
from edge_eco.datasets import data_root, load_clinc150  # noqa: E402
from edge_eco.fallback import V2Client  # noqa: E402
from edge_eco.fallback.retry import RetryPolicy  # noqa: E402

from bench_latency import breaker_open_us  # noqa: E402
from demo import start_server  # noqa: E402


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def load_level(client: V2Client, texts: list[str], clients: int, requests: int, max_s: float) -> dict:
    """``clients`` threads send ``requests`` requests in all (or stop at ``max_s``)."""
    counter = itertools.count()
    lat_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_s

    def work() -> None:
        mine, errs = [], 0
        while (i := next(counter)) < requests and time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                client.infer([texts[i % len(texts)]], timeout_s=10.0)
                mine.append((time.perf_counter() - t0) * 1e3)
            except edge_eco.FallbackError:
                errs += 1
        with lock:
            lat_ms.extend(mine)
            errors[0] += errs

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat_ms), "errors": errors[0], "wall_s": round(wall_s, 3),
            "throughput_rps": round(len(lat_ms) / wall_s, 1), "p50_ms": round(pct(lat_ms, 50), 3),
            "p99_ms": round(pct(lat_ms, 99), 3)}


def remote_overhead(client: V2Client, eco_path: str, texts: list[str]) -> dict:
    """p50 of a remote call vs p50 of the server's own work on the same texts (same run)."""
    with edge_eco.open(eco_path, remote_url=None) as eco:
        for t in texts[:50]:
            eco.answer(t, local_only=True)  # warm every model
        own = []
        for t in texts:
            t0 = time.perf_counter()
            eco.answer(t, local_only=True)
            own.append((time.perf_counter() - t0) * 1e3)
    remote = []
    for t in texts:
        t0 = time.perf_counter()
        client.infer([t], timeout_s=10.0)
        remote.append((time.perf_counter() - t0) * 1e3)
    own_p50, remote_p50 = pct(own, 50), pct(remote, 50)
    return {"requests": len(texts), "server_own_p50_ms": round(own_p50, 3), "remote_call_p50_ms": round(remote_p50, 3),
            "overhead_p50_ms": round(remote_p50 - own_p50, 3), "ratio": round(remote_p50 / own_p50, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecology", default=str(ROOT / "models" / "clinc150"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="time bound per level")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()
    root = data_root(args.data, os.environ.get("EDGE_ECO_DATA"))
    texts = [e.text for e in load_clinc150(root / "clinc150" / "data_full.json", "test")]
    proc, url = start_server(Path(args.ecology))
    fig: dict = {"ecology": Path(args.ecology).name, "levels": []}
    try:
        name = Path(args.ecology).name
        with V2Client(url, _model_name(args.ecology), retry=RetryPolicy(attempts=1)) as client:
            load_level(client, texts, 2, 100, 10.0)  # warm: every model loaded once
            print(f"edge-eco serve {name}: {args.requests} requests per level (<= {args.max_seconds:g} s), "
                  "keep-alive clients")
            print(f"  {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
            for k in (int(x) for x in args.levels.split(",")):
                r = load_level(client, texts, k, args.requests, args.max_seconds)
                fig["levels"].append(r)
                print(f"  {k:>7} {r['requests']:>8} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.3f} "
                      f"{r['p99_ms']:>8.3f} {r['errors']:>6}")
            fig["remote_overhead"] = o = remote_overhead(client, args.ecology, texts[:300])
            print(f"remote path over the server's own time ({o['requests']} requests, 1 client): remote call p50 "
                  f"{o['remote_call_p50_ms']} ms, server's own answer p50 {o['server_own_p50_ms']} ms, "
                  f"overhead p50 {o['overhead_p50_ms']} ms ({o['ratio']}x)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    fig["breaker_open"] = b = breaker_open_us(str(ROOT / "models" / "clinc150"), texts)
    print(f"dead remote, circuit open: client call p50 {b['client_call_p50_us']} us; "
          f"whole answer (path unavailable) p50 {b['answer_p50_us']} us")
    if args.out:
        Path(args.out).write_text(json.dumps(fig, indent=1) + "\n")
    return 0


def _model_name(eco_path: str) -> str:
    import tomllib

    return tomllib.loads((Path(eco_path) / "ecology.toml").read_text())["name"]


if __name__ == "__main__":
    sys.exit(main())

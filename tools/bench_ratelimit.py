"""Cost of the per-client rate limiter of `edge-eco serve`, per request, measured in one run.

    python tools/bench_ratelimit.py [--ecology models/clinc150] [--requests 3000] [--rounds 10]

Two in-process servers of the same ecology on loopback: one without a rate limit, one with a rate
limit so high that it never refuses (every request still takes a token from its client's bucket).
One keep-alive client sends the same request to each, alternating blocks of requests between the two
(so drift on the shared cores hits both alike), for a cheap request (GET model metadata, where the
limiter's share is largest) and an infer request. Prints p50 of each and the ratio limited/unlimited,
then the cost of the limiter's own call (ClientGuard.admit) alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge_eco  # noqa: E402
from edge_eco.clientguard import ClientGuard  # noqa: E402
from edge_eco.ratelimit import BucketConfig  # noqa: E402
from edge_eco.serve import InferenceServer  # noqa: E402


def one_us(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> float:
    t0 = time.perf_counter()
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise SystemExit(f"unexpected HTTP {resp.status} from {path}")
    return (time.perf_counter() - t0) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecology", default=str(ROOT / "models" / "clinc150"))
    ap.add_argument("--requests", type=int, default=3000, help="requests per server and request kind")
    ap.add_argument("--rounds", type=int, default=10, help="alternating blocks per server")
    args = ap.parse_args()
    name = Path(args.ecology).name
    infer = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                    "data": ["what is my checking account balance"]}]}).encode()
    kinds = {"GET metadata": ("GET", f"/v2/models/{name}", None), "POST infer": ("POST", f"/v2/models/{name}/infer", infer)}
    with edge_eco.open(args.ecology, remote_url=None) as eco, \
            InferenceServer(eco) as plain, InferenceServer(eco, rate_limit_per_s=1e9, burst=10**9) as limited:
        conns = {k: http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
                 for k, s in (("off", plain), ("on", limited))}
        print(f"rate limiter cost, {args.requests} requests per server and kind, {args.rounds} alternating blocks")
        print(f"  {'request':<14} {'p50 off us':>10} {'p50 on us':>10} {'ratio':>7}")
        for kind, (method, path, body) in kinds.items():
            for c in conns.values():
                for _ in range(100):
                    one_us(c, method, path, body)  # warm
            lat: dict[str, list[float]] = {"off": [], "on": []}
            block = max(1, args.requests // args.rounds)
            for r in range(args.rounds):
                for arm in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    lat[arm] += [one_us(conns[arm], method, path, body) for _ in range(block)]
            off, on = float(np.median(lat["off"])), float(np.median(lat["on"]))
            print(f"  {kind:<14} {off:>10.1f} {on:>10.1f} {on / off:>7.3f}")
        for c in conns.values():
            c.close()
    guard = ClientGuard(16, BucketConfig(1e9, 10**9))
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        guard.admit("127.0.0.1")
    print(f"  ClientGuard.admit alone (lock + bucket + LRU update): {(time.perf_counter() - t0) / n * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-request overhead of the local path, measured against the bare model in the same run.

    python tools/bench_latency.py [--ecology models/clinc150] [--n 2000]

Answers CLINC150 test queries locally (no remote) and prints p50/p95 per stage (featurize, route,
local models + judge, total) from each answer's provenance, next to the bare cost of one ONNX
Runtime run of a specialist with the same features. The ratio total / bare model is the price of
routing, calibration, judging and provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge_eco  # noqa: E402
from edge_eco._native import Featurizer  # noqa: E402
from edge_eco.backends import open_model  # noqa: E402
from edge_eco.datasets import data_root, load_clinc150  # noqa: E402


def smaps_kb() -> dict[str, int]:
    """Anonymous and file-backed resident kB of this process (Linux smaps_rollup)."""
    out = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1])
    return {"anon": out.get("Anonymous", 0), "file": out.get("Rss", 0) - out.get("Anonymous", 0)}


def cold_loads(folder: Path, entries, feeds) -> dict:
    """Load every specialist once (after one warm-up load) and run it once: ms and kB per model."""
    specialists = [e for e in entries if e.role == "specialist"]
    open_model("ort", folder / specialists[0].file.path, optimize=False).close()
    before, ms, sessions = smaps_kb(), [], []
    for e in specialists:
        t0 = time.perf_counter()
        sessions.append(open_model("ort", folder / e.file.path, optimize=False))
        ms.append((time.perf_counter() - t0) * 1e3)
        sessions[-1].run(feeds)
    after = smaps_kb()
    n = len(specialists)
    return {"load_ms_p50": round(pct(ms, 50), 3), "anon_kb_per_model": round((after["anon"] - before["anon"]) / n),
            "file_kb_per_model": round((after["file"] - before["file"]) / n), "models": n}


def breaker_open_us(folder: str, texts) -> dict:
    """Per-request cost when the remote is dead and its circuit is open: the client call alone,
    and a whole answer() that wanted the remote (path 'unavailable')."""
    import socket

    from edge_eco.errors import RemoteUnavailable
    from edge_eco.fallback import V2Client
    from edge_eco.fallback.breaker import CircuitBreaker

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()  # nothing listens there
    client = V2Client(url, "m", breaker=CircuitBreaker(threshold=1, cooldown_s=3600, max_cooldown_s=3600))
    calls = []
    for _ in range(2001):
        t0 = time.perf_counter()
        try:
            client.infer(["hello"])
        except RemoteUnavailable:
            pass
        calls.append((time.perf_counter() - t0) * 1e6)
    with edge_eco.open(folder, remote_client=client) as eco:
        eco.controller = None
        eco.policy = eco.policy.__class__(**{**eco.policy.__dict__, "fallback_threshold": 1.0})
        answers = []
        for t in texts[:2000]:
            t0 = time.perf_counter()
            a = eco.answer(t)
            answers.append((time.perf_counter() - t0) * 1e6)
            assert a.path == "unavailable"
    return {"client_call_p50_us": round(pct(calls[1:], 50), 1), "answer_p50_us": round(pct(answers, 50), 1)}


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecology", default=str(ROOT / "models" / "clinc150"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()
    root = data_root(args.data, os.environ.get("EDGE_ECO_DATA"))
    texts = [e.text for e in load_clinc150(root / "clinc150" / "data_full.json", "test")][: args.n]
    stages = {"route": [], "local": [], "total": []}  # route = validate + featurize + route (one C call)
    direct_total = []
    with edge_eco.open(args.ecology) as eco:
        for t in texts[:200]:  # warm: load every model once
            eco.answer(t, local_only=True)
        wall = []
        for t in texts:
            t0 = time.perf_counter()
            a = eco.answer(t, local_only=True)
            wall.append((time.perf_counter() - t0) * 1e6)
            for k in stages:
                stages[k].append(a.provenance["latency_us"][k])
            if a.path == "direct":
                direct_total.append(wall[-1])
        spec = eco.manifest.featurizer
        model = eco.manifest.models[0]
        entries = eco.manifest.models
    feat = Featurizer(spec)
    sess = open_model("ort", Path(args.ecology) / model.file.path, optimize=False)
    feeds = [dict(zip(("indices", "values"), feat(t.encode()))) for t in texts]
    bare = []
    for f in feeds:
        t0 = time.perf_counter()
        sess.run(f)
        bare.append((time.perf_counter() - t0) * 1e6)
    loads = cold_loads(Path(args.ecology), entries, feeds[0])
    fig = {k: {"p50_us": round(pct(v, 50), 1), "p95_us": round(pct(v, 95), 1)} for k, v in stages.items()}
    fig["wall"] = {"p50_us": round(pct(wall, 50), 1), "p95_us": round(pct(wall, 95), 1)}
    fig["direct_path_wall"] = {"p50_us": round(pct(direct_total, 50), 1), "p95_us": round(pct(direct_total, 95), 1),
                               "share": round(len(direct_total) / len(texts), 3)}
    fig["bare_model_run"] = {"p50_us": round(pct(bare, 50), 1), "p95_us": round(pct(bare, 95), 1)}
    fig["overhead_ratio_direct_p50"] = round(fig["direct_path_wall"]["p50_us"] / fig["bare_model_run"]["p50_us"], 2)
    print(f"local path over {len(texts)} CLINC150 test queries (no remote), microseconds")
    for k, v in fig.items():
        if isinstance(v, dict):
            print(f"  {k:18} p50 {v['p50_us']:8.1f}   p95 {v['p95_us']:8.1f}")
    print(f"  direct path / bare specialist run (p50): {fig['overhead_ratio_direct_p50']}x")
    print(f"cold load of a specialist (ONNX, external data mmapped, optimizer off): p50 {loads['load_ms_p50']} ms; "
          f"per model +{loads['anon_kb_per_model']} kB anonymous, +{loads['file_kb_per_model']} kB file-backed "
          f"(over {loads['models']} specialists)")
    fig["cold_load"] = loads
    fig["breaker_open"] = breaker_open_us(args.ecology, texts)
    print(f"dead remote, circuit open: client call p50 {fig['breaker_open']['client_call_p50_us']} us; "
          f"whole answer (path unavailable) p50 {fig['breaker_open']['answer_p50_us']} us")
    if args.out:
        Path(args.out).write_text(json.dumps(fig, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Featurizer speed: the C kernel against its numpy reference, on real CLINC150 test queries.

    python tools/bench_featurizer.py [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_eco._native import Featurizer  # noqa: E402
from edge_eco.bundle import read_bundle  # noqa: E402
from edge_eco.datasets import data_root, load_clinc150  # noqa: E402


def per_call_us(fn, items, repeat: int) -> list[float]:
    out = []
    for x in items:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn(x)
        out.append((time.perf_counter() - t0) / repeat * 1e6)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    spec = read_bundle(ROOT / "models" / "clinc150", verify=False)[1].featurizer
    root = data_root(args.data, os.environ.get("EDGE_ECO_DATA"))
    texts = [e.text.encode() for e in load_clinc150(root / "clinc150" / "data_full.json", "test")][: args.n]
    native, reference = Featurizer(spec, use_native=True), Featurizer(spec, use_native=False)
    c = per_call_us(native, texts, 20)
    ref = per_call_us(reference, texts[: max(1, args.n // 4)], 1)
    nnz = np.mean([len(native(t)[0]) for t in texts])
    print(f"featurizer {spec.version} (dim {spec.dim}) on {len(texts)} CLINC150 test queries, mean nnz {nnz:.0f}")
    print(f"  C kernel        p50 {np.percentile(c, 50):7.2f} us   p95 {np.percentile(c, 95):7.2f} us")
    print(f"  numpy reference p50 {np.percentile(ref, 50):7.2f} us   p95 {np.percentile(ref, 95):7.2f} us")
    print(f"  speedup (p50)   {np.percentile(ref, 50) / np.percentile(c, 50):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

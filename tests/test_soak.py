"""Short version of tools/soak.py (the full run: 8 threads x 100,000 requests, 1,000 cycles per
backend; README figures): concurrent answers under a budget that forces evictions, and RSS after
load/unload cycles."""

from __future__ import annotations

import sys

import pytest

from conftest import CLINC, MODELS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from soak import load_test, soak_cycles  # noqa: E402

from edge_eco.datasets import load_clinc150  # noqa: E402


def test_threads_under_a_small_budget_no_errors_no_violations():
    texts = [e.text for e in load_clinc150(CLINC, "test")][::11][:500]
    # 11 MB holds the generalist (9.9 MB of weights) and one 1 MiB specialist at their predicted
    # sizes: until first loads are measured, models are really evicted and reloaded. (Measured, the
    # whole population fits: the full soak sees evictions only then. With ORT's per-session arena
    # off, sessions are smaller still: 8-10 evictions here in four runs, 18-30 with it.)
    r = load_test(MODELS / "clinc150", texts, threads=8, per_thread=150, budget=11_000_000)
    assert r["errors"] == 0, r["error_samples"]
    assert r["budget_violations"] == 0 and r["samples"] > 10
    assert r["evictions"] > 4  # the budget really forces evictions (8-10 seen in 1,200 requests)
    assert r["peak_resident_bytes"] <= 11_000_000


def test_load_unload_cycles_return_their_memory():
    cycles = soak_cycles(MODELS / "clinc150", ["ort", "tflite", "fake"], 200)
    assert sorted(cycles) == ["fake", "ort", "tflite"]
    for name, c in cycles.items():
        assert c["cycles"] == 200 and c["growth"] <= 1 << 20, (name, c)

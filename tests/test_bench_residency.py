"""`edge-eco bench residency` end to end: real models, the real data's traces, short cycle counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import DATA, MODELS


def test_bench_residency_reports_every_figure(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    done = subprocess.run([str(Path(sys.executable).parent / "edge-eco"), "bench", "residency",
                           "--clinc", str(MODELS / "clinc150"), "--har", str(MODELS / "har"), "--data", str(DATA),
                           "--cycles", "50", "--stride", "10", "--out", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert set(r["policies"]) == {"zipf-0.6", "zipf-0.9", "zipf-1.2", "shift", "scan", "bursts", "clinc150"}
    for name, budgets in r["policies"].items():
        assert set(budgets) == {"30%", "60%"}
        for row in budgets.values():
            opt = row["optimum"]["miss_cost_ms"]
            assert all(row[p]["miss_cost_ms"] >= opt - 1e-6 for p in ("cost_aware", "cost_aware_only", "lru", "belady"))
            if name != "clinc150":  # sizes and deadlines differ: the loss rule is clearly ahead of LRU
                assert row["cost_vs_lru"] < 0.99
    # The recorded trace (grouped by intent) is LRU's ground: following the better rule keeps
    # the loss rule's 1.10x off it (1.000x in full runs; this tenth of the trace is short enough
    # for a switch's regret to show: 1.00-1.01x of the better rule in three runs).
    c60 = r["policies"]["clinc150"]["60%"]
    better = min(c60["lru"]["miss_cost_ms"], c60["cost_aware_only"]["miss_cost_ms"])
    assert c60["cost_aware"]["miss_cost_ms"] <= 1.03 * better
    assert r["budget_violations"] == 0
    assert r["accounting_error_p95"] <= 0.10
    assert r["unload_cycles"] == 50 and all(g <= 1 << 20 for g in r["unload_growth_bytes"].values())
    assert set(r["specialist_cold_load_ms_p50"]) == {"ort", "tflite"}
    assert r["loads_during"] > 0 and r["warm_p99_ratio"] > 0 and len(r["warm_p99_ratio_rounds"]) == 8
    assert r["loads_during_python_binding"] > 0 and r["warm_p99_ratio_python_binding"] > 0
    assert r["thread_only_p99_ratio"] > 0 and r["thread_only_p99_ms"] > 0
    # Zipf and shift traces are drawn independently: the online optimum is between the offline
    # optimum and the policies that cannot see the future's probabilities
    for name in ("zipf-0.6", "zipf-0.9", "zipf-1.2", "shift"):
        for row in r["policies"][name].values():
            online = row["online_optimum"]["miss_cost_ms"]
            assert row["optimum"]["miss_cost_ms"] <= online < row["lru"]["miss_cost_ms"]
    assert "online_optimum" not in r["policies"]["clinc150"]["60%"]
    assert 1.0 <= r["online_vs_optimum_range"][0] <= r["online_vs_optimum_range"][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warm_p99_ratio" in done.stdout and "worst miss cost vs LRU" in done.stdout


def test_bench_residency_names_a_bundle_of_the_wrong_kind_and_never_downloads(tmp_path):
    exe = str(Path(sys.executable).parent / "edge-eco")
    wrong = subprocess.run([exe, "bench", "residency", "--clinc", str(MODELS / "clinc150"), "--har", str(MODELS / "clinc150"),
                            "--data", str(DATA)], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "--har must be a sensor ecology" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = subprocess.run([exe, "bench", "residency", "--data", str(tmp_path)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "CLINC150 is not at" in missing.stderr
    assert not (tmp_path / ".cache").exists()


def test_bench_residency_refuses_an_unwritable_report_before_it_runs(tmp_path):
    exe = str(Path(sys.executable).parent / "edge-eco")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for flag, path in (("--out", blocker / "r.json"), ("--plot", blocker / "sub" / "r.png")):
        t0 = time.perf_counter()
        done = subprocess.run([exe, "bench", "residency", "--data", str(DATA), flag, str(path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and f"{flag} {path} cannot be written" in done.stderr, done.stderr
        assert "nothing was run" in done.stderr and time.perf_counter() - t0 < 20  # the run takes ~45 s
    fresh = tmp_path / "new" / "r.json"
    bad = subprocess.run([exe, "bench", "residency", "--out", str(fresh), "--cycles", "1.5"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "not a whole number: '1.5'" in bad.stderr
    assert not fresh.exists()

"""`edge-eco bench routing` end to end on a slice of the real test split (MiniLM in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLINC, DATA, MODELS


def test_bench_routing_reports_every_figure(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    done = subprocess.run([str(Path(sys.executable).parent / "edge-eco"), "bench", "routing", str(MODELS / "clinc150"),
                           "--requests", str(CLINC), "--split", "test", "--limit", "300",
                           "--remote-bundle", str(MODELS / "minilm"), "--out", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert r["requests"] == 300
    assert set(r["curves"]) == {"ecology", "max_softmax_ecology", "random", "max_softmax_generalist",
                                "domain_argmax", "oracle", "learned_deferral"}
    for c in r["curves"].values():
        assert len(c["rates"]) == len(c["accuracy"]) == 101
        assert c["accuracy"][0] <= 1 and c["accuracy"][-1] == r["strong_accuracy"]
    assert set(r["accuracy_at_remote_rate"]) == {"0.05", "0.1", "0.2", "0.3"}
    # the oracle bounds every router from above at every rate
    for name, c in r["curves"].items():
        if name not in ("oracle", "domain_argmax", "max_softmax_generalist"):
            assert all(a <= o + 1e-12 for a, o in zip(c["accuracy"], r["curves"]["oracle"]["accuracy"]))
    assert set(r["ece"]) == {m.name[: -len(".onnx")] for m in (MODELS / "clinc150").glob("*.onnx")}
    assert all(v["after"] <= v["before"] + 0.02 for v in r["ece"].values())
    assert 0 <= r["aurc_local"] <= 1
    assert r["router_us"]["c"]["p50"] < r["router_us"]["numpy"]["p50"]
    assert r["router_speedup"] == r["router_us"]["router_speedup"] > 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "apgr" in done.stdout and "router decision" in done.stdout
    # PGR's direction is reported, not assumed: the flag agrees with the two accuracies.
    assert r["pgr_inverted"] == (r["strong_accuracy"] < r["weak_accuracy"])
    g = r["vs_local_generalist"]
    assert g["weak_accuracy"] == r["local_generalist_accuracy"]
    assert g["pgr_inverted"] == (r["strong_accuracy"] < g["weak_accuracy"])
    best = max(a for x, a in zip(r["curves"]["ecology"]["rates"], r["curves"]["ecology"]["accuracy"]) if x <= 0.25)
    assert r["best_accuracy_at_most_25pct_remote"] == round(best, 5)
    assert "best ecology accuracy with <= 25 % remote calls" in done.stdout


@pytest.mark.parametrize("ecology, requests, remote, needle", [
    ("har", ["stm32_har", "--split", "test"], "minilm", "har takes sensor windows; bench routing replays text"),
    ("clinc150", ["clinc150/data_full.json", "--split", "test"], "har",
     "--remote-bundle {models}/har takes sensor windows, not text requests"),
])
def test_bench_routing_names_a_dense_ecology_instead_of_a_window_error(ecology, requests, remote, needle, capsys):
    # Both had ended with "window must be an array of numbers shaped [52, 3] ..., got str".
    from edge_eco.cli import main

    pytest.importorskip("ai_edge_litert", reason="models/har needs ai-edge-litert (litert extra)")
    status = main(["bench", "routing", str(MODELS / ecology), "--requests", str(DATA / requests[0]), *requests[1:],
                   "--remote-bundle", str(MODELS / remote), "--limit", "5"])
    assert status == 2 and needle.format(models=MODELS) in capsys.readouterr().err

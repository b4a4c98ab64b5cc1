"""`profile`, `assign` and `run --plan` on the shipped sensor ecology (models/har) and the real STM32 HAR
recordings: the dense-vector contract end to end, on the 64 MB board its models are built for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_eco import assignjob, cli
from edge_eco.bundle import read_bundle
from edge_eco.errors import RequestError
from edge_eco.plan import read_plan
from edge_eco.profile import read_profile

from conftest import DATA, MODELS
from test_profile_plan import ACCURACY_POINTS  # the text plan test's tolerance, for the same comparison

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
HAR = DATA / "stm32_har"


def test_profile_assign_and_run_the_plan_on_the_sensor_ecology(tmp_path, capsys):
    device, plan, replay, report = (tmp_path / n for n in ("device.toml", "plan.toml", "replay.json", "r.json"))
    # No --requests: the data set is picked by the ecology's input contract (stm32_har, not CLINC150).
    assert cli.main(["profile", str(MODELS / "har"), "--out", str(device), "--data", str(DATA),
                     "--repeats", "1", "--runs", "20"]) == 0
    assert "4/4" in capsys.readouterr().err  # the progress bar reached the end: 4 models x 1 repeat
    prof = read_profile(device)
    assert prof.ecology == "har" and prof.runs == 20
    assert [m.id for m in prof.models] == ["still_tiny", "active_tiny", "active_large", "generalist"]
    assert all(m.load_ms > 0 and m.p50_us > 0 for m in prof.models)

    assert cli.main(["assign", str(MODELS / "har"), "--platform", "embedded-64mb", "--profile", str(device),
                     "--data", str(DATA), "--out", str(plan), "--replay", str(replay)]) == 0
    out = capsys.readouterr().out
    assert "har on embedded-64mb" in out and "expected on 361 requests of" in out and "stm32_har [val]" in out, out
    p = read_plan(plan)
    assert p.feasible and p.platform == "embedded-64mb" and p.requests == 361 and p.ids("pinned")
    assert p.remote_policy == "forbidden"  # the ecology's policy: an all-local plan

    assert cli.main(["run", str(MODELS / "har"), "--plan", str(plan), "--requests", str(HAR), "--split", "val",
                     "--out", str(report)]) == 0
    assert "plan expected (validation replay)" in capsys.readouterr().out
    got = json.loads(report.read_text())["all"]
    seen = f"expected {p.expected}, measured {got}"
    assert got["requests"] == 361 and got["remote_rate"] == 0.0, seen
    assert got["accuracy"] > 0.9, seen  # the shipped specialists are ~99 % on val (README)
    assert abs(100 * got["accuracy"] - 100 * p.expected["accuracy"]) <= ACCURACY_POINTS, seen
    assert got["unavailable"] / got["requests"] <= p.expected["forced_rate"] + 0.01, seen


def test_vector_rows_are_read_like_eval_and_text_rows_are_refused(tmp_path):
    """Rows holding a window each (here 40 real val windows as JSON lines) replace the folder."""
    _, m = read_bundle(MODELS / "har")
    folder, folder_niches = assignjob.load_labelled(m, DATA, None, "val", stride=9)
    rows = tmp_path / "windows.jsonl"
    rows.write_text("".join(json.dumps({"window": e.vector.reshape(-1).tolist(), "label": e.label}) + "\n"
                            for e in folder))
    examples, niches = assignjob.load_labelled(m, DATA, str(rows), "val", vector_field="window")
    assert [e.label for e in examples] == [e.label for e in folder] and niches == folder_niches
    assert np.array_equal(examples[0].vector, folder[0].vector.reshape(-1))
    with pytest.raises(RequestError, match="--vector-field"):
        assignjob.load_labelled(m, DATA, str(rows), "val")
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "walking", "window": [1.0] * 156, "label": "walking"}) + "\n")
    _, clinc = read_bundle(MODELS / "clinc150")
    with pytest.raises(RequestError, match="takes text"):
        assignjob.load_labelled(clinc, DATA, str(text), "val", vector_field="window")
    with pytest.raises(RequestError, match="sensor windows"):
        assignjob.load_labelled(m, DATA, str(DATA / "clinc150" / "data_full.json"), "val")

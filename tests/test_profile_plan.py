"""Platforms, device profiles, plans and `run --plan`: the real CLINC150 ecology and MiniLM on loopback."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import edge_eco
from edge_eco import assignjob
from edge_eco.assign import evaluate
from edge_eco.bundle import read_bundle
from edge_eco.errors import ManifestError
from edge_eco.fallback.v2 import RemoteAnswer
from edge_eco.plan import apply_plan, open_with_plan, parse_plan, plan_to_toml
from edge_eco.platform import Platform, load_platform, parse_platform, preset_paths
from edge_eco.profile import parse_profile, profile_ecology, profile_to_toml

from conftest import CLINC, DATA, MODELS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from demo import start_server  # noqa: E402

# Tolerances of the plan-vs-measured check (same requests; README "Device profiles, platforms and
# plans"): accuracy and remote rate in points (the rate controller tracks its target with a lag; a
# remote call that times out on an overloaded machine is counted, up to 1 %); local p95 as a factor
# plus slack, a sanity bound only (seen: 21 ms p95 against 2.1 ms expected with a load average of 8):
# this shared 2-core machine's scheduling noise is in the measurement
# but not in the replay (which keeps the fastest of 3 runs).
ACCURACY_POINTS, REMOTE_POINTS, UNAVAILABLE_SHARE, P95_FACTOR, P95_SLACK_MS = 2.0, 4.0, 0.01, 10.0, 50.0


def test_presets_parse_and_say_where_their_numbers_come_from():
    names = {p.stem for p in preset_paths()}
    assert {"embedded-64mb", "rpi-zero-2w", "rpi4-2gb", "android-midrange", "jetson-orin-nano", "x86-laptop"} <= names
    for path in preset_paths():
        p = load_platform(path.stem)
        assert p.name == path.stem and p.source and p.memory_budget_bytes > 0 and p.latency_budget_ms > 0
    assert load_platform("embedded-64mb").memory_budget_bytes < load_platform("rpi4-2gb").memory_budget_bytes


@pytest.mark.parametrize("text, match", [
    ('name = "x"\nlatency_budget_ms = 1.0', "missing required field 'memory_budget_bytes'"),
    ('name = "x"\nmemory_budget_bytes = 10\nlatency_budget_ms = 1.0\nram = 3', "unknown field"),
    ('name = "x"\nmemory_budget_bytes = 10\nlatency_budget_ms = -1.0', "out of range"),
    ('name = "x"\nmemory_budget_bytes = 10\nlatency_budget_ms = 1.0\nnetwork = "5g"', "not one of"),
    ('name = "x"\nmemory_budget_bytes = 10\nlatency_budget_ms = 1.0\nnetwork = "offline"\n'
     'remote_budget_rate = 0.2', "offline"),
    ("name = ", "not valid TOML")])
def test_bad_platform_files_are_refused_with_the_reason(text, match):
    with pytest.raises(ManifestError, match=match):
        parse_platform(text)


def test_unknown_platform_names_the_presets():
    with pytest.raises(ManifestError, match="rpi4-2gb"):
        load_platform("no-such-board")


def test_profile_of_the_real_ecology_round_trips():
    root, m = read_bundle(MODELS / "clinc150")
    texts = ["what is my balance", "book a flight to rome", "play some jazz", "how do i change a tire"] * 5
    p = profile_ecology(root, m, texts, repeats=1, runs=20)
    assert [x.id for x in p.models] == [e.id for e in m.models]
    assert p.cores >= 1 and p.memory_total_bytes > p.memory_available_bytes > 0
    for x in p.models:
        assert x.load_ms > 0 and 0 < x.p50_us <= x.p95_us <= x.p99_us
        assert x.file_bytes > 0  # the int8 weights are file-backed (memory-mapped external data)
    assert parse_profile(profile_to_toml(p)) == p
    with pytest.raises(ManifestError, match="schema"):
        parse_profile(profile_to_toml(p).replace("schema = 1", "schema = 9"))
    with pytest.raises(ManifestError, match="malformed"):
        parse_profile(profile_to_toml(p).replace("load_ms", "loadms"))


class _Remote:
    """A stand-in remote for the flow test: always answers 'book_flight'."""

    def infer(self, texts, timeout_s=None):
        return [RemoteAnswer("book_flight", 0.9, "stub", "1", 0.1) for _ in texts]


def _fake_plan(root: Path, decisions: dict[str, str]):
    _, m = read_bundle(root)
    from edge_eco.assign import Expectation, ModelCost
    from edge_eco.plan import make_plan
    costs = [ModelCost(e.id, 10_000, 0.1) for e in m.models]
    e = Expectation(0.9, 0.1, 0.1, 0.0, 0.3, 0.1, 0.2, 1.0, 0, 0, True, 0.0)
    return make_plan(m, Platform("t", 1 << 20, 5.0), costs, decisions, e, None, 10)


def test_run_with_a_plan_excludes_pins_and_sends_excluded_niches_remote(fake_ecology):
    plan = _fake_plan(fake_ecology, {"money": "pinned", "travel": "excluded", "generalist": "on_demand"})
    assert parse_plan(plan_to_toml(plan)) == plan
    with open_with_plan(fake_ecology, plan, remote_client=_Remote()) as eco:
        assert eco.residency.resident() == ["money"]  # pinned at open
        a = eco.answer("book a flight to paris")
        assert a.path == "remote" and a.provenance["excluded"] == "travel"
        assert eco.answer("what is my account balance").path in ("direct", "coalition")
        assert "travel" not in eco.residency.resident()
    with open_with_plan(fake_ecology, plan) as eco:  # no remote: the device does not serve the niche
        a = eco.answer("book a flight to paris")
        assert (a.label, a.confidence, a.path) == ("oos", 0.0, "unavailable")


def test_a_plan_for_another_ecology_or_population_is_refused(fake_ecology):
    plan = _fake_plan(fake_ecology, {"money": "pinned", "travel": "excluded", "generalist": "on_demand"})
    _, m = read_bundle(fake_ecology)
    with pytest.raises(ManifestError, match="for ecology"):
        apply_plan(dataclasses.replace(m, name="other"), plan)
    with pytest.raises(ManifestError, match="lists models"):
        apply_plan(m, dataclasses.replace(plan, models=plan.models[:2]))
    with pytest.raises(ManifestError, match="decision"):
        parse_plan(plan_to_toml(plan).replace('"excluded"', '"maybe"'))
    with pytest.raises(ManifestError, match="cpu_factor must be > 0"):  # was a ZeroDivisionError after the run
        parse_plan(plan_to_toml(dataclasses.replace(plan, cpu_factor=0.0)))


@pytest.fixture(scope="module")
def remote_url():
    proc, url = start_server(MODELS / "minilm")
    yield url + "/v2/models/minilm"
    proc.terminate()
    proc.wait(timeout=10)


def test_measured_figures_match_the_plan_on_this_machine(remote_url):
    """Plan for a tight device (6 MiB, 20 % remote) from a replay of a fifth of the validation split,
    then run the same requests through `open_with_plan` against the real remote over HTTP."""
    root, m = read_bundle(MODELS / "clinc150")
    examples, niches = assignjob.load_labelled(m, DATA, str(CLINC), "val", stride=5)
    remote, close = assignjob.remote_labeller(str(MODELS / "minilm"), None, None, "minilm")
    try:
        outcomes = assignjob.replay_ecology(MODELS / "clinc150", examples, niches, remote)
    finally:
        close()
    platform = Platform("tight", 6 << 20, 20.0, network="ethernet", remote_budget_rate=0.2)
    profile = profile_ecology(root, m, [x.text for x in examples[::10]], repeats=3, runs=50)
    plan, result = assignjob.assign_one(root, m, platform, outcomes, profile, None)
    e = result.expected
    assert e.feasible and set(result.decisions.values()) >= {"excluded", "pinned"}
    with open_with_plan(MODELS / "clinc150", plan, remote_url=remote_url) as eco:
        table = assignjob.answer_by_niche(eco, examples, niches)
        assert eco.residency.resident_bytes <= platform.memory_budget_bytes
        loads = eco.stats()["loads"]
    got = table["all"]
    seen = f"expected {e}, measured {got}"
    assert got["unavailable"] <= UNAVAILABLE_SHARE * got["requests"], seen
    assert abs(100 * got["accuracy"] - 100 * e.accuracy) <= ACCURACY_POINTS, seen
    assert abs(100 * (got["remote_rate"] + got["unavailable"] / got["requests"]) - 100 * e.remote_rate) \
        <= REMOTE_POINTS, seen
    # The plan simulates on-demand models as an LRU of whole loads; the residency manager demotes
    # idle models to cold (file pages dropped, session kept) before it unloads any, so it loads at
    # most as often: the simulated count is an upper bound (and on-demand models do get loaded).
    pinned = len(plan.ids("pinned"))
    assert pinned < loads <= pinned + e.cold_loads, (loads, e.cold_loads)
    assert got["local_ms"]["p95"] <= P95_FACTOR * e.local_p95_ms + P95_SLACK_MS, seen
    again = evaluate(outcomes, assignjob.model_costs(root, m, profile), result.decisions, assignjob.budgets(platform))
    assert again == e  # the plan's figures are a pure function of the replay


def test_a_plan_forbidding_remote_keeps_excluded_niches_on_the_device(fake_ecology):
    plan = dataclasses.replace(_fake_plan(fake_ecology, {"money": "pinned", "travel": "excluded",
                                                         "generalist": "on_demand"}), remote_policy="forbidden")
    assert parse_plan(plan_to_toml(plan)).remote_policy == "forbidden"
    with open_with_plan(fake_ecology, plan, remote_client=_Remote()) as eco:
        a = eco.answer("book a flight to paris")
        assert (a.label, a.path, a.provenance["remote"]) == ("oos", "unavailable", {"skipped": "policy forbids remote"})
    with pytest.raises(ManifestError, match="remote_policy"):
        parse_plan(plan_to_toml(plan).replace('remote_policy = "forbidden"', 'remote_policy = "sometimes"'))


def test_footprints_are_the_lower_median_so_the_first_cold_load_does_not_skew_two_repeats(fake_ecology,
                                                                                          monkeypatch):
    """Found by a tester: with --repeats 2 the median of two is their mean, and the first cold load's
    one-off file-backed bytes made a 32 kB footprint read 192 kB. Timings keep the plain median."""
    import edge_eco.profile as profile

    after = iter([(32_000, 352_000), (32_000, 32_000)] * 3)  # per model: the first load, then a warm one
    calls = iter(range(100))
    monkeypatch.setattr(profile, "footprint_bytes", lambda: (0, 0) if next(calls) % 2 == 0 else next(after))
    root, m = read_bundle(fake_ecology)
    p = profile_ecology(root, m, ["what is my balance", "book a flight"], repeats=2, runs=2)
    assert [(x.anon_bytes, x.file_bytes) for x in p.models] == [(32_000, 32_000)] * 3

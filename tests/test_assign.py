"""The assignment optimiser (pure): properties on random replays, with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_eco.assign import Budgets, ModelCost, Outcome, evaluate, optimise, pin_for

N_MODELS = 4


@st.composite
def replays(draw):
    costs = [ModelCost(f"m{i}", draw(st.integers(1, 10)) * 1000, draw(st.floats(0.0, 5.0)),
                       frozenset({f"n{i}"}) if i < N_MODELS - 1 else frozenset()) for i in range(N_MODELS)]
    n = draw(st.integers(1, 40))
    outcomes = []
    for _ in range(n):
        models = tuple(draw(st.lists(st.integers(0, N_MODELS - 1), min_size=1, max_size=3, unique=True)))
        outcomes.append(Outcome(models, draw(st.booleans()), draw(st.booleans()), draw(st.floats(0.0, 1.0)),
                                draw(st.floats(0.01, 2.0)), 1.0, f"n{models[0]}"))
    budgets = Budgets(draw(st.integers(1, 40)) * 1000, draw(st.floats(0.5, 50.0)), draw(st.floats(0.0, 1.0)),
                      draw(st.floats(0.5, 4.0)), 1.0)
    return outcomes, costs, budgets


@settings(max_examples=60, deadline=None)
@given(replays())
def test_all_pinned_with_room_and_no_remote_is_the_local_tier(r):
    outcomes, costs, _ = r
    b = Budgets(10**9, 1e9, 0.0)
    e = evaluate(outcomes, costs, {c.id: "pinned" for c in costs}, b)
    assert e.accuracy == pytest.approx(np.mean([o.local_ok for o in outcomes]))
    assert e.remote_rate == 0 and e.cold_loads == 0 and e.feasible


@settings(max_examples=60, deadline=None)
@given(replays(), st.floats(0.0, 1.0))
def test_a_remote_budget_never_lowers_accuracy_and_is_respected(r, rate):
    outcomes, costs, budgets = r
    decisions = {c.id: "pinned" for c in costs}
    b = Budgets(10**9, 1e9, rate)
    e0 = evaluate(outcomes, costs, decisions, Budgets(10**9, 1e9, 0.0))
    e = evaluate(outcomes, costs, decisions, b)
    assert e.accuracy >= e0.accuracy - 1e-12
    assert e.remote_rate <= rate + 1e-9


@settings(max_examples=60, deadline=None)
@given(replays())
def test_excluded_models_send_their_requests_remote(r):
    outcomes, costs, budgets = r
    decisions = {c.id: ("excluded" if i == 0 else "pinned") for i, c in enumerate(costs)}
    e = evaluate(outcomes, costs, decisions, Budgets(10**9, 1e9, 1.0))
    needs0 = np.mean([0 in o.models for o in outcomes])
    assert e.forced_rate == pytest.approx(needs0)
    assert e.remote_rate >= e.forced_rate - 1e-12


@settings(max_examples=40, deadline=None)
@given(replays())
def test_lru_loads_each_model_once_when_everything_fits(r):
    outcomes, costs, _ = r
    e = evaluate(outcomes, costs, {c.id: "on_demand" for c in costs}, Budgets(10**9, 1e9, 0.0))
    assert e.cold_loads == len({m for o in outcomes for m in o.models})


@settings(max_examples=40, deadline=None)
@given(replays(), st.booleans())
def test_optimise_respects_budgets_and_region_and_beats_trivial_plans(r, use_region):
    outcomes, costs, budgets = r
    region = frozenset({"n0"}) if use_region else None
    plan = optimise(outcomes, costs, budgets, region)
    assert set(plan.decisions) == {c.id for c in costs}
    if use_region:  # specialists of other niches are never on the device
        assert all(plan.decisions[c.id] == "excluded" for c in costs if c.niches and not c.niches & region)
    e = plan.expected
    if e.feasible:
        pinned = sum(c.bytes for c in costs if plan.decisions[c.id] == "pinned")
        assert pinned == e.pinned_bytes <= budgets.memory_bytes
        assert e.local_p95_ms <= budgets.latency_ms
    trivial = [{c.id: "excluded" for c in costs}]
    if region is None:  # all pinned serves every niche, so only without a region
        trivial.append({c.id: "pinned" for c in costs})
    for t in (evaluate(outcomes, costs, d, budgets, region=region) for d in trivial):
        if t.feasible:
            assert e.feasible and e.accuracy >= t.accuracy - 1e-12


def test_pin_for_keeps_room_for_on_demand_models():
    costs = [ModelCost(f"m{i}", 1000, 1.0) for i in range(5)]
    outcomes = [Outcome((i % 5,), True, False, 0.9, 0.1) for i in range(50)]
    pinned = pin_for(range(5), outcomes, costs, 3500)
    assert len(pinned) == 1  # 1 pinned + room for a coalition of two on-demand models = 3000 <= 3500


def test_bad_input_is_refused():
    costs = [ModelCost("a", 1, 0.0)]
    with pytest.raises(ValueError, match="at least one"):
        evaluate([], costs, {"a": "pinned"}, Budgets(10, 1.0, 0.0))
    with pytest.raises(ValueError, match="unknown decision"):
        evaluate([Outcome((0,), True, True, 0.5, 0.1)], costs, {"a": "resident"}, Budgets(10, 1.0, 0.0))


def test_a_forced_request_loads_the_steps_before_the_excluded_model():
    from edge_eco.replay import stages
    assert stages(3, True, 2) == (1, 1, 1) and stages(3, False, 2) == (2, 1) and stages(1, False, 3) == (1,)
    costs = [ModelCost(f"m{i}", 1000, 2.0) for i in range(3)]
    b = Budgets(10**6, 1e9, 1.0)
    decisions = {"m0": "on_demand", "m1": "excluded", "m2": "on_demand"}
    direct_then_excluded = Outcome((0, 1), True, True, 0.5, 0.1, stages=(1, 1))
    coalition_with_excluded = Outcome((0, 1), True, True, 0.5, 0.1, stages=(2,))
    assert evaluate([direct_then_excluded], costs, decisions, b).cold_loads == 1  # m0 ran, then remote
    assert evaluate([coalition_with_excluded], costs, decisions, b).cold_loads == 0  # refused before running


def test_the_forced_share_says_it_is_a_share_of_the_regions_requests():
    """Found by a tester: "40.0% of requests need excluded models" was a share of the region's requests."""
    costs = [ModelCost("a", 1000, 0.1, frozenset({"n0"})), ModelCost("b", 1000, 0.1, frozenset({"n0"}))]
    outcomes = [Outcome((0,), True, True, 0.9, 0.1, niche="n0")] * 3 + \
        [Outcome((1,), True, True, 0.9, 0.1, niche="n0")] * 2 + [Outcome((1,), True, True, 0.9, 0.1, niche="n1")] * 5
    decisions = {"a": "pinned", "b": "excluded"}
    e = evaluate(outcomes, costs, decisions, Budgets(10**9, 1e9, 0.1), region=frozenset({"n0"}))
    assert e.problems[0] == ("40.0% of the region's requests need excluded models; the remote budget is 10% of "
                             "the region's requests")
    e = evaluate(outcomes, costs, decisions, Budgets(10**9, 1e9, 0.1))
    assert e.problems[0] == "70.0% of requests need excluded models; the remote budget is 10% of requests"

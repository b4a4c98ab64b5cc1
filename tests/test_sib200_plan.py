"""A region on the multilingual SIB-200 ecology: the device keeps the models of its languages, and the
other languages go to the remote generalist (here the whole SIB-200 ecology served on loopback, as a
bigger device would serve a smaller one)."""

from __future__ import annotations

import sys

import pytest

from edge_eco import assignjob
from edge_eco.assign import per_niche
from edge_eco.bundle import read_bundle
from edge_eco.plan import open_with_plan
from edge_eco.platform import Platform
from edge_eco.replay import niche_values

from conftest import DATA, MODELS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
from demo import start_server  # noqa: E402

SIB = MODELS / "sib200"
REGION = frozenset({"eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "ita_Latn"})


@pytest.fixture(scope="module")
def remote_url():
    proc, url = start_server(SIB)
    yield url + "/v2/models/sib200"
    proc.terminate()
    proc.wait(timeout=10)


def test_a_region_keeps_its_languages_local_and_sends_the_rest_remote(remote_url):
    root, m = read_bundle(SIB)
    examples, niches = assignjob.load_labelled(m, DATA, str(DATA / "sib200"), "val", stride=7)
    remote, close = assignjob.remote_labeller(str(SIB), None, None, "sib200")
    try:
        outcomes = assignjob.replay_ecology(SIB, examples, niches, remote)
    finally:
        close()
    platform = Platform("region", 64 << 20, 50.0, network="wifi", remote_budget_rate=0.2)
    plan, result = assignjob.assign_one(root, m, platform, outcomes, None, REGION, allow_remote=True)
    for e in m.models:  # a specialist with none of the region's languages is never on the device
        if niche_values(e) and not niche_values(e) & REGION:
            assert result.decisions[e.id] == "excluded", e.id
    expected = per_niche(outcomes, assignjob.model_costs(root, m, None), result.decisions,
                         assignjob.budgets(platform), REGION)
    with open_with_plan(SIB, plan, remote_url=remote_url) as eco:
        table = assignjob.answer_by_niche(eco, examples, niches)
    outside = [n for n in table if n != "all" and n not in REGION and not any(
        n in niche_values(e) for e in m.models if result.decisions[e.id] != "excluded")]
    assert outside, "the region should leave some languages without a local specialist"
    for n in outside:
        assert table[n]["remote_rate"] >= 0.8 and expected[n]["remote_rate"] >= 0.8, n
    for n in REGION & set(table):
        assert table[n]["remote_rate"] <= 0.3, n
    assert table["all"]["unavailable"] == 0
    assert abs(table["all"]["accuracy"] - result.expected.accuracy) <= 0.02

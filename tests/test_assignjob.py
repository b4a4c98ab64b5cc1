"""Request loading for assign/profile: CLINC150 niches from the specialists, SIB-200 languages as niches."""

from __future__ import annotations

import pytest

from edge_eco.assignjob import load_labelled, load_sib200, region_of
from edge_eco.bundle import read_bundle
from edge_eco.errors import RequestError

from conftest import CLINC, DATA, MODELS

SIB = DATA / "sib200"


def test_sib200_splits_carry_the_language_as_niche():
    examples, niches = load_sib200(SIB, "test")
    assert len(examples) == 5712 and len(set(niches)) == 28  # 28 languages x 204 (data set README)
    val, val_niches = load_sib200(SIB, "val", ["eng_Latn", "fra_Latn"])
    assert len(val) == 2 * 99 and set(val_niches) == {"eng_Latn", "fra_Latn"}
    assert {e.label for e in val} <= {"science/technology", "travel", "politics", "sports", "health",
                                      "entertainment", "geography"}
    with pytest.raises(RequestError, match="xxx_Latn"):
        load_sib200(SIB, "test", ["xxx_Latn"])


def test_malformed_tsv_is_refused_with_its_line(tmp_path):
    (tmp_path / "eng_Latn").mkdir()
    (tmp_path / "eng_Latn" / "dev.tsv").write_text("index_id\tcategory\ttext\n1\ttravel\n")
    with pytest.raises(RequestError, match=r"dev.tsv:2: expected 3"):
        load_sib200(tmp_path, "val")
    with pytest.raises(RequestError, match="split"):
        load_sib200(tmp_path, "holdout")


def test_clinc150_niches_are_the_domains_of_the_gold_intents():
    _, m = read_bundle(MODELS / "clinc150")
    examples, niches = load_labelled(m, DATA, str(CLINC), "val", stride=10)
    assert len(examples) == 310
    by = dict(zip((e.label for e in examples), niches))
    assert by["balance"] == "banking" and by["oos"] == "oos"
    assert region_of(m, ["banking", "travel"]) == frozenset({"banking", "travel"})
    with pytest.raises(RequestError, match="not niches"):
        region_of(m, ["banking", "cooking"])
    assert region_of(m, None) is None  # no --niches: no region
    for given in ([""], ["banking", ""]):  # `--niches ""` and `--niches banking,` had meant: no region / a blank niche
        with pytest.raises(RequestError, match=r"^--niches: give comma-separated niche names, got "):
            region_of(m, given)


def test_niche_values_split_lists_and_treat_star_as_every_niche():
    from dataclasses import replace

    from edge_eco.replay import niche_values
    _, m = read_bundle(MODELS / "clinc150")
    assert niche_values(m.model("banking")) == frozenset({"banking"})
    assert niche_values(m.model("generalist")) == frozenset()  # domain = "*"
    latn = replace(m.model("banking"), niches={"language": "eng_Latn, fra_Latn"})
    assert niche_values(latn) == frozenset({"eng_Latn", "fra_Latn"})


def test_requests_from_another_data_set_are_refused():
    _, m = read_bundle(MODELS / "clinc150")
    with pytest.raises(RequestError, match="label space"):
        load_labelled(m, DATA, str(SIB), "val")


def test_a_replay_is_reused_only_for_the_model_files_it_was_taken_with(tmp_path):
    """A rebuilt bundle (or the population before a promote or rollback) has the same name and model
    ids; its replay must not be reused: the sha256s from the manifest decide, and the error names the model."""
    import json
    from dataclasses import replace

    from edge_eco.assign import Outcome
    from edge_eco.assignjob import load_outcomes, save_outcomes
    _, m = read_bundle(MODELS / "har")
    outcomes = [Outcome((0,), True, False, 0.9, 0.1, 0.0, "stationary", (1,)),
                Outcome((1, 2), False, False, 0.4, 0.3, 0.0, "walking", (2,))]
    path = tmp_path / "replay.json"
    save_outcomes(outcomes, m, path)
    assert load_outcomes(m, path) == outcomes
    assert json.loads(path.read_text())["sha256"]["active_large"] == m.model("active_large").file.sha256
    rebuilt = replace(m, models=tuple(replace(x, file=replace(x.file, sha256="0" * 64)) if x.id == "active_large"
                                      else x for x in m.models))
    with pytest.raises(RequestError, match=r"other model files.*\['active_large'\].*active_large.tflite"):
        load_outcomes(rebuilt, path)
    old = json.loads(path.read_text())
    del old["sha256"]
    path.write_text(json.dumps(old))
    with pytest.raises(RequestError, match="does not record its models' sha256s"):
        load_outcomes(m, path)
    with pytest.raises(RequestError, match="not this ecology's population"):
        load_outcomes(replace(m, name="har2"), path)

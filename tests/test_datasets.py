"""Requests files (edge_eco.datasets.load_requests): a bad line is named with the field at fault."""

from __future__ import annotations

import pytest

from edge_eco.cli import main
from edge_eco.datasets import load_requests
from edge_eco.errors import RequestError


@pytest.mark.parametrize("value", ["true", "7.5", '["a"]', '{"id": 7}'])
def test_a_label_neither_string_nor_whole_number_is_named(tmp_path, value):
    """A trial's non-string label was blamed on 'text' ("expected an object with a string 'text'")."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "ok", "label": ' + value + "}\n")
    with pytest.raises(RequestError) as err:
        load_requests(path)
    assert str(err.value) == f"{path}:2: 'label' must be a string (or a whole number), got {value}"


def test_whole_number_and_absent_labels_are_read_as_build_reads_them(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "ok", "label": 7}\n{"text": "hi"}\n{"text": "yo", "label": null}\n')
    assert [(e.text, e.label) for e in load_requests(path)] == [("ok", "7"), ("hi", None), ("yo", None)]


def test_run_names_the_label_in_one_line(fake_ecology, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "what is my account balance", "label": false}\n')
    assert main(["run", str(fake_ecology), "--requests", str(path)]) == 2
    assert capsys.readouterr().err == (f"edge-eco run: error: {path}:1: 'label' must be a string (or a whole "
                                       "number), got false\n")


def test_a_clinc150_file_without_split_asks_for_it(tmp_path):
    """A trial: `edge-eco run models/clinc150 --requests data_full.json` (no --split) said
    "data_full.json:1: not valid JSON (Expecting property name enclosed in double quotes)"."""
    import json
    path = tmp_path / "data_small.json"
    path.write_text(json.dumps({"train": [["hi", "greeting"]], "val": [], "test": [["yo", "greeting"]],
                                "oos_train": [], "oos_val": [], "oos_test": []}, indent=1))
    with pytest.raises(RequestError) as err:
        load_requests(path)
    assert str(err.value) == f"{path} is a CLINC150 data file, not JSON lines: give --split (test, train, val)"
    assert [e.text for e in load_requests(path, "test")] == ["yo"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"\n')
    with pytest.raises(RequestError, match=r"broken.jsonl:1: not valid JSON"):
        load_requests(broken)

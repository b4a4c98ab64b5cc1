"""A .tflite whose sha256 matches the manifest but whose contents are corrupt (found by a
fresh-clone trial: one byte of still_tiny's tensor name made eco.answer() raise a raw
UnicodeDecodeError from get_output_details): loading it raises ModelLoadError, and a request
routed to it is answered by the next candidate / the generalist, with the error in provenance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edge_eco
from edge_eco import backends
from edge_eco.bundle import sha256_file
from edge_eco.datasets import load_requests
from edge_eco.errors import ModelLoadError

from conftest import DATA, MODELS

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")
OFFSET, BYTE = 598, 0xFA  # inside a tensor name: not UTF-8 any more (the trial's mutation)


@pytest.fixture()
def corrupt_har(tmp_path: Path) -> Path:
    folder = tmp_path / "har"
    shutil.copytree(MODELS / "har", folder)
    model = folder / "still_tiny.tflite"
    old = sha256_file(model)
    data = bytearray(model.read_bytes())
    data[OFFSET] = BYTE
    model.write_bytes(bytes(data))
    toml = folder / "ecology.toml"
    toml.write_text(toml.read_text().replace(old, sha256_file(model)))
    return folder


def test_the_backend_translates_every_interpreter_error(corrupt_har):
    with pytest.raises(ModelLoadError, match="still_tiny.tflite.*UnicodeDecodeError"):
        backends.open_model("tflite", corrupt_har / "still_tiny.tflite")


def test_a_request_routed_to_a_model_that_cannot_load_falls_back(corrupt_har):
    still = [r for r in load_requests(DATA / "stm32_har", "test") if r.label == "stationary"][:5]
    with edge_eco.open(corrupt_har) as eco:
        for req in still:
            a = eco.answer(req.vector)
            assert a.provenance["route"]["candidates"][0] == "still_tiny"
            assert "ModelLoadError" in a.provenance["model_errors"]["still_tiny"]
            assert a.path == "coalition" and all(v[0] != "still_tiny" for v in a.provenance["votes"])
            # The generalist was asked and found the activity (the judge weighs it against the
            # other specialists' "not mine"; see judges.settle).
            assert ("generalist", "stationary") in [(v[0], v[1]) for v in a.provenance["votes"]]


@pytest.mark.parametrize("op, inputs", [(0, [0, -1, 2]), (1, [3, -1, 5])])
def test_a_layer_without_weights_is_refused_before_litert_sees_it(op, inputs, tmp_path):
    # A fully connected layer whose weights input is -1 ("no tensor", allowed for its bias) made
    # LiteRT segfault the host process at load; the structure check let -1 through anywhere.
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs((MODELS / "har" / "active_tiny.tflite").read_bytes(), 0))
    model.subgraphs[0].operators[op].inputs = np.array(inputs, np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "active_tiny.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(ModelLoadError, match=f"operator {op} has no tensor at input 1"):
        backends.open_model("tflite", path)
    model.subgraphs[0].operators[op].inputs[1:] = (inputs[0] + 1, -1)  # no bias: a valid layer
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    backends.open_model("tflite", path).close()

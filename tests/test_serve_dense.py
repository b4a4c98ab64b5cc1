"""edge-eco serve with a dense (sensor) ecology: FP32 ``features`` through a real v2 server on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import edge_eco
from edge_eco.datasets import load_requests
from edge_eco.errors import RequestError
from edge_eco.serve import InferenceServer

from conftest import DATA, MODELS

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_fp32_features_are_answered_like_the_python_api():
    windows = [ex.vector for ex in load_requests(DATA / "stm32_har", "test")[:6]]
    with edge_eco.open(MODELS / "har") as eco, InferenceServer(eco, port=0).start() as srv:
        dim = eco.feature_dim
        assert dim == 52 * 3
        meta = json.loads(urllib.request.urlopen(f"{srv.url}/v2/models/{eco.name}", timeout=10).read())
        # only the input it can answer (a trial found 'text' listed, which every request then failed on)
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, dim]}]
        rows = np.stack([np.asarray(w, np.float32).reshape(-1) for w in windows])
        status, reply = post(f"{srv.url}/v2/models/{eco.name}/infer", {"inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]})
        assert status == 200, reply
        labels = {o["name"]: o["data"] for o in reply["outputs"]}["label"]
        assert labels == [eco.answer(w, local_only=True).label for w in windows]
        status, reply = post(f"{srv.url}/v2/models/{eco.name}/infer", {"inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, dim - 1], "data": [0.0] * (dim - 1)}]})
        assert status == 400 and str(dim) in reply["error"]


def test_answer_features_refuses_text_ecologies_and_wrong_rows():
    with edge_eco.open(MODELS / "clinc150") as eco:
        assert eco.feature_dim is None
        with pytest.raises(RequestError, match="takes text"):
            eco.answer_features([0.0] * 156)
    with edge_eco.open(MODELS / "har") as eco:
        with pytest.raises(RequestError, match="156 features"):
            eco.answer_features(np.zeros(10, np.float32))
        with pytest.raises(RequestError):
            eco.answer_features(np.full(156, np.nan, np.float32))

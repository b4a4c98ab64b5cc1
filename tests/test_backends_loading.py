"""Loading modes give the same outputs as a plain load; the LiteRT backend is exact, safe on
malformed files and thread-safe. Models are built here from random weights by the build's writers
(edge_eco/build/onnx_mlp.py, tflite_mlp.py) and, for ORT, the shipped CLINC150 specialist is used as well."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_eco.backends import open_model, ort as ort_backend
from edge_eco.errors import InferenceError, ModelLoadError

ROOT = Path(__file__).resolve().parent.parent
onnx_mlp = pytest.importorskip("edge_eco.build.onnx_mlp", reason="needs the onnx package (dev extra)")
tflite_mlp = pytest.importorskip("edge_eco.build.tflite_mlp")
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (litert extra)")


def _to_ort(src: Path, dst: Path) -> None:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlp")
    ws, bs = onnx_mlp.random_mlp(64, 256, 5, seed=3)
    model = onnx_mlp.int8_mlp(ws, bs)
    onnx_mlp.save(model, tmp / "plain.onnx", external=False)
    onnx_mlp.save(model, tmp / "ext.onnx", external=True)
    _to_ort(tmp / "plain.onnx", tmp / "m.ort")
    x = np.random.default_rng(4).normal(size=(64, 64)).astype(np.float32)
    q = tflite_mlp.quantize_mlp(ws, bs, x)
    (tmp / "m.tflite").write_bytes(tflite_mlp.write_tflite(q))
    return tmp, x, q


def test_every_ort_mode_matches_a_plain_load(mlp_files):
    tmp, x, _ = mlp_files
    plain = open_model("ort", tmp / "plain.onnx")
    others = [ort_backend.open(tmp / "ext.onnx"), ort_backend.open(tmp / "ext.onnx", mode="external-noprepack"),
              ort_backend.open(tmp / "m.ort", mode="ort-mmap"), ort_backend.open(tmp / "ext.onnx", optimize=False)]
    for row in x:
        want = plain.run({"x": row[None]})
        for s in others:
            np.testing.assert_array_equal(s.run({"x": row[None]}), want)


def test_ort_modes_match_on_the_shipped_specialist(tmp_path):
    src = ROOT / "models" / "clinc150"
    shutil.copy(src / "banking.onnx", tmp_path)
    shutil.copy(src / "banking.onnx.data", tmp_path)
    _to_ort(tmp_path / "banking.onnx", tmp_path / "banking.ort")
    plain = ort_backend.open(tmp_path / "banking.onnx")
    modes = [ort_backend.open(tmp_path / "banking.onnx", mode="external-noprepack", optimize=False),
             ort_backend.open(tmp_path / "banking.ort")]
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = np.unique(rng.integers(0, 65536, 40)).astype(np.int32)
        feeds = {"indices": idx, "values": rng.random(idx.size).astype(np.float32)}
        want = plain.run(feeds)
        for s in modes:
            np.testing.assert_array_equal(s.run(feeds), want)


def test_ort_mode_must_fit_the_file(mlp_files):
    tmp, _, _ = mlp_files
    with pytest.raises(ModelLoadError, match="needs an .ort file"):
        ort_backend.open(tmp / "ext.onnx", mode="ort-mmap")
    with pytest.raises(ModelLoadError, match="unknown ONNX Runtime loading mode"):
        ort_backend.open(tmp / "ext.onnx", mode="bytes-directly")


@pytest.mark.parametrize("optimize", [True, False])  # XNNPACK, BUILTIN_WITHOUT_DEFAULT_DELEGATES
def test_tflite_matches_the_integer_reference(mlp_files, optimize):
    tmp, x, q = mlp_files
    s = open_model("tflite", tmp / "m.tflite", optimize=optimize)
    got = np.stack([s.run({"x": row[None]}) for row in x])
    want = tflite_mlp.reference_logits(q, x)
    assert np.abs(got - want).max() <= q.act[-1][0] * 1.01  # at most one output quantum
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98


def test_tflite_and_onnx_twins_agree(mlp_files):
    tmp, x, _ = mlp_files
    t = open_model("tflite", tmp / "m.tflite")
    o = open_model("ort", tmp / "plain.onnx")
    agree = np.mean([t.run({"x": r[None]}).argmax() == o.run({"x": r[None]}).argmax() for r in x])
    assert agree >= 0.9


@pytest.mark.parametrize("keep", [0, 8, 15, 64, 200, 0.5, 0.9, 0.99])
def test_truncated_tflite_is_refused_not_crashed(mlp_files, tmp_path, keep):
    data = (mlp_files[0] / "m.tflite").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(data[:n])
    with pytest.raises(ModelLoadError, match="bad.tflite"):
        open_model("tflite", bad)


def test_tflite_garbage_and_wrong_inputs(mlp_files, tmp_path):
    bad = tmp_path / "junk.tflite"
    bad.write_bytes(b"\x10\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="junk.tflite"):
        open_model("tflite", bad)
    s = open_model("tflite", mlp_files[0] / "m.tflite")
    with pytest.raises(InferenceError, match="shape"):
        s.run({"x": np.zeros((1, 63), np.float32)})
    with pytest.raises(InferenceError, match="NaN"):
        s.run({"x": np.full((1, 64), np.nan, np.float32)})
    with pytest.raises(InferenceError, match="missing input 'x'"):
        s.run({"y": np.zeros((1, 64), np.float32)})
    with pytest.raises(ModelLoadError, match="no output named"):
        open_model("tflite", mlp_files[0] / "m.tflite", output="probs")


def test_tflite_session_is_thread_safe(mlp_files):
    tmp, x, _ = mlp_files
    s = open_model("tflite", tmp / "m.tflite")
    want = np.stack([s.run({"x": row[None]}) for row in x])
    errors = []

    def worker(offset):
        for k in range(300):
            i = (k + offset) % len(x)
            if not np.array_equal(s.run({"x": x[i][None]}), want[i]):
                errors.append(i)
    threads = [threading.Thread(target=worker, args=(j * 7,)) for j in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []

"""ONNX Runtime through its C API (backends/_ort_capi.py, native/ortrun.c): the same outputs as
onnxruntime's Python binding on every shipped CLINC150 model and every loading mode, clear errors
for bad files and feeds, safe close under concurrent runs, and a warned fallback to the Python
binding when the shared library is missing. Models: the shipped bundle (models/clinc150) and an
int8 MLP written here from random weights by edge_eco/build/onnx_mlp.py."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge_eco import _native
from edge_eco import ecology as ecology_mod
from edge_eco.backends import _ort_capi, open_model, ort
from edge_eco.errors import InferenceError, ModelLoadError, NativeError

ROOT = Path(__file__).resolve().parent.parent
CLINC = ROOT / "models" / "clinc150"
pytest.importorskip("onnxruntime", reason="needs onnxruntime (a runtime dependency)")


def _sparse(rng, dim=65536):
    idx = np.unique(rng.integers(0, dim, rng.integers(1, 60))).astype(np.int32)
    return {"indices": idx, "values": rng.random(idx.size).astype(np.float32)}


def test_the_api_table_slots_are_the_librarys():
    rt = _ort_capi.runtime()
    assert rt.version.count(".") == 2
    # slots 1-2 and 93 (GetErrorCode, GetErrorMessage, ReleaseStatus) read back a status the
    # library made from a refused file: a wrong index would return garbage or crash here
    with pytest.raises(ModelLoadError, match=r"refused nothing\.onnx.*(No such file|does not exist|nothing\.onnx)"):
        ort.open(Path("/nonexistent/nothing.onnx"), binding="c")


def test_every_shipped_clinc150_model_answers_as_with_the_python_binding():
    with ecology_mod.open(CLINC, budget_bytes=0) as eco:
        rng = np.random.default_rng(5)
        requests = [_sparse(rng) for _ in range(20)]
        for m in eco.manifest.models:
            path, opt = CLINC / m.file.path, m.input != "hashed-text"
            c, py = ort.open(path, optimize=opt, binding="c"), ort.open(path, optimize=opt, binding="python")
            assert isinstance(c, ort.CSession) and isinstance(py, ort.OrtSession)
            assert c._contract == py._contract  # names, dtypes, symbolic dims read the same way
            assert c._fast is not None  # a fixed [n_labels] output: one kernel call per run
            for feeds in requests + [eco._loader._probe_feeds(m.id)]:
                got, want = c.run(feeds), py.run(feeds)
                assert got.dtype == want.dtype and got.shape == want.shape == (len(m.labels),)
                np.testing.assert_array_equal(got, want)
            c.close()
            py.close()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    onnx_mlp = pytest.importorskip("edge_eco.build.onnx_mlp", reason="needs the onnx package (dev extra)")
    import onnxruntime
    tmp = tmp_path_factory.mktemp("mlp")
    model = onnx_mlp.int8_mlp(*onnx_mlp.random_mlp(64, 256, 5, seed=3))
    onnx_mlp.save(model, tmp / "plain.onnx", external=False)
    onnx_mlp.save(model, tmp / "ext.onnx", external=True)
    opts = onnxruntime.SessionOptions()
    opts.optimized_model_filepath = str(tmp / "m.ort")
    opts.add_session_config_entry("session.save_model_format", "ORT")
    onnxruntime.InferenceSession(str(tmp / "plain.onnx"), opts, providers=["CPUExecutionProvider"])
    return tmp, np.random.default_rng(4).normal(size=(64, 64)).astype(np.float32)


@pytest.mark.parametrize("name,mode,optimize", [("plain.onnx", None, True), ("ext.onnx", None, True),
                                                ("ext.onnx", "external-noprepack", True), ("m.ort", "ort-mmap", True),
                                                ("ext.onnx", None, False)])
def test_every_loading_mode_matches_the_python_binding(mlp, name, mode, optimize):
    tmp, x = mlp
    c = ort.open(tmp / name, mode=mode, optimize=optimize, binding="c")
    py = ort.open(tmp / name, mode=mode, optimize=optimize, binding="python")
    assert c._fast is not None
    for row in x:
        np.testing.assert_array_equal(c.run({"x": row[None]}), py.run({"x": row[None]}))


def test_a_symbolic_output_is_read_back_and_matches():
    """MiniLM's logits are [batch, 151]: not preallocated, read from the runtime's own buffer."""
    path = ROOT / "models" / "minilm" / "minilm.onnx"
    c, py = ort.open(path, binding="c"), ort.open(path, binding="python")
    assert c._fast is None and c._contract == py._contract
    rng = np.random.default_rng(2)
    for batch, seq in ((1, 7), (2, 16)):
        ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        got, want = c.run(feeds), py.run(feeds)
        assert got.shape == (batch, 151)
        np.testing.assert_array_equal(got, want)


def test_the_call_by_call_paths_match_the_kernel_paths(monkeypatch):
    """Without the compiled kernel every OrtApi call goes through cffi on its own; same outputs."""
    path = CLINC / "banking.onnx"
    fast = ort.open(path, optimize=False, binding="c")
    rt = _ort_capi.runtime()
    monkeypatch.setattr(rt, "calls", None)
    slow = ort.open(path, optimize=False, binding="c")
    assert slow._fast is None and fast._fast is not None
    rng = np.random.default_rng(9)
    for _ in range(30):
        feeds = _sparse(rng)
        np.testing.assert_array_equal(slow.run(feeds), fast.run(feeds))
    with pytest.raises(InferenceError, match="indices element out of data bounds"):
        slow.run({"indices": np.array([70000], np.int32), "values": np.ones(1, np.float32)})
    slow.close()
    fast.close()


def test_bad_files_and_feeds_get_clear_errors(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x01not a model" * 20)
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx.*Protobuf parsing failed"):
        ort.open(bad, binding="c")
    shutil.copy(CLINC / "banking.onnx", tmp_path)
    shutil.copy(CLINC / "banking.onnx.data", tmp_path)
    with pytest.raises(ModelLoadError, match=r"no output named 'probs' \(outputs: \['logits'\]\)"):
        ort.open(tmp_path / "banking.onnx", output="probs", binding="c")
    s = ort.open(tmp_path / "banking.onnx", binding="c")
    ok = {"indices": np.array([3, 9], np.int32), "values": np.array([0.6, 0.8], np.float32)}
    with pytest.raises(InferenceError, match="dtype int64 where the model expects int32"):
        s.run({**ok, "indices": ok["indices"].astype(np.int64)})
    with pytest.raises(InferenceError, match="dimension 'nnz' is 3 here but 2"):
        s.run({**ok, "values": np.ones(3, np.float32)})
    with pytest.raises(InferenceError, match="missing input 'values'"):
        s.run({"indices": ok["indices"]})
    with pytest.raises(InferenceError, match=r"onnxruntime run failed: .*out of data bounds"):
        s.run({**ok, "indices": np.array([70000, 9], np.int32)})
    want = s.run(ok)
    np.testing.assert_array_equal(s.run({k: v[::-1][::-1] for k, v in ok.items()}), want)  # non-contiguous views
    s.close()
    s.close()  # twice is harmless
    with pytest.raises(InferenceError, match="the session was closed"):
        s.run(ok)


def test_close_while_runs_are_in_flight_frees_once_and_never_crashes():
    s = ort.open(CLINC / "banking.onnx", binding="c")
    feeds = {"indices": np.array([1, 2, 3], np.int32), "values": np.full(3, 0.5, np.float32)}
    want = s.run(feeds)
    outcomes: list[str] = []
    start = threading.Barrier(5)

    def worker():
        start.wait()
        for _ in range(400):
            try:
                np.testing.assert_array_equal(s.run(feeds), want)
                outcomes.append("ok")
            except InferenceError as exc:
                assert "closed" in str(exc)
                outcomes.append("closed")
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    while outcomes.count("ok") < 50:
        pass
    s.close()
    for t in threads:
        t.join()
    assert outcomes.count("closed") > 0 and outcomes.count("ok") >= 50
    assert s._handle is None and s._running == 0  # freed by close or by the last run in flight


def test_the_kernel_refuses_what_it_cannot_run():
    rt = _ort_capi.runtime()
    s = ort.open(CLINC / "banking.onnx", binding="c")
    address = int(rt.ffi.cast("uintptr_t", s._handle))
    with pytest.raises(NativeError, match="17 inputs; the kernel takes at most 16"):
        rt.calls.job(address, [f"i{k}" for k in range(17)], [1] * 17, [1] * 17, "logits", (16,), 1)
    strings = rt.calls.job(address, ["indices", "values"], [8, 1], [1, 1], "logits", (16,), 1)  # 8 = string
    with pytest.raises(NativeError, match="element type without a fixed size"):
        strings.run([np.zeros(1, np.int32), np.zeros(1, np.float32)], np.empty(16, np.float32))
    job = rt.calls.job(address, ["indices", "values"], [6, 1], [1, 1], "logits", (16,), 1)
    out = np.empty(16, np.float32)
    feeds = {"indices": np.array([5, 6], np.int32), "values": np.array([0.6, 0.8], np.float32)}
    assert job.run([feeds["indices"], feeds["values"]], out) == 0
    np.testing.assert_array_equal(out, s.run(feeds))
    s.close()
    assert _native.OrtCalls.MAX_INPUTS == 16


def test_missing_shared_library_falls_back_to_the_python_binding_with_one_warning(monkeypatch):
    def missing():
        raise ModelLoadError("onnxruntime's shared library (libonnxruntime.so*) is not in /x")
    monkeypatch.setattr(_ort_capi, "_runtime", None)
    monkeypatch.setattr(_ort_capi, "library_path", missing)
    monkeypatch.setitem(ort._binding, "warned", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = ort.open(CLINC / "banking.onnx")
        b = ort.open(CLINC / "banking.onnx")
    assert isinstance(a, ort.OrtSession) and isinstance(b, ort.OrtSession)
    assert [str(w.message) for w in seen if "C API is unavailable" in str(w.message)] == [
        "edge_eco: ONNX Runtime's C API is unavailable (onnxruntime's shared library (libonnxruntime.so*) is not "
        "in /x); using its Python binding, whose loads hold the interpreter lock"]
    with pytest.raises(ModelLoadError, match="not in /x"):
        ort.open(CLINC / "banking.onnx", binding="c")


def test_binding_choice_is_validated():
    with pytest.raises(ModelLoadError, match=r"unknown ONNX Runtime binding 'java' \(known: \['c', 'python'\]\)"):
        ort.open(CLINC / "banking.onnx", binding="java")
    with pytest.raises(ModelLoadError, match="unknown ONNX Runtime binding"):
        ort.set_default_binding("java")
    assert ort.set_default_binding("python") == "c"
    try:
        assert isinstance(ort.open(CLINC / "banking.onnx"), ort.OrtSession)
    finally:
        assert ort.set_default_binding("c") == "python"


@pytest.mark.parametrize("threads", [0, -1, 10**6, 2.0, True, "4"])
def test_a_thread_count_a_runtime_would_turn_into_a_huge_pool_is_refused(threads):
    # a trial passed threads=10**6 to ort.open: ONNX Runtime began building a million-thread pool
    path = next(CLINC.glob("*.onnx"))
    for binding in ("c", "python"):
        with pytest.raises(ModelLoadError, match=r"threads must be a whole number from 1 to 1024, not "):
            ort.open(path, threads=threads, binding=binding)
    with pytest.raises(ModelLoadError, match="threads must be a whole number"):
        open_model("tflite", ROOT / "models" / "har" / "active_tiny.tflite", threads=threads)
    with pytest.raises(ModelLoadError, match="threads must be a whole number"):
        open_model("ort", path, threads=threads)
    session = ort.open(path, threads=8, binding="c")  # an in-range count still loads
    session.close()


@pytest.mark.parametrize("binding", ["c", "python", "tflite"])
def test_feeds_that_are_not_a_dict_of_arrays_or_name_an_unknown_input_are_refused(binding):
    # a trial's feeds as a list raised AttributeError, and an extra (typo'd) input was silently dropped
    if binding == "tflite":
        s = open_model("tflite", ROOT / "models" / "har" / "active_tiny.tflite")
        name = s._names[0]
        ok = {name: np.zeros(s._specs[0][2], np.float32)}
        bad_value = {name: "not numbers"}
    else:
        s = ort.open(CLINC / "banking.onnx", binding=binding)
        name = "indices"
        ok = {"indices": np.array([3, 9], np.int32), "values": np.array([0.6, 0.8], np.float32)}
        bad_value = {**ok, "values": [0.6, 0.8]}
    with pytest.raises(InferenceError, match=r"feeds must be a dict of input name -> array, not a list"):
        s.run(list(ok.values()))
    with pytest.raises(InferenceError, match=r"unknown input 'indicies' \(model inputs: \["):
        s.run({**ok, "indicies": ok[name]})
    with pytest.raises(InferenceError, match=rf"missing input '{name}' \(model inputs"):
        s.run({("x2" if k == name else k): v for k, v in ok.items()})  # as many feeds as inputs, one misnamed
    with pytest.raises(InferenceError):
        s.run(bad_value)
    assert np.isfinite(s.run(ok)).all()
    s.close()


def test_a_long_runtime_message_keeps_its_reason_at_the_end():
    from edge_eco.backends import brief
    node = "Non-zero status code returned while running MatMulInteger node. Name:'/layers.0/MatMul' " * 4
    text = brief(node + "Status Message: the output shape [1,151] does not match the declared [1,150]")
    assert len(text) <= 400 and text.startswith("Non-zero status code returned")
    assert text.endswith("the output shape [1,151] does not match the declared [1,150]")
    assert brief("  short\n  message ") == "short message"

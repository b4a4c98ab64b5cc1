"""A model whose graph runs for ever (an ONNX Loop of 10**15 trips: a trial's copy of the CLINC150
bundle with one specialist swapped for it hung `answer` and `edge_eco.open`'s probe for good) is
stopped after ``max_run_ms`` on both ONNX Runtime bindings, reported as InferenceError, and the
same session answers its next, short run. In an ecology the stopped model counts as failing: the
load's probe refuses it (ModelLoadError) and requests are answered by the others.

The looping models are written here with the onnx package (dev extra)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from edge_eco.backends import open_model, ort, runlimit
from edge_eco.bundle import sha256_file
from edge_eco.errors import InferenceError, ManifestError, ModelLoadError
from edge_eco.manifest import parse_manifest

from conftest import MODELS

onnx = pytest.importorskip("onnx", reason="needs the onnx package (dev extra)")
from onnx import TensorProto, helper  # noqa: E402

FOREVER = 10 ** 15
LABELS = 16


def loop_model(path: Path, *, trips: int | None = None, fixed: bool = True, over: int | None = None) -> Path:
    """A model with the hashed-text contract (``indices`` int32 [n], ``values`` float [n]) and an
    output ``logits`` float [16] that a Loop carries through ``trips`` iterations; with ``trips``
    None the count is an input ``trips`` (int64 [1]). ``fixed``: the output's shape is declared
    (the C binding's bound-job path), else symbolic (its read-back path). ``over``: the loop runs
    ``trips`` times only for requests of more than ``over`` features, else once."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [LABELS])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [LABELS])])
    inputs = [helper.make_tensor_value_info("indices", TensorProto.INT32, ["n"]),
              helper.make_tensor_value_info("values", TensorProto.FLOAT, ["n"])]
    init = [helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
            helper.make_tensor("base", TensorProto.FLOAT, [LABELS], list(np.linspace(-1, 1, LABELS))),
            helper.make_tensor("scalar", TensorProto.INT64, [0], [])]
    nodes = [helper.make_node("ReduceSum", ["values"], ["total"], keepdims=0),
             helper.make_node("Add", ["base", "total"], ["v0"])]
    if trips is None:
        inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, [1]))
        nodes.append(helper.make_node("Reshape", ["trips", "scalar"], ["m"]))
    elif over is not None:
        init += [helper.make_tensor("trips_over", TensorProto.INT64, [], [trips]),
                 helper.make_tensor("once", TensorProto.INT64, [], [1]),
                 helper.make_tensor("over", TensorProto.INT64, [], [over])]
        nodes += [helper.make_node("Size", ["indices"], ["n_features"]),
                  helper.make_node("Greater", ["n_features", "over"], ["long"]),
                  helper.make_node("Where", ["long", "trips_over", "once"], ["m"])]
    else:
        init.append(helper.make_tensor("m", TensorProto.INT64, [], [trips]))
    nodes.append(helper.make_node("Loop", ["m", "cond", "v0"], ["logits"], body=body))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [LABELS] if fixed else ["k"])
    graph = helper.make_graph(nodes, "loop", inputs, [out], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _feeds(trips: int | None = None) -> dict[str, np.ndarray]:
    feeds = {"indices": np.array([3, 7], np.int32), "values": np.array([0.5, 0.25], np.float32)}
    if trips is not None:
        feeds["trips"] = np.array([trips], np.int64)
    return feeds


WANT = np.linspace(-1, 1, LABELS).astype(np.float32) + np.float32(0.75)  # base + sum(values), in float32


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("loops")
    loop_model(tmp / "fixed.onnx")
    loop_model(tmp / "symbolic.onnx", fixed=False)
    return tmp


def _timed(fn):
    start = time.perf_counter()
    try:
        fn()
    except InferenceError as exc:
        return exc, time.perf_counter() - start
    raise AssertionError("the run was not stopped")


@pytest.mark.parametrize("binding,name", [("c", "fixed.onnx"), ("c", "symbolic.onnx"),
                                          ("python", "fixed.onnx"), ("python", "symbolic.onnx")])
def test_a_runaway_run_is_stopped_and_the_session_runs_again(models, binding, name):
    session = ort.open(models / name, binding=binding, max_run_ms=150)
    if binding == "c":
        assert (session._fast is not None) == (name == "fixed.onnx")  # both C paths are covered
    for _ in range(2):  # the stop flag is cleared: a second runaway is stopped, not refused at once
        exc, took = _timed(lambda: session.run(_feeds(FOREVER)))
        assert str(exc) == "onnxruntime run stopped: it ran past 150 ms, the limit of one run (policy max_run_ms)"
        assert 0.15 <= took < 2.0, took
        out = session.run(_feeds(1000))  # the same session (and bound job): a short run answers
        np.testing.assert_allclose(out.reshape(-1), WANT, rtol=1e-6, atol=1e-7)
    session.close()


def test_runs_under_the_limit_are_not_stopped_and_a_session_without_one_is_not_watched(models):
    session = ort.open(models / "fixed.onnx", binding="c", max_run_ms=5000)
    for _ in range(50):
        np.testing.assert_allclose(session.run(_feeds(10)), WANT, rtol=1e-6, atol=1e-7)
    session.close()
    free = ort.open(models / "fixed.onnx", binding="c")
    assert free.max_run_ms is None and free._fast is not None
    np.testing.assert_allclose(free.run(_feeds(10)), WANT, rtol=1e-6, atol=1e-7)
    free.close()


def test_concurrent_runaways_and_short_runs_on_one_session(models):
    session = ort.open(models / "fixed.onnx", binding="c", max_run_ms=200)
    results: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            results[i] = session.run(_feeds(FOREVER if i % 2 else 100)).copy()
        except InferenceError as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    for i, r in results.items():
        if i % 2:
            assert isinstance(r, InferenceError) and "ran past 200 ms" in str(r), r
        else:
            np.testing.assert_allclose(r, WANT, rtol=1e-6, atol=1e-7)
    session.close()


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), 10 ** 400, 600_001, True, np.bool_(True), "100"])
@pytest.mark.parametrize("binding", ["c", "python"])
def test_a_bad_limit_is_refused(models, bad, binding):
    """A trial's max_run_ms=float('inf') raised a raw OverflowError."""
    with pytest.raises(ModelLoadError) as err:
        ort.open(models / "fixed.onnx", max_run_ms=bad, binding=binding)
    assert str(err.value) == f"max_run_ms must be a positive number of milliseconds up to 600000, or None, not {bad!r}"


@pytest.mark.parametrize("good", [np.float32(100), np.int64(100), np.float64(100), 100, 100.0])
def test_numpy_limits_are_numbers(models, good):
    """A trial's np.float32(100) and np.int64(100) were refused while np.float64(100) passed."""
    session = ort.open(models / "fixed.onnx", max_run_ms=good)
    assert session.max_run_ms == 100.0 and type(session.max_run_ms) is float
    session.close()


def test_open_model_passes_the_limit_to_onnx_runtime(models):
    session = open_model("ort", models / "fixed.onnx", output="logits", max_run_ms=100)
    assert session.max_run_ms == 100.0
    session.close()


@pytest.mark.parametrize("line,error", [
    ("max_run_ms = 0.5", "max_run_ms"), ("max_run_ms = 700000", "max_run_ms"), ('max_run_ms = "fast"', "max_run_ms")])
def test_the_manifest_limit_is_range_checked(line, error):
    text = (MODELS / "clinc150" / "ecology.toml").read_text()
    assert parse_manifest(text).policy.max_run_ms == 1000.0  # the default
    with pytest.raises(ManifestError, match=error):
        parse_manifest(text.replace("[policy]\n", f"[policy]\n{line}\n", 1))
    assert parse_manifest(text.replace("[policy]\n", "[policy]\nmax_run_ms = 250\n", 1)).policy.max_run_ms == 250.0


@pytest.fixture(scope="module")
def looping_home(tmp_path_factory) -> Path:
    """models/clinc150 with home.onnx replaced by a loop for ever (its hash updated) and
    ``max_run_ms = 300``."""
    folder = tmp_path_factory.mktemp("looping") / "clinc150"
    shutil.copytree(MODELS / "clinc150", folder)
    toml = folder / "ecology.toml"
    old = sha256_file(folder / "home.onnx")
    loop_model(folder / "home.onnx", trips=FOREVER)
    text = toml.read_text().replace(old, sha256_file(folder / "home.onnx"))
    assert "[policy]\n" in text
    toml.write_text(text.replace("[policy]\n", "[policy]\nmax_run_ms = 300\n", 1))
    return folder


def test_an_ecology_answers_around_a_model_that_loops_for_ever(looping_home):
    start = time.perf_counter()
    with edge_eco.open(looping_home, remote_url=None) as eco:
        assert eco.manifest.policy.max_run_ms == 300.0
        a = eco.answer("add milk to my shopping list", local_only=True)
        b = eco.answer("what is my account balance", local_only=True)
        with pytest.raises(ModelLoadError, match=r"home.*ran past 300 ms"):
            eco.predict_with("home", "add milk to my shopping list")
    took = time.perf_counter() - start
    assert a.provenance["route"]["candidates"][0] == "home"  # routed to it, answered without it
    assert "home" in a.provenance["model_errors"] and "ran past 300 ms" in a.provenance["model_errors"]["home"]
    assert b.label == "balance"
    assert took < 20, took  # probe runs stopped at ~0.3 s each, not a hang


def test_a_model_whose_probe_was_stopped_is_not_loaded_again_by_every_request(looping_home):
    """A trial's 200 requests took 38 s against 0.49 s: each one routed to the looping model
    loaded it again and waited out the limit."""
    with edge_eco.open(looping_home, remote_url=None) as eco:
        eco.answer("add milk to my shopping list", local_only=True)  # the failed load: ~0.3 s
        start = time.perf_counter()
        answers = [eco.answer(t, local_only=True) for t in ["add milk to my shopping list",
                                                               "what is on my calendar today"] * 10]
        took = time.perf_counter() - start
        stats, public = eco.residency.stats, eco.stats()
    assert took < 0.25, took  # not 20 x 0.3 s: refused at once while it backs off (1 s)
    for a in answers:
        assert a.provenance["route"]["candidates"][0] == "home"
        error = a.provenance["model_errors"]["home"]
        assert "ran past 300 ms" in error and "its load failed 1 time; not tried again for" in error, error
    assert stats.failed_loads == 1 and stats.refused_loads == 20
    assert (public["failed_loads"], public["refused_loads"], public["backing_off"]) == (1, 20, ["home"])


def test_the_manifest_writer_keeps_a_set_limit_and_omits_the_default():
    from edge_eco.tomlwrite import manifest_to_toml
    text = (MODELS / "clinc150" / "ecology.toml").read_text()
    assert "max_run_ms" not in manifest_to_toml(parse_manifest(text))  # shipped manifests rebuild byte-identical
    out = manifest_to_toml(parse_manifest(text.replace("[policy]\n", "[policy]\nmax_run_ms = 250\n", 1)))
    assert "max_run_ms = 250.0\n" in out and parse_manifest(out).policy.max_run_ms == 250.0


def test_profile_names_the_model_whose_run_was_stopped(looping_home):
    from edge_eco.bundle import read_bundle
    from edge_eco.profile import profile_ecology
    root, manifest = read_bundle(looping_home)
    start = time.perf_counter()
    with pytest.raises(InferenceError) as err:
        profile_ecology(root, manifest, ["add milk to my shopping list"], repeats=1, runs=1)
    assert str(err.value) == ("model 'home': onnxruntime run stopped: it ran past 300 ms, the limit of one run "
                              "(policy max_run_ms)")
    assert time.perf_counter() - start < 20


def test_serve_refuses_to_start_naming_the_model_whose_warm_up_run_was_stopped(looping_home):
    from edge_eco.warmup import warm
    with edge_eco.open(looping_home, remote_url=None) as eco:
        with pytest.raises(ModelLoadError) as err:
            warm(eco)
    assert str(err.value).startswith("model 'home' fails the warm-up request: home.onnx:")
    assert "ran past 300 ms" in str(err.value)


def test_ctrl_c_stops_a_command_inside_a_long_run(looping_home, tmp_path):
    """A trial's two SIGINTs to `edge-eco run` on a bundle with max_run_ms = 600000 did nothing:
    a signal reaches Python only once the run it interrupts returns (here after ten minutes)."""
    import signal
    import subprocess
    import sys
    slow = tmp_path / "slow"
    shutil.copytree(looping_home, slow)
    toml = slow / "ecology.toml"
    toml.write_text(toml.read_text().replace("max_run_ms = 300\n", "max_run_ms = 600000\n"))
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"text": "add milk to my shopping list"}\n')
    edge_eco_cli = str(Path(sys.executable).parent / "edge-eco")
    proc = subprocess.Popen([edge_eco_cli, "run", str(slow), "--requests", str(requests), "--no-baselines"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # started, and inside the looping model's probe run
        assert proc.poll() is None, proc.communicate()
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
        took = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130, proc.stderr.read()[-2000:]
    assert took < 5, took  # the watchdog's next wake-up (at most 250 ms), then the way out


def test_the_interrupt_pipe_is_given_back():
    import signal
    with runlimit.interrupts_stop_runs():
        inside = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(inside)
        assert inside != -1
    assert signal.set_wakeup_fd(-1) == -1  # restored: nothing left installed


@pytest.mark.parametrize("binding,name", [("c", "fixed.onnx"), ("c", "symbolic.onnx"),
                                          ("python", "fixed.onnx"), ("python", "symbolic.onnx")])
def test_a_run_is_stopped_at_the_threads_deadline_before_its_limit(models, binding, name):
    from edge_eco.backends import deadline_in, set_run_deadline
    session = ort.open(models / name, binding=binding, max_run_ms=5000)  # the watchdog wakes every 250 ms
    before = set_run_deadline(deadline_in(200))
    try:
        exc, took = _timed(lambda: session.run(_feeds(FOREVER)))
    finally:
        set_run_deadline(before)
    assert str(exc) == "onnxruntime run stopped: the request's deadline (deadline_ms) passed while it ran"
    assert 0.2 <= took < 1.5, took
    np.testing.assert_allclose(session.run(_feeds(1000)).reshape(-1), WANT, rtol=1e-6, atol=1e-7)
    session.close()


@pytest.fixture(scope="module")
def slow_on_long_requests(tmp_path_factory) -> Path:
    """models/clinc150 whose home.onnx loops for ever on requests of more than 40 features (its
    load probe, 16, passes), ``max_run_ms = 5000``."""
    folder = tmp_path_factory.mktemp("slow-long") / "clinc150"
    shutil.copytree(MODELS / "clinc150", folder)
    toml = folder / "ecology.toml"
    old = sha256_file(folder / "home.onnx")
    loop_model(folder / "home.onnx", trips=FOREVER, over=40)
    text = toml.read_text().replace(old, sha256_file(folder / "home.onnx"))
    toml.write_text(text.replace("[policy]\n", "[policy]\nmax_run_ms = 5000\n", 1))
    return folder


def test_an_answers_deadline_stops_its_local_run(slow_on_long_requests):
    """A trial's answer(..., deadline_ms=500) routed to a looping model ran for the whole
    max_run_ms: the deadline bounded only the remote call."""
    with edge_eco.open(slow_on_long_requests, remote_url=None) as eco:
        short = eco.answer("set an alarm", local_only=True)           # few features: home answers
        start = time.perf_counter()
        a = eco.answer("add milk to my shopping list", deadline_ms=300, local_only=True)
        took = time.perf_counter() - start
        stats = eco.stats()
    assert "model_errors" not in short.provenance
    assert a.provenance["route"]["candidates"][0] == "home"
    assert a.provenance["model_errors"]["home"] == ("InferenceError: onnxruntime run stopped: the request's "
                                                    "deadline (deadline_ms) passed while it ran")
    assert 0.3 <= took < 1.5, took  # not 5 s: the watchdog's next wake-up after the deadline
    # a run stopped at a deadline is not a failed load: the model stays, nothing backs off
    assert stats["failed_loads"] == 0 and stats["backing_off"] == [] and "home" in stats["resident"]


def test_a_session_collected_while_the_watchdog_holds_its_lock_does_not_deadlock_it():
    """A fresh-clone CI run hung on the first runaway run: the watchdog thread was blocked for
    good on its own lock. A garbage collection while it held the lock had run a dropped session's
    __del__ (close -> unwatch) on that same thread."""
    class Dropped:
        max_run_ms = 100.0

    dog, done = runlimit.Watchdog(), threading.Event()

    def collect_while_locked() -> None:
        with dog._lock:  # as in the watchdog's loop
            dog.unwatch(Dropped())  # what the collected session's __del__ does, on this thread
        done.set()
    t = threading.Thread(target=collect_while_locked, daemon=True)
    t.start()
    t.join(5)
    assert done.is_set()

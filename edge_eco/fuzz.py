"""Corrupt-artefact fuzz harness: damage a shipped bundle many ways; every case must be refused.

Two layers:

- ``bundle``: a copy of the bundle with one damage (any listed file truncated, bit-flipped,
  emptied, replaced by a Git LFS pointer or another format's magic, removed; the manifest
  damaged or edited) goes through ``edge_eco.open`` and, if that succeeds, every model is loaded
  and asked a probe request (text for a text ecology, synthetic accelerometer windows for a
  sensor ecology such as models/har). A refusal is an :class:`EdgeEcoError` before the model is ready.
- a backend (``ort``; others plug in through :data:`LOADERS` and
  ``fuzz_cases.BACKEND_MUTATIONS``): the damaged model file goes straight to the backend, as if
  its sha256 had been recomputed over the damage (a corrupt file that was signed, or replaced
  after the check). This exercises the structural preflight and the runtime's own checks.

Cases run in a child process, a batch at a time; if the child dies (a segfault in a runtime) the
case is counted as a crash and a new child resumes after it, so the harness itself never dies.
Shell: owns files and processes.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .bundle import MANIFEST_NAME, read_bundle
from .errors import EdgeEcoError
from .fuzz_cases import BACKEND_MUTATIONS, Mutation, apply, bundle_mutations

PROBES = ("what is my checking account balance", "book a flight to paris", "set an alarm for six am")


@dataclass
class FuzzReport:
    """Counts of one fuzz run. ``outcomes`` maps an outcome to its count:
    ``refused`` (an EdgeEcoError before the model was ready), ``accepted-same`` (a damage that
    still forms a valid model and answers like the pristine one), ``accepted-changed`` (valid,
    but answers differ), ``foreign-error`` (a non-edge_eco exception: a bug), ``crash`` (the
    process died), ``hang`` (no result within the case timeout)."""

    layer: str
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # refusals by error type
    must_refuse_accepted: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # foreign errors, crashes, hangs
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No crash, hang or foreign error, and every must-refuse case refused."""
        return not self.failures and not self.must_refuse_accepted


def _backend_models(root: Path, backend: str) -> list[tuple[str, int, str | None, int]]:
    """(model file, size, its ``.data`` weight file or None, size) of every model of ``backend``."""
    _, manifest = read_bundle(root, verify=False)
    out = []
    for m in manifest.models:
        if m.backend == backend:
            g, d = m.file.path, m.file.path + ".data"
            has = (root / d).is_file()
            out.append((g, (root / g).stat().st_size, d if has else None, (root / d).stat().st_size if has else 0))
    return out


def cases_for(layer: str, root: Path, n: int, seed: int) -> list[Mutation]:
    """The ``n`` deterministic cases of ``layer`` (``bundle`` or a backend name) for ``root``."""
    rng = random.Random(f"{layer}:{seed}")
    if layer == "bundle":
        _, manifest = read_bundle(root, verify=False)
        files = [(f.path, (root / f.path).stat().st_size) for f in manifest.all_files()]
        return bundle_mutations(files, (root / MANIFEST_NAME).read_text("utf-8"), rng, n)
    if layer not in BACKEND_MUTATIONS:
        raise EdgeEcoError(f"no mutation set for backend {layer!r} (known: {sorted(BACKEND_MUTATIONS)})")
    models = _backend_models(root, MODELS_OF.get(layer, layer))
    if not models:
        raise EdgeEcoError(f"{root} has no {MODELS_OF.get(layer, layer)} models to damage (--layer {layer})")
    return BACKEND_MUTATIONS[layer](models, rng, n)


def _materialize(src: Path, dst: Path, case: Mutation) -> None:
    """``dst`` = hard links to ``src``'s files, with the case's damaged files written fresh."""
    dst.mkdir()
    damage = {case.target: (case.op, case.args)}
    damage.update({t: (op, args) for t, op, args in case.extra})
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        elif p.name not in damage:
            os.link(p, dst / p.name)
    for name, (op, args) in damage.items():
        data = apply(op, args, (src / name).read_bytes() if (src / name).is_file() else b"")
        if data is not None:
            (dst / name).write_bytes(data)


# -- loaders: made inside the worker from the pristine bundle; a loader returns a fingerprint of
# -- the answers of a damaged copy or raises

Loader = Callable[[Path, Mutation, dict], Any]


def dense_probes(samples: int, axes: int) -> list[Any]:
    """Three synthetic accelerometer windows (mg, [samples, axes]): lying still (gravity on the
    last axis), a 2 Hz sway and a 3 Hz swing, for the probes of a sensor ecology."""
    import numpy as np

    t = np.arange(samples)[:, None] / 26.0
    amp = np.linspace(1.0, 0.6, axes)[None]
    still = np.zeros((samples, axes))
    still[:, -1] = 1000.0
    return [still.astype(np.float32)] + [(still + a * amp * np.sin(2 * np.pi * hz * t + np.arange(axes)[None]))
                                         .astype(np.float32) for hz, a in ((2.0, 400.0), (3.0, 1600.0))]


def _bundle_loader(src: Path) -> Loader:
    _, manifest = read_bundle(src, verify=False)
    dense = manifest.dense  # a sensor ecology answers windows, a text ecology answers text

    def load(folder: Path, case: Mutation, open_options: dict) -> Any:
        import edge_eco

        with edge_eco.open(folder, **open_options) as eco:
            if dense is not None:
                windows = [w.reshape(-1) for w in dense_probes(dense.samples, dense.axes)]
                out = [eco.answer_features(w, local_only=True).label for w in windows]
                first: Any = windows[1]
            else:
                out, first = [eco.answer(p, local_only=True).label for p in PROBES], PROBES[0]
            for m in eco.manifest.models:
                out.append(eco.predict_with(m.id, first).label)
            return out
    return load


def backend_loader(backend: str) -> Callable[[Path], Loader]:
    """A loader factory for the backend layer of ``backend``: load the damaged model file with
    the backend, probe it on its manifest contract (as ``Ecology`` does before a model is
    ready), run it once. A TFLite backend plugs in as ``LOADERS["tflite"] = backend_loader("tflite")``
    with its mutation set in ``fuzz_cases.BACKEND_MUTATIONS``."""
    def make(src: Path) -> Loader:
        import numpy as np

        from . import backends
        from .artifacts import probe

        _, manifest = read_bundle(src, verify=False)
        labels = {m.file.path: len(m.labels) for m in manifest.models}
        if manifest.dense is not None:  # a sensor ecology: one standardized feature vector
            from .routerfile import read_router

            dim = read_router(src / manifest.dense.file.path)[1]["mean"].shape[0]
            feeds = {"x": np.linspace(-1.0, 1.0, dim, dtype=np.float32)[None]}
        else:
            feeds = {"indices": np.array([1, 5, 900], np.int32), "values": np.array([1.0, 0.5, 0.25], np.float32)}

        def load(folder: Path, case: Mutation, open_options: dict) -> Any:
            graph = case.target.removesuffix(".data")
            session = backends.open_model(backend, folder / graph, optimize=False)
            try:
                probe(session, feeds, labels[graph], graph)
                out = session.run(feeds)
            finally:
                session.close()
            return [round(float(x), 3) for x in np.asarray(out).reshape(-1)]
        return load
    return make


LOADERS: dict[str, Callable[[Path], Loader]] = {"bundle": _bundle_loader, "ort": backend_loader("ort"),
                                                "tflite": backend_loader("tflite")}
# A layer whose models are those of another backend in the manifest (layer -> backend name).
MODELS_OF: dict[str, str] = {}


def _import_plugin(plugin: str) -> None:
    """Import the module ``plugin`` (it registers more layers).

    Raises:
        EdgeEcoError: it cannot be imported (not found, or it fails as it runs).
    """
    try:
        importlib.import_module(plugin)
    except Exception as exc:  # noqa: BLE001 - whatever a plugin raises as it is imported, said in one line
        raise EdgeEcoError(f"fuzz plugin {plugin!r} cannot be imported: {type(exc).__name__}: {exc} "
                           "(give a module name on the Python path; PYTHONPATH=DIR adds a folder)") from exc


def _worker(layer: str, root: str, n: int, seed: int, start: int, signed_key: str | None,
            plugin: str | None = None) -> None:
    """Child process: run cases ``start..n-1``, one JSON line per case on stdout."""
    if plugin:
        _import_plugin(plugin)
    # Results go to a private copy of stdout; a runtime that prints (ONNX Runtime's C++ logger
    # does) writes to /dev/null instead of into the result stream.
    results = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    src = Path(root)
    cases = cases_for(layer, src, n, seed)
    load = LOADERS[layer](src)
    print(json.dumps({"ready": True}), file=results, flush=True)  # the per-case timeout starts now
    options: dict = {}
    if signed_key:
        options["trust"] = signed_key
    scratch = Path(tempfile.mkdtemp(prefix="edge_eco-fuzz-", dir=src.parent))
    pristine: dict[str, Any] = {}  # what the undamaged bundle (or model) answers
    try:
        for i in range(start, n):
            case, folder = cases[i], scratch / f"case{i}"
            key = "" if layer == "bundle" else case.target.removesuffix(".data")
            if key not in pristine:
                try:
                    pristine[key] = load(src, Mutation(key, "none"), options)
                except Exception as exc:  # noqa: BLE001 - reported, the harness stops
                    print(json.dumps({"fatal": f"the pristine bundle fails: {type(exc).__name__}: {exc}"}),
                          file=results, flush=True)
                    return
            _materialize(src, folder, case)
            try:
                got = load(folder, case, options)
                outcome, err = ("accepted-same" if got == pristine[key] else "accepted-changed"), ""
            except EdgeEcoError as exc:
                outcome, err = "refused", f"{type(exc).__name__}: {str(exc)[:160]}"
            except Exception as exc:  # noqa: BLE001 - that is what the harness looks for
                outcome, err = "foreign-error", f"{type(exc).__name__}: {str(exc)[:160]}"
            shutil.rmtree(folder, ignore_errors=True)
            print(json.dumps({"i": i, "outcome": outcome, "error": err}), file=results, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_fuzz(layer: str, root: str | Path, n: int, *, seed: int = 0, case_timeout_s: float = 30.0,
             signed: bool = False, plugin: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> FuzzReport:
    """Run ``n`` cases of ``layer`` (``bundle``, or a backend name such as ``ort``) on a copy of
    the bundle at ``root``.

    Args:
        signed: sign the copy with a throw-away Ed25519 key and open it with that key trusted and
            a signature required; every case must then be refused (bundle layer only).
        plugin: a module imported first (here and in each worker) that registers more layers in
            :data:`LOADERS` and ``fuzz_cases.BACKEND_MUTATIONS`` (e.g. a TFLite backend's).

    Returns:
        A :class:`FuzzReport` with the outcome counts.

    Raises:
        EdgeEcoError: unknown layer, a plugin that cannot be imported, or the pristine bundle
            itself does not open.
    """
    if plugin:
        _import_plugin(plugin)
    if layer not in LOADERS:
        raise EdgeEcoError(f"unknown fuzz layer {layer!r} (known: {sorted(LOADERS)})")
    cases = cases_for(layer, Path(root), n, seed)
    report, t0 = FuzzReport(layer, n), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge_eco-fuzz-src-") as tmp:
        src = Path(tmp) / Path(root).name
        shutil.copytree(root, src)
        signed_key = None
        if signed:
            from .signing import generate_key, sign_bundle

            if layer != "bundle":
                raise EdgeEcoError("signed fuzzing applies to the bundle layer")
            generate_key(Path(tmp) / "fuzz.key")
            sign_bundle(src, Path(tmp) / "fuzz.key")
            signed_key = str(Path(tmp) / "fuzz.key.pub")
        start = 0
        while start < n:
            start = _run_batch(layer, src, n, seed, start, signed_key, cases, report, case_timeout_s, progress,
                               plugin)
    report.seconds = time.perf_counter() - t0
    return report


def _record(rec: dict, cases: list[Mutation], report: FuzzReport, signed_key: str | None) -> int:
    """Count one result line of the worker; returns its case index."""
    if "fatal" in rec:
        raise EdgeEcoError(rec["fatal"])
    i, outcome = rec["i"], rec["outcome"]
    report.outcomes[outcome] += 1
    if outcome == "refused":
        report.errors[rec["error"].split(":")[0]] += 1
    elif outcome == "foreign-error":
        report.failures.append(f"case {i} {cases[i].name}: {rec['error']}")
    elif cases[i].must_refuse or signed_key:  # signed: every damage must be refused
        report.must_refuse_accepted.append(f"case {i} {cases[i].name} ({outcome})")
    return i


def _run_batch(layer, src, n, seed, start, signed_key, cases, report, case_timeout_s, progress, plugin) -> int:
    """One child process from case ``start``; returns the next case to run."""
    cmd = [sys.executable, "-c", "import sys, edge_eco.fuzz as f; f._worker(*sys.argv[1:3], int(sys.argv[3]), "
           "int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] or None, sys.argv[7] or None)",
           layer, str(src), str(n), str(seed), str(start), signed_key or "", plugin or ""]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    fd, pending, nxt, ready = proc.stdout.fileno(), b"", start, False
    try:
        while True:
            # Unbuffered reads: every complete line is handled before waiting again, so the
            # hang timeout measures silence of the child, never lines sitting in a buffer.
            timeout_s = case_timeout_s if ready else 120.0  # start-up: imports, the case list
            if not select.select([fd], [], [], timeout_s)[0]:
                proc.kill()
                report.outcomes["hang"] += 1
                report.failures.append(f"hang: case {nxt} {cases[nxt].name}")
                return nxt + 1
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line == b'{"ready": true}':
                    ready = True
                elif line.startswith(b"{"):
                    nxt = _record(json.loads(line), cases, report, signed_key) + 1
                    if progress and nxt % 100 == 0:
                        progress(nxt, n)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if nxt < n:  # the child died mid-case: a crash of the runtime (or of the harness)
        report.outcomes["crash"] += 1
        report.failures.append(f"crash (exit {rc}): case {nxt} {cases[nxt].name}")
        return nxt + 1
    return nxt

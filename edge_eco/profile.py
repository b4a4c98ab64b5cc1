"""``edge-eco profile``: measure this device and every model of an ecology on it. Shell.

Per model and repeat: a cold load (timed), the footprint the load and first run add to the
process (anonymous and file-backed, from ``/proc/self/smaps_rollup``), then timed inferences on
real requests; the profile keeps the median over repeats of each timing and the lower median
(a measured value, never a mean of two) of each footprint, so with an even number of repeats the
first cold load's one-off file-backed pages do not skew it. The shipped manifest is
never rewritten: the result is a separate device profile file that ``assign`` reads.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform as _platform
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import backends, tomlread
from ._native import Featurizer
from .errors import InferenceError, ManifestError
from .inputs import dense_adapter, hashed_feeds, token_adapter
from .manifest import Manifest, ModelEntry

PROFILE_SCHEMA = 1


@dataclass(frozen=True)
class ModelProfile:
    """Measured costs of one model on this device (medians over repeats)."""

    id: str
    load_ms: float
    p50_us: float
    p95_us: float
    p99_us: float
    anon_bytes: int
    file_bytes: int

    @property
    def resident_bytes(self) -> int:
        """What the model adds to the process when loaded: anonymous + file-backed pages."""
        return self.anon_bytes + self.file_bytes


@dataclass(frozen=True)
class DeviceProfile:
    """A device's facts and the measured costs of one ecology's models on it."""

    cpu_model: str
    cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    ecology: str
    ecology_version: str
    repeats: int
    runs: int
    models: tuple[ModelProfile, ...]

    def model(self, model_id: str) -> ModelProfile | None:
        """The profile of ``model_id``, or None when it was not profiled."""
        return next((m for m in self.models if m.id == model_id), None)


def device_facts(proc: Path = Path("/proc")) -> dict:
    """CPU model, core count, total and available memory of this machine (Linux /proc; portable fallbacks)."""
    facts = {"cpu_model": _platform.processor() or _platform.machine(), "cores": os.cpu_count() or 1,
             "memory_total_bytes": 0, "memory_available_bytes": 0}
    try:
        for line in (proc / "cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                name = "memory_total_bytes" if key == "MemTotal" else "memory_available_bytes"
                facts[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass  # not Linux: the portable values stay
    return facts


def footprint_bytes(rollup: Path = Path("/proc/self/smaps_rollup")) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process, from smaps_rollup; (0, 0) where absent.

    File-backed is ``Rss - Anonymous`` (mapped model files, libraries; shared memory counts too).
    """
    try:
        text = rollup.read_text()
    except OSError:
        return 0, 0
    kb = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            kb[key] = int(rest.split()[0])
    return kb.get("Anonymous", 0) * 1024, (kb.get("Rss", 0) - kb.get("Anonymous", 0)) * 1024


def _trim() -> None:
    """Return freed heap to the OS, so that a load's growth is not hidden by reused free memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: deltas may read low; medians over repeats soften it


def _open(root: Path, entry: ModelEntry, max_run_ms: float | None = None) -> backends.Session:
    # Same options as the runtime's loader (modelload.ModelLoader.open).
    return backends.open_model(entry.backend, root / entry.file.path, output=entry.output,
                               optimize=entry.input != "hashed-text", max_run_ms=max_run_ms)


def profile_ecology(root: Path, manifest: Manifest, requests: Sequence[Any], *, repeats: int = 5, runs: int = 200,
                    progress: Callable[[int, int, str], None] | None = None) -> DeviceProfile:
    """Measure load time, inference latency and footprint of every model of ``manifest``.

    Args:
        root: the bundle folder.
        manifest: its validated manifest.
        requests: real requests to run (the first ``runs`` are used): texts, or sensor windows /
            vectors for a dense-vector ecology (:attr:`edge_eco.datasets.Example.request`).
        repeats: how many cold loads per model; figures are medians over repeats.
        runs: timed inferences per repeat.
        progress: called with (step, steps, model id) after each repeat of each model.

    Returns:
        The device profile.

    Raises:
        ManifestError: no requests, or repeats/runs under 1. RequestError: a malformed window.
        Backend errors propagate.
    """
    if repeats < 1 or runs < 1:
        raise ManifestError(f"repeats and runs must be >= 1, got {repeats} and {runs}")
    requests = [r for r in requests if not isinstance(r, str) or r.strip()][:runs]
    if not requests:
        raise ManifestError("profiling needs at least one request")
    dense = dense_adapter(root, manifest)
    if dense is not None:  # a sensor ecology: every model reads the same standardized window features
        shared = [dense.feeds(r) for r in requests]
    else:
        feat = Featurizer(manifest.featurizer) if manifest.featurizer else None
        shared = [hashed_feeds(*feat(t.encode("utf-8"))) for t in requests] if feat else []
    warm = _open(root, manifest.models[0], manifest.policy.max_run_ms)  # the runtime's own start-up is not any model's footprint
    warm.close()
    out, step, steps = [], 0, repeats * len(manifest.models)
    for entry in manifest.models:
        feeds = shared if entry.input in ("hashed-text", "dense-vector") else \
            [token_adapter(root, entry)(t) for t in requests]
        per = []
        for _ in range(repeats):
            _trim()
            anon0, file0 = footprint_bytes()
            t0 = time.perf_counter()
            session = _open(root, entry, manifest.policy.max_run_ms)
            load_ms = (time.perf_counter() - t0) * 1e3
            try:
                session.run(feeds[0])  # first run: lazy allocations belong to the footprint
                anon1, file1 = footprint_bytes()
                us = []
                for f in feeds:
                    t = time.perf_counter()
                    session.run(f)
                    us.append((time.perf_counter() - t) * 1e6)
            except InferenceError as exc:  # e.g. a run stopped at policy max_run_ms: name the model
                raise InferenceError(f"model {entry.id!r}: {exc}") from exc
            finally:
                session.close()
            pct = np.percentile(us, [50, 95, 99])
            per.append((load_ms, *pct, max(0, anon1 - anon0), max(0, file1 - file0)))
            step += 1
            if progress:
                progress(step, steps, entry.id)
        cols = list(zip(*per))
        # timings: the median; footprints: the lower median, so the first cold load's extra (one-off)
        # file-backed pages are not averaged in when the repeats are even (352 kB vs 32 kB seen at 2)
        med = [float(statistics.median(c)) for c in cols[:4]] + [float(statistics.median_low(c)) for c in cols[4:]]
        out.append(ModelProfile(entry.id, round(med[0], 4), round(med[1], 2), round(med[2], 2), round(med[3], 2),
                                int(med[4]), int(med[5])))
    facts = device_facts()
    return DeviceProfile(**facts, ecology=manifest.name, ecology_version=manifest.version, repeats=repeats,
                         runs=len(requests), models=tuple(out))


def profile_to_toml(p: DeviceProfile) -> str:
    """The device profile as TOML text. Pure."""
    def val(v) -> str:
        return json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)
    lines = ["# edge-eco device profile: measured by `edge-eco profile`; medians over repeats.",
             f"schema = {PROFILE_SCHEMA}", "", "[device]"]
    lines += [f"{k} = {val(getattr(p, k))}" for k in ("cpu_model", "cores", "memory_total_bytes",
                                                      "memory_available_bytes")]
    lines += ["", "[ecology]", f"name = {val(p.ecology)}", f"version = {val(p.ecology_version)}",
              f"repeats = {p.repeats}", f"runs = {p.runs}"]
    for m in p.models:
        lines += ["", "[[models]]"] + [f"{f.name} = {val(getattr(m, f.name))}" for f in fields(m)]
    return "\n".join(lines) + "\n"


def parse_profile(text: str, where: str = "profile") -> DeviceProfile:
    """Parse a device profile written by :func:`profile_to_toml`.

    Raises:
        ManifestError: invalid TOML, wrong schema, missing or mistyped fields.
    """
    try:
        d = tomlread.loads(text)
        if d.get("schema") != PROFILE_SCHEMA:
            raise ManifestError(f"{where}: schema {d.get('schema')!r} is not {PROFILE_SCHEMA}")
        dev, eco = d["device"], d["ecology"]
        models = tuple(ModelProfile(str(m["id"]), float(m["load_ms"]), float(m["p50_us"]), float(m["p95_us"]),
                                    float(m["p99_us"]), int(m["anon_bytes"]), int(m["file_bytes"]))
                       for m in d["models"])
        prof = DeviceProfile(str(dev["cpu_model"]), int(dev["cores"]), int(dev["memory_total_bytes"]),
                             int(dev["memory_available_bytes"]), str(eco["name"]), str(eco["version"]),
                             int(eco["repeats"]), int(eco["runs"]), models)
        bad = [f"{m.id}.{k}" for m in models for k in ("load_ms", "p50_us", "p95_us", "p99_us", "anon_bytes",
                                                         "file_bytes")
               if not math.isfinite(getattr(m, k)) or getattr(m, k) < 0]
        if bad:
            raise ManifestError(f"{where}: negative or non-finite measurement(s) {bad[:5]}")
        return prof
    except tomlread.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{where}: missing or malformed field ({exc!r})") from exc


def read_profile(path: str | Path) -> DeviceProfile:
    """Read a device profile file. Raises ManifestError when it is unreadable or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"device profile {path}: cannot read it ({exc})") from exc
    return parse_profile(text, str(path))

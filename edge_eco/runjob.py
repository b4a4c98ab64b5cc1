"""The main job: answer every request of a file and measure the ecology against baselines."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .datasets import Example
from .ecology import PATHS, Ecology
from .errors import EdgeEcoError
from .report import accuracy_block, path_summary, percentiles_ms


@dataclass(frozen=True)
class RunOptions:
    """What the job runs besides the ecology itself."""

    local_baseline: str | None = "generalist"
    remote_baseline: bool = True
    deadline_ms: float | None = None
    local_only: bool = False


def _timed(fn: Callable[[str], str], examples: Sequence[Example]) -> tuple[list[str], list[float], int, str | None]:
    labels, lat, errors, first = [], [], 0, None
    for ex in examples:
        t0 = time.perf_counter()
        try:
            labels.append(fn(ex.request))
        except EdgeEcoError as exc:
            labels.append("")
            errors += 1
            first = first or f"{type(exc).__name__}: {exc}"
        lat.append((time.perf_counter() - t0) * 1e3)
    return labels, lat, errors, first


def run_job(eco: Ecology, examples: Sequence[Example], opts: RunOptions = RunOptions(),
            source: str = "", progress: Callable[[int, int], None] | None = None) -> dict:
    """Answer every example through ``eco`` and return the report (see README for the keys)."""
    reject = eco.manifest.reject_label
    gold = [ex.label for ex in examples]
    predicted, paths, lat, errors, first_error, remote_errors = [], [], [], 0, None, {}
    model_errors: dict[str, dict] = {}  # model -> requests it failed in, and its first error
    for i, ex in enumerate(examples):
        t0 = time.perf_counter()
        try:
            a = eco.answer(ex.request, deadline_ms=opts.deadline_ms, local_only=opts.local_only)
            predicted.append(a.label)
            paths.append(a.path)
            for model, msg in a.provenance.get("model_errors", {}).items():
                seen = model_errors.setdefault(model, {"requests": 0, "first_error": f"line {i + 1}: {msg}"})
                seen["requests"] += 1
            if a.path == "unavailable":
                reason = a.provenance.get("remote", {}).get("error", "?")
                remote_errors[reason.split(":")[0]] = remote_errors.get(reason.split(":")[0], reason)
        except EdgeEcoError as exc:
            predicted.append("")
            paths.append("error")
            errors += 1
            first_error = first_error or f"line {i + 1}: {type(exc).__name__}: {exc}"
        lat.append((time.perf_counter() - t0) * 1e3)
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(examples))
    report = {"ecology": eco.name, "version": eco.version, "source": source, "requests": len(examples),
              **accuracy_block(predicted, gold, reject),
              "remote_rate": round(paths.count("remote") / max(1, len(paths)), 5),
              **path_summary(paths, lat, PATHS), "errors": errors, "first_error": first_error,
              "model_errors": dict(sorted(model_errors.items())),
              "unavailable_reasons": list(remote_errors.values())[:5],
              # answered on the device (direct or coalition): featurize + route + models + judge
              "local_latency_ms": percentiles_ms([x for x, p in zip(lat, paths) if p in ("direct", "coalition")])}
    stats = eco.stats()
    report.update(loads=stats["loads"], evictions=stats["evictions"], resident_bytes=stats["resident_bytes"])
    baselines = {}
    if opts.local_baseline:
        model = opts.local_baseline
        labels, blat, berr, bfirst = _timed(lambda t: eco.predict_with(model, t).label, examples)
        baselines["local_generalist"] = {**accuracy_block(labels, gold, reject),
                                         "latency_ms": percentiles_ms(blat), "errors": berr, "first_error": bfirst}
    if opts.remote_baseline and eco.remote is not None and not opts.local_only:  # local_only: nothing leaves
        timeout_s = opts.deadline_ms / 1e3 if opts.deadline_ms else None

        def remote(text: str) -> str:
            return eco.remote.infer([text], timeout_s=timeout_s)[0].label
        labels, blat, berr, bfirst = _timed(remote, examples)
        baselines["remote"] = {**accuracy_block(labels, gold, reject), "latency_ms": percentiles_ms(blat),
                               "errors": berr, "first_error": bfirst}
    report["baselines"] = baselines
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


"""``edge-eco bench residency``: eviction policies on traces, and the residency manager's real costs.

Shell (loads real models, reads /proc, spawns a thread). Two parts:

- Policies, simulated (:mod:`edge_eco.residency.simulate`) on traces under several budgets: Zipf
  popularity (alpha 0.6 / 0.9 / 1.2), a popularity shift, a periodic scan, bursts (on a synthetic
  population whose sizes and load times come from the fit measured below), and the trace recorded
  from the CLINC150 run (the models each request used, the real models' measured costs). The
  cost-aware policy, LRU, Belady and the exact offline optimum of miss cost.
- The manager on real models: load p50 and a fit against file size per backend, footprint growth
  after 1,000 load/unload cycles per backend, accounting error and sampled budget violations while
  a recorded trace is replayed with real loads, and warm p99 while loads run against isolated p99.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import ecology as _ecology
from .backends import ort as ort_backend
from .errors import RequestError
from .residency import Residency
from .residency.footprint import drop_file_pages, mapped_bytes, read_footprint, release_heap
from .residency.policy import ModelCost, miss_cost_ms
from .residency.simulate import POLICIES, online_optimum_cost, optimum_cost, replay

DEADLINE_MS, FALLBACK_MS, RUN_MS = 20.0, 50.0, 0.1  # a request's deadline; a remote call's cost
# Synthetic population: int8 MatMul models loaded with prepacking (the fast-running mode), whose
# load time tools/bench_backends.py measured at ~1 ms + ~3.1 ms per MiB of weights on this machine.
SYNTH_LOAD_MS, SYNTH_LOAD_MS_PER_MIB = 1.0, 3.1
THRASH_WINDOW_S = 10.0


def _p(values, q) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 4) if len(values) else 0.0


def measure_models(eco: _ecology.Ecology, loads: int = 15) -> dict[str, dict]:
    """Per model: file bytes, measured footprint (anon + file) and load ms p50 over ``loads`` loads."""
    out = {}
    for m in eco.manifest.models:
        files = eco._model_paths(m.id)
        file_bytes = sum(Path(p).stat().st_size for p in files)
        times, sizes = [], []
        eco._load(m.id).close()  # the first load of a runtime pays its start-up: not the model's
        for _ in range(loads):
            release_heap()
            before = read_footprint()
            t0 = time.perf_counter()
            s = eco._load(m.id)
            times.append((time.perf_counter() - t0) * 1e3)
            if hasattr(s, "warm"):
                s.warm()
            grown = read_footprint() - before
            sizes.append(grown.anon_bytes + max(grown.file_bytes, mapped_bytes(files)))
            s.close()
        out[m.id] = {"backend": m.backend, "file_bytes": file_bytes, "load_ms": float(np.median(times)),
                     "bytes": int(np.median(sizes))}
    return out


def fit_load_ms(models: dict[str, dict]) -> dict[str, dict]:
    """Per backend: load p50 and a least-squares fit load_ms = a + b * MiB of file."""
    fits = {}
    for backend in sorted({v["backend"] for v in models.values()}):
        rows = [(v["file_bytes"] / 2 ** 20, v["load_ms"]) for v in models.values() if v["backend"] == backend]
        x, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        b, a = np.polyfit(x, y, 1) if len(set(x.tolist())) > 1 else (0.0, float(y.mean()))
        fits[backend] = {"p50_ms": _p(y, 50), "fit_intercept_ms": round(float(a), 4),
                         "fit_ms_per_mib": round(float(b), 4), "models": len(rows)}
    return fits


def synthetic_population(n: int = 12, seed: int = 0) -> dict[str, ModelCost]:
    """``n`` models, sizes log-uniform in 0.25-16 MiB, load times of prepacked int8 MatMul models."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        mib = float(np.exp(rng.uniform(np.log(0.25), np.log(16.0))))
        load = SYNTH_LOAD_MS + SYNTH_LOAD_MS_PER_MIB * mib
        out[f"m{i:02d}"] = ModelCost(int(mib * 2 ** 20), load, miss_cost_ms(load, RUN_MS, DEADLINE_MS, FALLBACK_MS) - load)
    return out


def synthetic_traces(ids: list[str], n: int = 3000, rate_per_s: float = 5.0, seed: int = 1) -> dict[str, list]:
    """Zipf 0.6/0.9/1.2, a popularity shift, a periodic scan and bursts, Poisson arrivals."""
    return synthetic_workload(ids, n, rate_per_s, seed)[0]


def synthetic_workload(ids: list[str], n: int = 3000, rate_per_s: float = 5.0,
                       seed: int = 1) -> tuple[dict[str, list], dict[str, list]]:
    """The traces of :func:`synthetic_traces`, and for those drawn independently (Zipf, shift)
    their phases: (first request, model -> probability), for the online optimum."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate_per_s, n))

    def weights(alpha):
        p = 1 / np.arange(1, len(ids) + 1) ** alpha
        return p / p.sum()

    def popularity(alpha, order):
        return {ids[order[j]]: float(p) for j, p in enumerate(weights(alpha))}

    def zipf(alpha, order, k):
        return [ids[order[j]] for j in rng.choice(len(ids), k, p=weights(alpha))]
    order = rng.permutation(len(ids))
    traces = {f"zipf-{a}": zipf(a, order, n) for a in (0.6, 0.9, 1.2)}
    phases = {f"zipf-{a}": [(0, popularity(a, order))] for a in (0.6, 0.9, 1.2)}
    before = zipf(0.9, order, n // 2)
    shifted = rng.permutation(len(ids))
    traces["shift"] = before + zipf(0.9, shifted, n - n // 2)
    phases["shift"] = [(0, popularity(0.9, order)), (n // 2, popularity(0.9, shifted))]
    base = zipf(0.9, order, n)
    traces["scan"] = [ids[(i // 25) % len(ids)] if (i // 25) % 12 == 0 and i % 25 < len(ids) else m
                      for i, m in enumerate(base)][:n]
    burst = list(zipf(0.9, order, n))
    for start in range(0, n, 300):
        m = ids[int(rng.integers(len(ids)))]
        burst[start:start + 40] = [m] * len(burst[start:start + 40])
    traces["bursts"] = burst
    return {k: list(zip(times.tolist(), v)) for k, v in traces.items()}, phases


def record_trace(eco: _ecology.Ecology, requests: list, rate_per_s: float = 5.0) -> list:
    """(time, model) per model each request used, from the answers' provenance (real run).

    Coalition members are waited for as long as they take while recording: with the manifest's
    50 ms a member late on a busy machine was missing from the trace, and the trace (and so the
    policies' figures on it) changed between runs.
    """
    out, t, policy = [], 0.0, eco.policy
    eco.policy = dataclasses.replace(policy, coalition_timeout_ms=60_000.0)
    try:
        for r in requests:
            a = eco.answer(r, local_only=True)
            t += 1 / rate_per_s
            out += [(t, v[0]) for v in a.provenance["votes"]]
    finally:
        eco.policy = policy
    return out


def score_policies(traces: dict, costs_of: Callable[[str], dict[str, ModelCost]], fractions: tuple,
                   phases: dict | None = None) -> dict:
    """trace -> budget -> policy -> figures (and ratios against LRU, the offline optimum and,
    for traces drawn independently from known probabilities (``phases``), the online optimum)."""
    out = {}
    for name, trace in traces.items():
        costs = costs_of(name)
        total, biggest = sum(c.size_bytes for c in costs.values()), max(c.size_bytes for c in costs.values())
        out[name] = {}
        for f in fractions:
            budget = max(int(total * f), biggest)
            row = {p: replay(trace, costs, budget, p, THRASH_WINDOW_S).as_dict() for p in POLICIES}
            opt = optimum_cost(trace, costs, budget)
            row["optimum"] = {"miss_cost_ms": round(opt, 3)}
            ours, lru = row["cost_aware"]["miss_cost_ms"], row["lru"]["miss_cost_ms"]
            row["cost_vs_lru"] = round(ours / lru, 4) if lru else 1.0
            row["cost_vs_optimum"] = round(ours / opt, 4) if opt else 1.0
            if phases and name in phases:
                online = online_optimum_cost(trace, costs, budget, phases[name])
                row["online_optimum"] = {"miss_cost_ms": round(online, 3)}
                row["online_vs_optimum"] = round(online / opt, 4) if opt else 1.0
                row["cost_vs_online_optimum"] = round(ours / online, 4) if online else 1.0
            out[name][f"{int(f * 100)}%"] = {"budget_bytes": budget, **row}
    return out


def cycles_growth(eco: _ecology.Ecology, model_id: str, cycles: int) -> int:
    """Footprint growth (bytes) after ``cycles`` load/unload cycles of one model."""
    for _ in range(20):  # warm the runtime's own one-time allocations first
        eco._load(model_id).close()
    release_heap()
    before = read_footprint()
    for _ in range(cycles):
        s = eco._load(model_id)
        s.close()
    release_heap()
    return (read_footprint() - before).total_bytes


def real_replay(eco: _ecology.Ecology, trace: list, budget: int, demote: bool) -> dict:
    """Replay ``trace`` with real loads; the footprint is sampled after every request against
    the budget plus the fixed overhead (the footprint with none of this manager's models)."""
    release_heap()
    base = read_footprint().total_bytes
    res = Residency(eco._load, eco._predict_bytes, budget, measure=read_footprint, policy="cost_aware",
                    cost=lambda m: (res.stats.load_times.get(m, 1.0), 0.0), paths=eco._model_paths,
                    demote=drop_file_pages if demote else None, runtime_of=eco._runtime_of, anon_cap=eco._anon_cap,
                    warm=False)  # as the ecology's own manager: the load's probe run is its first run
    violations, samples, slack, misses = 0, 0, 0, []
    for _, m in trace:
        loads, t0 = res.stats.loads, time.perf_counter()
        with res.use(m):
            if res.stats.loads > loads:  # a miss: its load, measurement and evictions, as a request waits
                misses.append((time.perf_counter() - t0) * 1e3)
        now = read_footprint().total_bytes - base
        samples += 1
        if now > budget:
            violations += 1
            slack = max(slack, now - budget)
    res.close()
    err = res.stats.accounting_error
    return {"budget_violations": violations, "samples": samples, "worst_excess_bytes": slack,
            "accounting_error_p95": _p(err, 95), "accounting_error_p50": _p(err, 50),
            "loads": res.stats.loads, "evictions": res.stats.evictions, "demotions": res.stats.demotions,
            "overshoots": res.stats.overshoots, "budget_bytes": budget,
            "miss_ms_p50": _p(misses, 50), "miss_ms_p95": _p(misses, 95)}


def warm_ratio(warm: _ecology.Ecology, warm_request, loader: _ecology.Ecology, ids: list[str],
               runs: int = 4000, rounds: int = 8, round_s: float = 1.0) -> dict:
    """Warm answer p99 while another thread loads and unloads models, against isolated p99.

    Four conditions are interleaved in ``rounds`` rounds (their order rotates), and each ratio
    is the median of the rounds' p99 ratios: on a shared machine other processes' load drifts
    over seconds, and one block per condition measured that drift instead (a trial read 0.598,
    the isolated block slower than the loaded one). Each round lasts at least ``round_s`` seconds
    per condition. ``loading`` loads through ONNX Runtime's C API (the default binding);
    ``loading_python_binding`` through onnxruntime's Python binding, which holds the interpreter
    lock while it builds a session; ``thread_only`` is the control: the same thread waking as
    often (every 10 ms) but loading nothing, which separates what a load costs a warm request
    from what any second Python thread costs it on this machine.
    """
    def lat(k):
        out, until = [], time.perf_counter() + round_s
        while len(out) < k or time.perf_counter() < until:
            t0 = time.perf_counter()
            warm.answer(warm_request)
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    lat(200)
    loads = {"c": 0, "python": 0}

    def beside(k, binding: str | None):
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set():
                if binding:
                    loader._load(ids[i % len(ids)]).close()
                    loads[binding] += 1
                i += 1
                time.sleep(0.01)  # at most ~100 loads/s; ~17/s beside the warm loop (~12x the replays' miss rate)
        previous = ort_backend.set_default_binding(binding or "c")
        t = threading.Thread(target=churn, daemon=True)
        t.start()
        try:
            return lat(k)
        finally:
            stop.set()
            t.join()
            ort_backend.set_default_binding(previous)
    conditions = {"isolated": lambda k: lat(k), "loading": lambda k: beside(k, "c"),
                  "loading_python_binding": lambda k: beside(k, "python"), "thread_only": lambda k: beside(k, None)}
    names = list(conditions)
    per = max(runs // rounds, 100)
    seen = {c: [] for c in names}
    ratios = {c: [] for c in names[1:]}
    for r in range(rounds):
        p99 = {}
        for c in names[r % len(names):] + names[:r % len(names)]:
            got = conditions[c](per)
            seen[c] += got
            p99[c] = _p(got, 99)
        for c in ratios:
            ratios[c].append(p99[c] / max(p99["isolated"], 1e-9))
    return {"isolated_p99_ms": _p(seen["isolated"], 99), "while_loading_p99_ms": _p(seen["loading"], 99),
            "thread_only_p99_ms": _p(seen["thread_only"], 99),
            "while_loading_python_binding_p99_ms": _p(seen["loading_python_binding"], 99),
            "warm_p99_ratio": round(float(np.median(ratios["loading"])), 3),
            "warm_p99_ratio_rounds": [round(x, 3) for x in ratios["loading"]],
            "warm_p99_ratio_python_binding": round(float(np.median(ratios["loading_python_binding"])), 3),
            "thread_only_p99_ratio": round(float(np.median(ratios["thread_only"])), 3),
            "loads_during": loads["c"], "loads_during_python_binding": loads["python"]}


def _cycled_models(ceco: _ecology.Ecology, heco: _ecology.Ecology) -> tuple[str, str]:
    """The ONNX Runtime specialist (--clinc, a text ecology) and the largest LiteRT model (--har, a
    sensor ecology) whose load/unload cycles are measured.

    Raises:
        RequestError: a bundle of the wrong kind (named by its flag).
    """
    if ceco.takes != "text":
        raise RequestError(f"--clinc must be a text ecology (like models/clinc150); {ceco.root} takes {ceco.takes}")
    if heco.takes == "text":
        raise RequestError(f"--har must be a sensor ecology (like models/har); {heco.root} takes text")
    ort = [m.id for m in ceco.manifest.models if m.backend == "ort" and m.role == "specialist"]
    tflite = sorted((Path(heco.root / m.file.path).stat().st_size, m.id)
                    for m in heco.manifest.models if m.backend == "tflite")
    if not ort:
        raise RequestError(f"--clinc {ceco.root}: no ONNX Runtime specialist to measure load/unload cycles on")
    if not tflite:
        raise RequestError(f"--har {heco.root}: no LiteRT model to measure load/unload cycles on")
    return ("banking" if "banking" in ort else ort[0]), tflite[-1][1]


def bench_residency(clinc: Path, har: Path, clinc_requests: list, har_requests: list, *, cycles: int = 1000,
                    fractions: tuple = (0.3, 0.6), progress: Callable[[str], None] = lambda s: None) -> dict:
    """The whole benchmark (see the module docstring); returns the report."""
    with _ecology.open(clinc, budget_bytes=0) as ceco, _ecology.open(har, budget_bytes=0) as heco:
        ort_model, tflite_model = _cycled_models(ceco, heco)
        progress("measuring every model's load time and footprint")
        models = {**measure_models(ceco), **{f"har/{k}": v for k, v in measure_models(heco).items()}}
        fits = fit_load_ms(models)
        progress("recording the CLINC150 trace")
        clinc_trace = record_trace(ceco, clinc_requests)
        costs_clinc = {k: ModelCost(v["bytes"], v["load_ms"],
                                    miss_cost_ms(v["load_ms"], RUN_MS, DEADLINE_MS, FALLBACK_MS) - v["load_ms"])
                       for k, v in models.items() if not k.startswith("har/")}
        synth = synthetic_population()
        traces, phases = synthetic_workload(sorted(synth))
        traces["clinc150"] = clinc_trace
        progress(f"replaying {len(traces)} traces x {len(fractions)} budgets (and the exact optimum)")
        policies = score_policies(traces, lambda n: costs_clinc if n == "clinc150" else synth, fractions, phases)
        progress(f"{cycles} load/unload cycles per backend")
        growth = {"ort": cycles_growth(ceco, ort_model, cycles), "tflite": cycles_growth(heco, tflite_model, cycles)}
        progress("replaying the CLINC150 trace with real loads under a budget")
        total = sum(c.size_bytes for c in costs_clinc.values())
        budget = max(int(0.4 * total), int(1.2 * max(c.size_bytes for c in costs_clinc.values())))
        ceco.residency.close()  # the replay's manager owns every model from here on
        real = {"with_demotion": real_replay(ceco, clinc_trace[:3000], budget, demote=True),
                "evict_only": real_replay(ceco, clinc_trace[:3000], budget, demote=False)}
        progress("warm p99 while loads run")
        warm = warm_ratio(heco, har_requests[0], ceco, [m for m in costs_clinc if m != "generalist"])
    worst_lru = max(r["cost_vs_lru"] for t in policies.values() for r in t.values())
    worst_opt = max(r["cost_vs_optimum"] for t in policies.values() for r in t.values())
    online = [r for t in policies.values() for r in t.values() if "online_optimum" in r]
    return {"policies": policies, "worst_cost_vs_lru": worst_lru, "worst_cost_vs_optimum": worst_opt,
            "worst_cost_vs_online_optimum": max(r["cost_vs_online_optimum"] for r in online),
            "online_vs_optimum_range": [min(r["online_vs_optimum"] for r in online),
                                        max(r["online_vs_optimum"] for r in online)],
            "budget_violations": sum(r["budget_violations"] for r in real.values()), "real_replay": real,
            "load_ms": fits, "specialist_cold_load_ms_p50": {
                "ort": _p([v["load_ms"] for k, v in models.items() if not k.startswith("har/") and k != "generalist"], 50),
                "tflite": _p([v["load_ms"] for k, v in models.items() if k.startswith("har/")], 50)},
            "models": models, "unload_growth_bytes": growth, "unload_cycles": cycles,
            "accounting_error_p95": real["evict_only"]["accounting_error_p95"], **warm}

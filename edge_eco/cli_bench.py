"""`edge-eco bench routing` and `edge-eco bench residency`: argument checks and printing (the
benchmarks themselves are edge_eco.bench_routing and edge_eco.bench_residency)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from . import ecology as _ecology
from .datasets import load_requests, refuse_windows_for_text
from .errors import RequestError


def bench_routing_cmd(args: argparse.Namespace, token: Callable[[], str | None]) -> int:
    """`edge-eco bench routing`: run the benchmark, print its rows, write the report and the plot."""
    from .bench_routing import bench_routing

    if (args.remote_bundle is None) == (args.remote is None):
        raise RequestError("give the remote generalist once: --remote-bundle DIR (run in-process) or --remote URL")
    for flag, path, suffix in (("--out", args.out, None), ("--plot", args.plot, ".png")):
        if path and Path(path).is_dir():
            raise RequestError(f"{flag} {path} is a directory; give a file name")
        if path and suffix and Path(path).suffix.lower() != suffix:
            raise RequestError(f"{flag} {path}: the plot is written as PNG; name it *.png")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    examples = [e for e in load_requests(args.requests, args.split) if e.label is not None]
    if args.limit:
        examples = examples[: args.limit]
    if not examples:
        raise RequestError(f"{args.requests} holds no labelled requests")
    with _ecology.open(args.ecology) as eco, contextlib.ExitStack() as stack:
        if eco.feature_dim is not None:
            raise RequestError(f"{args.ecology} takes sensor windows; bench routing replays text requests "
                           f"(use edge-eco run or eval for a dense ecology)")
        refuse_windows_for_text(examples, eco.name, args.requests)
        if args.remote_bundle:
            remote_eco = stack.enter_context(_ecology.open(args.remote_bundle))
            if remote_eco.feature_dim is not None:
                raise RequestError(f"--remote-bundle {args.remote_bundle} takes sensor windows, not text requests")
            remote_label = lambda text: remote_eco.answer(text).label  # noqa: E731
        else:
            from .fallback import client_for
            from .manifest import RemoteSpec

            spec = eco.manifest.remote or RemoteSpec()
            protocol = args.remote_protocol or spec.protocol
            client = client_for(protocol, args.remote, args.remote_model or spec.model or "generalist",
                                labels=eco.labels, token=token(),
                                **({"logprobs": spec.logprobs} if protocol == "openai" else {}))
            remote_label = lambda text: client.infer([text])[0].label  # noqa: E731
        report = bench_routing(eco, remote_label, examples, seed=args.seed,
                               progress=lambda i, n: print(f"  {i}/{n} requests", file=sys.stderr, flush=True))
    r = report
    print(f"routing on {r['requests']} requests: local-only (weak) {100 * r['weak_accuracy']:.2f} %, "
          f"remote-only (strong) {100 * r['strong_accuracy']:.2f} %")
    if r["strong_accuracy"] <= r["weak_accuracy"]:
        print("note: the remote is not stronger than the local tier here (pgr_inverted), so PGR-based figures "
              "(apgr, cpt) read backwards or are undefined; compare the accuracy columns, and the scores "
              "against the local generalist below")
    print(f"\n{'curve':26}{'apgr':>8}{'cpt50':>8}{'cpt80':>8}" + "".join(f"{'@' + k:>9}" for k in
                                                                       r["accuracy_at_remote_rate"]))
    for name, c in r["curves"].items():
        cpt = lambda x: "   none" if x is None else f"{x:7.3f}"  # noqa: E731
        print(f"{name:26}{cpt(c['apgr']):>8} {cpt(c['cpt50'])} {cpt(c['cpt80'])}"
              + "".join(f"{100 * v:8.2f}%" for v in c["accuracy_at_remote_rate"].values()))
    v = r["vs_local_generalist"]
    print(f"\necology scored with the local generalist ({100 * r['local_generalist_accuracy']:.2f} %) as the weak "
          f"model: apgr {_num(v['apgr'])}, cpt50 {_num(v['cpt50'])}, cpt80 {_num(v['cpt80'])}"
          + (" (inverted too)" if v["pgr_inverted"] else ""))
    print(f"best ecology accuracy with <= 25 % remote calls {100 * r['best_accuracy_at_most_25pct_remote']:.2f} % "
          f"vs always-remote {100 * r['strong_accuracy']:.2f} %")
    print(f"local tier AURC {r['aurc_local']}  (E-AURC {r['eaurc_local']})")
    print("ECE before -> after calibration: " + ", ".join(
        f"{m} {v['before']:.3f}->{v['after']:.3f}" for m, v in r["ece"].items()))
    u = r["router_us"]
    print(f"router decision (featurize + route): C p50 {u['c']['p50']} us p99 {u['c']['p99']} us; "
          f"numpy p50 {u['numpy']['p50']} us p99 {u['numpy']['p99']} us; speedup {u['router_speedup']}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.out}")
    if args.plot:
        from .plot import plot_curves
        curves = {k: (c["rates"], c["accuracy"]) for k, c in r["curves"].items()}
        plot_curves(curves, r["weak_accuracy"], r["strong_accuracy"], Path(args.plot),
                    f"{r['ecology']}: accuracy vs remote-call rate ({r['requests']} requests)")
        print(f"plot written to {args.plot}")
    return 0


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.3f}"


def refuse_unwritable(flag: str, path: Path) -> None:
    """Refuse, before a long run, a report path that cannot be written (it is written after)."""
    if path.is_dir():
        raise RequestError(f"{flag} {path} is a directory; give a file name")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise RequestError(f"{flag} {path} cannot be written ({exc.strerror}); nothing was run") from exc
    if not existed:
        path.unlink()


def bench_residency_cmd(args: argparse.Namespace) -> int:
    """`edge-eco bench residency`: run the benchmark, print its rows, write the report and the plot."""
    from .bench_residency import bench_residency
    from .datasets import data_root, load_clinc150
    from .har_data import load_har

    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            refuse_unwritable(flag, Path(path))
    root = data_root(args.data, os.environ.get("EDGE_ECO_DATA"))
    source = root / "clinc150" / "data_full.json"
    if not source.is_file():  # never downloads (only `make demo` may): name what is missing
        raise RequestError(f"CLINC150 is not at {source}; give --data the folder that holds clinc150/ and stm32_har/")
    clinc_req = [e.text for e in load_clinc150(source, "test")][::max(1, args.stride)]
    har_req = [e.vector for e in load_har(root / "stm32_har", "test")]
    r = bench_residency(Path(args.clinc), Path(args.har), clinc_req, har_req, cycles=args.cycles,
                        progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    shown = ("cost_aware", "cost_aware_only", "lru", "belady")
    print(f"{'trace':10}{'budget':>7}  " + "".join(f"{p + ' cost':>21}" for p in shown)
          + f"{'optimum':>12}{'vs LRU':>8}{'vs opt':>8}{'miss% ours/lru':>16}{'thrash ours/lru':>17}")
    for name, budgets in r["policies"].items():
        for b, row in budgets.items():
            print(f"{name:10}{b:>7}  " + "".join(f"{row[p]['miss_cost_ms']:>21.1f}" for p in shown)
                  + f"{row['optimum']['miss_cost_ms']:>12.1f}{row['cost_vs_lru']:>8.3f}{row['cost_vs_optimum']:>8.3f}"
                  f"{100 * row['cost_aware']['miss_ratio']:>8.1f}/{100 * row['lru']['miss_ratio']:<6.1f}"
                  f"{row['cost_aware']['thrash_rate']:>9.3f}/{row['lru']['thrash_rate']:<6.3f}")
    print(f"worst miss cost vs LRU {r['worst_cost_vs_lru']}, vs optimum {r['worst_cost_vs_optimum']}")
    lo, hi = r["online_vs_optimum_range"]
    print(f"independent traces (Zipf, shift): the best online policy (knowing the probabilities) costs {lo}-{hi}x "
          f"the offline optimum; the cost-aware policy costs at most {r['worst_cost_vs_online_optimum']}x that "
          "online optimum")
    for backend, f in r["load_ms"].items():
        print(f"load {backend}: p50 {f['p50_ms']} ms; fit {f['fit_intercept_ms']} ms + {f['fit_ms_per_mib']} ms/MiB "
              f"({f['models']} models)")
    print(f"specialist cold load p50: {r['specialist_cold_load_ms_p50']} ms")
    print(f"unload growth after {r['unload_cycles']} cycles: {r['unload_growth_bytes']} bytes")
    for name, rr in r["real_replay"].items():
        print(f"real replay ({name}): {rr['loads']} loads, {rr['evictions']} evictions, {rr['demotions']} demotions, "
              f"budget {rr['budget_bytes']} bytes, {rr['samples']} samples, budget_violations "
              f"{rr['budget_violations']} (worst excess {rr['worst_excess_bytes']} bytes), "
              f"accounting_error p50 {rr['accounting_error_p50']} p95 {rr['accounting_error_p95']}; a miss "
              f"(load, measurement, evictions) p50 {rr['miss_ms_p50']} ms, p95 {rr['miss_ms_p95']} ms")
    print(f"warm p99 {r['isolated_p99_ms']} ms isolated, {r['while_loading_p99_ms']} ms while "
          f"{r['loads_during']} loads ran: warm_p99_ratio {r['warm_p99_ratio']}; loading through onnxruntime's Python "
          f"binding instead: {r['while_loading_python_binding_p99_ms']} ms ({r['loads_during_python_binding']} loads), "
          f"ratio {r['warm_p99_ratio_python_binding']}; control (a thread waking as often, loading nothing): "
          f"{r['thread_only_p99_ms']} ms, ratio {r['thread_only_p99_ratio']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1) + "\n")
        print(f"report written to {args.out}")
    if args.plot:
        from .plot import plot_bars
        series = ("cost_aware", "lru", "belady", "online_optimum", "optimum")  # online: independent traces only
        bars = {f"{t} {b}": {p: row[p]["miss_cost_ms"] / max(row["lru"]["miss_cost_ms"], 1e-9)
                             for p in series if p in row}
                for t, budgets in r["policies"].items() for b, row in budgets.items()}
        plot_bars(bars, Path(args.plot), "miss cost relative to LRU (lower is better)")
        print(f"plot written to {args.plot}")
    return 0

"""The device commands: ``edge-eco profile``, ``edge-eco assign`` and ``edge-eco run --plan``. Shell.

``cli.py`` registers them (:func:`add_parsers`) and passes in how to print (``out``, ``err``), the
bearer token and ``EDGE_ECO_DATA``, so this module neither prints nor reads the environment itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from . import assignjob
from . import ecology as _ecology
from .bundle import read_bundle
from .datasets import data_root
from .errors import RequestError
from .plan import open_with_plan, plan_to_toml, read_plan
from .platform import load_platform, preset_paths
from .profile import profile_ecology, profile_to_toml, read_profile

Emit = Callable[[str], None]


def add_parsers(sub: argparse._SubParsersAction, positive: Callable, device_cmd: Callable[[str], Callable]) -> None:
    """Register ``profile`` and ``assign`` (``run --plan`` is an option of ``run``)."""
    prof = sub.add_parser("profile", help="measure this device and every model of an ecology on it")
    prof.add_argument("ecology")
    prof.add_argument("--out", required=True, help="device profile file to write (TOML)")
    prof.add_argument("--requests", help="requests to run (default: the ecology's data set, by its input: "
                                         "CLINC150, the sib200 or the stm32_har folder)")
    prof.add_argument("--vector-field", help="field holding each row's vector (JSON lines or CSV of a dense ecology)")
    prof.add_argument("--split", default="val")
    prof.add_argument("--data", help="data folder (default: $EDGE_ECO_DATA or ../shared/data)")
    prof.add_argument("--repeats", type=positive(int), default=5, help="cold loads per model (medians)")
    prof.add_argument("--runs", type=positive(int), default=200, help="timed inferences per load")
    prof.set_defaults(fn=device_cmd("profile"))
    asg = sub.add_parser("assign", help="decide which models are pinned, on demand or excluded on a platform "
                                              "(exit status 3: no feasible plan; the plan says feasible = false)")
    asg.add_argument("ecology")
    asg.add_argument("--platform", required=True, help="preset name (platforms/NAME.toml) or a TOML file")
    asg.add_argument("--profile", help="device profile from `edge-eco profile` (default: file sizes)")
    asg.add_argument("--niches", help="comma-separated niches (a region) the device serves; the rest goes remote")
    asg.add_argument("--out", help="write the plan here (TOML)")
    asg.add_argument("--plot", help="PNG of expected accuracy vs remote rate for every platform preset")
    asg.add_argument("--requests", help="labelled requests (default: the ecology's data set, by its input: "
                                        "CLINC150, the sib200 or the stm32_har folder)")
    asg.add_argument("--vector-field", help="field holding each row's vector (JSON lines or CSV of a dense ecology)")
    asg.add_argument("--split", default="val")
    asg.add_argument("--data", help="data folder (default: $EDGE_ECO_DATA or ../shared/data)")
    asg.add_argument("--limit", type=positive(int))
    asg.add_argument("--remote-bundle", help="remote generalist bundle run in-process (default: beside the ecology)")
    asg.add_argument("--remote", help="remote generalist URL (Open Inference Protocol v2)")
    asg.add_argument("--token-env")
    asg.add_argument("--allow-remote", action="store_true",
                     help="use a remote generalist although the ecology's policy forbids it (recorded in the plan)")
    asg.add_argument("--replay", help="replay file: read it when it exists, else replay and write it here")
    asg.set_defaults(fn=device_cmd("assign"))


def run_plan(args: argparse.Namespace, *, token, data_env, out: Emit, err: Emit) -> int:
    """``run --plan`` / ``--by-niche``: answer through the plan and report figures per niche."""
    _, manifest = read_bundle(args.ecology)
    examples, niches = assignjob.load_labelled(manifest, data_root(), args.requests, args.split or "test",
                                               args.limit, stride=args.stride)
    options = {"remote_url": args.remote, "remote_token": token}
    plan = read_plan(args.plan) if args.plan else None
    if plan and not plan.feasible:
        err(f"warning: the plan {args.plan} is infeasible (it does not fit {plan.platform}'s budgets)\n")
    has_remote = args.remote or (manifest.remote is not None and manifest.remote.url)
    if plan and plan.remote_policy == "allowed" and not has_remote and (
            plan.expected["remote_rate"] > 0 or plan.ids("excluded")):
        err(f"warning: the plan expects remote calls ({plan.expected['remote_rate']:.1%} of requests, "
            f"{len(plan.ids('excluded'))} model(s) excluded) and no --remote is given: those requests get "
            "the unavailable answer\n")
    opener = (lambda: open_with_plan(args.ecology, plan, **options)) if plan else \
        (lambda: _ecology.open(args.ecology, **options))
    with opener() as eco:
        table = assignjob.answer_by_niche(eco, examples, niches, progress=lambda i, n: err(f"  {i}/{n} requests\n"))
    title = f"{manifest.name} on {len(examples)} requests ({args.requests} [{args.split or 'test'}])" + (
        f", plan for {plan.platform}" if plan else "")
    out(assignjob.format_by_niche(table, title))
    if plan:
        e, m = plan.expected, table["all"]
        out(f"plan expected (validation replay): accuracy {e['accuracy']:.2%}, remote rate {e['remote_rate']:.2%}, "
            f"local p95 {e['local_p95_ms']:.3f} ms on {plan.platform} = {e['local_p95_ms'] / plan.cpu_factor:.3f} ms "
            f"at this machine's speed (cpu factor {plan.cpu_factor}); measured here: {m['accuracy']:.2%}, "
            f"{m['remote_rate']:.2%}, {m['local_ms']['p95']:.3f} ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
        out(f"report written to {args.out}")
    return 0


def profile(args: argparse.Namespace, *, token, data_env, out: Emit, err: Emit) -> int:
    """``edge-eco profile``: measure the device and write the profile."""
    root, manifest = read_bundle(args.ecology)
    target = Path(args.out)
    if target.is_dir() or target.resolve() == (root / "ecology.toml").resolve():
        raise RequestError(f"--out {target}: give a new file name (the shipped manifest is never rewritten)")
    examples, _ = assignjob.load_labelled(manifest, data_root(args.data or data_env),
                                          args.requests, args.split, vector_field=args.vector_field)

    def bar(step: int, steps: int, model: str) -> None:
        done = int(30 * step / steps)
        err(f"\r  [{'#' * done}{'.' * (30 - done)}] {step}/{steps} {model:24}")
    p = profile_ecology(root, manifest, [e.request for e in examples[::max(1, len(examples) // args.runs)]],
                        repeats=args.repeats, runs=args.runs, progress=bar)
    err("\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(profile_to_toml(p))
    out(f"{p.cpu_model}, {p.cores} cores, memory {p.memory_total_bytes / 2**30:.1f} GiB "
        f"({p.memory_available_bytes / 2**30:.1f} GiB available); medians of {p.repeats} repeats, {p.runs} runs each")
    out(f"{'model':22}{'load ms':>9}{'p50 us':>9}{'p95 us':>9}{'p99 us':>9}{'anon kB':>9}{'file kB':>9}")
    for m in p.models:
        out(f"{m.id:22}{m.load_ms:>9.3f}{m.p50_us:>9.1f}{m.p95_us:>9.1f}{m.p99_us:>9.1f}"
            f"{m.anon_bytes // 1024:>9}{m.file_bytes // 1024:>9}")
    out(f"profile written to {target}")
    return 0


def assign(args: argparse.Namespace, *, token, data_env, out: Emit, err: Emit) -> int:
    """``edge-eco assign``: replay, optimise, report, write the plan and the plot."""
    root, manifest = read_bundle(args.ecology)
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise RequestError(f"--plot {args.plot}: the plot is written as PNG; name it *.png")
    platform = load_platform(args.platform)
    profile = read_profile(args.profile) if args.profile else None
    region = assignjob.region_of(manifest, args.niches.split(",") if args.niches is not None else None)
    default_remote = manifest.remote.model if manifest.remote and manifest.remote.model else "generalist"
    remote_bundle = args.remote_bundle
    no_remote = manifest.policy.remote != "allowed" and not args.allow_remote
    if no_remote and (remote_bundle or args.remote):
        raise RequestError(f"{manifest.name} forbids the remote; --remote-bundle/--remote need --allow-remote")
    if no_remote:
        err(f"{manifest.name} forbids the remote: an all-local plan (give --allow-remote with --remote-bundle DIR "
            "or --remote URL to plan with a remote generalist)\n")
    elif not remote_bundle and not args.remote and not (args.replay and Path(args.replay).is_file()):
        beside = Path(args.ecology).resolve().parent / default_remote
        if not (beside / "ecology.toml").is_file():
            raise RequestError(f"no remote generalist bundle at {beside}: give --remote-bundle DIR or --remote URL")
        remote_bundle = str(beside)
    if args.replay and Path(args.replay).is_file():
        outcomes = assignjob.load_outcomes(manifest, Path(args.replay))
        source = f"the replay {args.replay}"
    else:  # the labelled data is read only when the replay must be made
        root_dir = data_root(args.data or data_env)
        source = assignjob.requests_source(Path(args.requests) if args.requests is not None else
                                           assignjob.default_requests(manifest, root_dir), args.split)
        examples, niches = assignjob.load_labelled(manifest, root_dir, args.requests,
                                                   args.split, args.limit, vector_field=args.vector_field)
        remote, close = (lambda text: None, lambda: None) if no_remote else \
            assignjob.remote_labeller(remote_bundle, args.remote, token, default_remote)
        try:
            outcomes = assignjob.replay_ecology(args.ecology, examples, niches, remote, progress=lambda i, n: err(
                f"  replayed {i}/{n} requests\n"))
        finally:
            close()
        if args.replay:
            assignjob.save_outcomes(outcomes, manifest, Path(args.replay))
    plan, result = assignjob.assign_one(root, manifest, platform, outcomes, profile, region, args.allow_remote)
    out(assignjob.format_plan(plan, result, source))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(plan_to_toml(plan))
        out(f"plan written to {args.out}")
    if args.plot:
        platforms = [load_platform(p) for p in preset_paths()]
        curves = assignjob.platform_curves(root, manifest, platforms, outcomes, profile, region, args.allow_remote)
        for name, c in curves.items():
            out(f"  {name:20} expected accuracy {c['at'][1]:.2%} at remote rate {c['at'][0]:.2%}"
                + ("" if c["feasible"] else " (infeasible)"))
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        assignjob.plot_platforms(curves, Path(args.plot), f"{manifest.name}: expected accuracy vs remote rate "
                                 f"per platform ({len(outcomes)} requests of {Path(source).name})")
        out(f"plot written to {args.plot}")
    if not plan.feasible:
        err("edge-eco assign: INFEASIBLE: no assignment fits the platform's budgets (the plan says feasible = false)\n")
        return 3
    return 0

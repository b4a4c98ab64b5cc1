"""The ``edge-eco`` command. The only module that reads the environment or prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import ecology as _ecology
from .bundle import read_bundle
from .datasets import load_requests
from .errors import EdgeEcoError
from .report import format_report
from .runjob import RunOptions, run_job


def _cmd_run(args: argparse.Namespace) -> int:
    examples = load_requests(args.requests, args.split)
    if args.limit:
        examples = examples[: args.limit]
    token = os.environ.get(args.token_env) if args.token_env else None
    options = {"remote_url": args.remote, "remote_token": token}
    if args.budget_bytes is not None:
        options["budget_bytes"] = args.budget_bytes
    with _ecology.open(args.ecology, **options) as eco:
        source = f"{args.requests}" + (f" [{args.split}]" if args.split else "")
        report = run_job(eco, examples, RunOptions(
            local_baseline=None if args.no_baselines else "generalist" if _has(eco, "generalist") else None,
            remote_baseline=not args.no_baselines, deadline_ms=args.deadline_ms, local_only=args.local_only),
            source=source,
            progress=lambda i, n: print(f"  {i}/{n} requests", file=sys.stderr, flush=True))
    print(format_report(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {out}")
    return 0


def _has(eco, model_id: str) -> bool:
    return any(m.id == model_id for m in eco.manifest.models)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_forever

    token = os.environ.get(args.token_env) if args.token_env else None
    with _ecology.open(args.ecology, remote_url=None) as eco:
        def ready(server) -> None:
            print(f"edge-eco serve: {eco.name} v{eco.version} on {server.url}/v2/models/{eco.name}", flush=True)
        serve_forever(eco, args.host, args.port, token=token, on_ready=ready)
    print("edge-eco serve: stopped", flush=True)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    root, m = read_bundle(args.ecology)
    print(f"{m.name} v{m.version}: {m.description}")
    print(f"labels: {len(m.labels)}   reject label: {m.reject_label}   budget: {m.budget_bytes} bytes")
    p = m.policy
    print(f"policy: direct >= {p.direct_threshold}, remote when confidence < {p.fallback_threshold}, "
          f"coalition {p.coalition_size}, remote {p.remote}")
    print(f"\n{'model':20}{'role':12}{'backend':9}{'labels':>7}{'bytes':>12}{'T':>8}  file")
    for e in m.models:
        size = sum((root / f).stat().st_size for f in [e.file.path] + [x.path for x in m.files
                                                                       if x.path.startswith(e.file.path)])
        print(f"{e.id:20}{e.role:12}{e.backend:9}{len(e.labels):>7}{size:>12}"
              f"{e.calibration.temperature:>8.3f}  {e.file.path}")
    print("\nall files present, sha256 verified")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-eco", description="Run, serve and inspect small-model ecologies.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer every request of a file and report accuracy, paths and latency")
    run.add_argument("ecology", help="ecology folder (with ecology.toml)")
    run.add_argument("--requests", required=True, help="JSON lines of {text, label?}, or a CLINC150 json with --split")
    run.add_argument("--split", choices=["train", "val", "test"], help="split of a CLINC150 data_*.json")
    run.add_argument("--remote", help="URL of the remote generalist (Open Inference Protocol v2)")
    run.add_argument("--token-env", help="environment variable holding the remote's bearer token")
    run.add_argument("--out", help="write the report as JSON here")
    run.add_argument("--limit", type=int, help="answer only the first N requests")
    run.add_argument("--deadline-ms", type=float, help="deadline of every request")
    run.add_argument("--budget-bytes", type=int, help="memory budget for resident models (overrides the manifest)")
    run.add_argument("--local-only", action="store_true", help="never send a request off the device")
    run.add_argument("--no-baselines", action="store_true", help="skip the local and remote baselines")
    run.set_defaults(fn=_cmd_run)
    serve = sub.add_parser("serve", help="serve an ecology over the Open Inference Protocol v2 (REST)")
    serve.add_argument("ecology")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-env", help="environment variable holding the bearer token clients must send")
    serve.set_defaults(fn=_cmd_serve)
    info = sub.add_parser("info", help="verify an ecology bundle and list its population")
    info.add_argument("ecology")
    info.set_defaults(fn=_cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-eco``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except EdgeEcoError as exc:
        print(f"edge-eco {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

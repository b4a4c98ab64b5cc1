"""The ``edge-eco`` command. The only module that reads the environment or prints."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from . import cli_bench, cli_build
from . import ecology as _ecology
from .bundle import read_bundle
from .datasets import load_requests, refuse_windows_for_text
from .errors import EdgeEcoError
from .report import format_report
from .runjob import RunOptions, run_job


def _token(var: str | None) -> str | None:
    """The bearer token held in environment variable ``var``; an unset or empty one is an error,
    never a silent fall back to no authentication."""
    if not var:
        return None
    value = os.environ.get(var, "")
    if not value.strip():
        raise CliError(f"--token-env {var}: the environment variable is unset or empty")
    return value.strip()


class CliError(EdgeEcoError):
    """A command-line argument that cannot be used."""


def _positive(kind, *, zero_ok: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'a whole' if kind is int else 'a'} number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be a {'non-negative' if zero_ok else 'positive'} finite "
                                             f"number, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a share strictly between 0 and 1, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a TCP port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, got {text}")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from .har_data import is_har_folder
    if args.plan or args.by_niche or (Path(args.requests).is_dir() and not is_har_folder(Path(args.requests))):
        return _device_cmd("run_plan")(args)  # a folder of per-niche files (sib200); stm32_har is one request set
    examples = load_requests(args.requests, args.split)
    if args.limit:
        examples = examples[: args.limit]
    if not examples:
        raise CliError(f"{args.requests} holds no requests")
    token = _token(args.token_env)
    options = {"remote_url": args.remote, "remote_token": token, "remote_protocol": args.remote_protocol,
               "remote_model": args.remote_model, "trust": args.trust}
    if args.budget_bytes is not None:
        options["budget_bytes"] = args.budget_bytes
    with _ecology.open(args.ecology, **options) as eco:
        if eco.feature_dim is not None and any(ex.vector is None for ex in examples):
            raise CliError(f"{eco.name} takes {eco.takes}, not text: `edge-eco run` read the 'text' field of "
                           f"{args.requests}; score rows with a vector field by `edge-eco eval {args.ecology} "
                           "--requests FILE --vector-field FIELD`")
        if eco.feature_dim is None:
            refuse_windows_for_text(examples, eco.name, args.requests)
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
    if report["errors"]:  # every request failed: exit 1 (some failed: 0, the report says how many)
        print(f"edge-eco run: {report['errors']} of {report['requests']} requests failed; first: "
              f"{report['first_error']}", file=sys.stderr)
    return 1 if report["errors"] == report["requests"] else 0


def _device_cmd(name: str):
    """`profile`, `assign`, `run --plan`: edge_eco.devicecmd does the work; printing stays here."""
    def run(args: argparse.Namespace) -> int:
        from . import devicecmd
        token = _token(getattr(args, "token_env", None))
        return getattr(devicecmd, name)(args, token=token, data_env=os.environ.get("EDGE_ECO_DATA"),
                                        out=print, err=lambda text: print(text, end="", file=sys.stderr, flush=True))
    return run


def _has(eco, model_id: str) -> bool:
    return any(m.id == model_id for m in eco.manifest.models)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_forever

    token = _token(args.token_env)
    options = {"max_concurrent": args.max_concurrent, "max_queue": args.max_queue,
               "max_client_connections": args.max_client_connections, "request_timeout_s": args.request_timeout,
               "rate_limit_per_s": args.rate_limit, "burst": args.burst}
    if args.burst is not None and args.rate_limit is None:
        raise CliError("--burst needs --rate-limit")
    if args.tls_cert or args.tls_key:
        import ssl

        if not (args.tls_cert and args.tls_key):
            raise CliError("give both --tls-cert and --tls-key")
        options["ssl_context"] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            options["ssl_context"].load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot load the TLS certificate/key: {exc}") from exc
    with _ecology.open(args.ecology, remote_url=None, trust=args.trust) as eco:
        from .warmup import warm

        w = warm(eco)  # before the port is bound: ready means the models are loaded
        print(f"edge-eco serve: warmed {w.models} model(s) in {w.warm_ms:.0f} ms "
              f"({w.resident_bytes} bytes resident)", file=sys.stderr, flush=True)

        def ready(server) -> None:
            print(f"edge-eco serve: {eco.name} v{eco.version} on {server.url}/v2/models/{eco.name}", flush=True)

        def model_error(model_id: str, error: str, count: int) -> None:
            print(f"edge-eco serve: model {model_id!r} failed in {count} answer{'s' * (count != 1)} "
                  f"(the others answered): {error}", file=sys.stderr, flush=True)
        serve_forever(eco, args.host, args.port, token=token, on_ready=ready, on_model_error=model_error, **options)
    print("edge-eco serve: stopped", flush=True)
    return 0


def _cmd_fit_router(args: argparse.Namespace) -> int:
    from .fitrouter import fit_router

    examples = [e for e in load_requests(args.requests, args.split) if e.label is not None]
    if not examples:
        raise CliError(f"{args.requests} holds no labelled requests")
    _, manifest = read_bundle(args.ecology)
    if manifest.dense is not None:
        raise CliError(f"{args.ecology}: fit-router fits a text ecology's router on its hashed features; "
                       f"{manifest.name} takes sensor windows (its router is rebuilt by `edge-eco build`)")
    refuse_windows_for_text(examples, manifest.name, args.requests)
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise CliError("fit-router needs scipy: pip install 'edge_eco[build]'") from None
    report = fit_router(Path(args.ecology), examples, lam=args.lam, l2=args.l2, reject_share=args.reject_share,
                        include_generalist=args.include_generalist,
                        progress=lambda i, n: print(f"  {i}/{n} requests", file=sys.stderr, flush=True))
    print(f"fitted {len(report['candidates'])} correctness predictors on {report['requests']} requests "
          f"in {report['seconds']} s")
    print(f"top-utility candidate right on {100 * report['top_choice_correct']:.2f} % "
          f"(some candidate right: {100 * report['oracle_any_correct']:.2f} %); "
          f"direct_threshold {report['direct_threshold']}; lambda {report['lambda']} per MiB")
    print(f"{'candidate':22}{'val acc':>9}{'MiB':>9}{'p50 ms':>9}")
    for c in report["candidates"]:
        print(f"{c:22}{100 * report['val_accuracy_per_candidate'][c]:8.2f}%{report['cost_mib'][c]:9.4f}"
              f"{report['cost_ms'][c]:9.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    root, m = read_bundle(args.ecology)
    with _ecology.open(args.ecology, trust=args.trust) as eco:  # every check open() makes: signature, headers, budget
        failed = eco.check_models()  # and each model's own: the backend's file checks, then a probe run
    print(f"{m.name} v{m.version}: {m.description}")
    print(f"labels: {len(m.labels)}   reject label: {m.reject_label}   budget: {m.budget_bytes} bytes")
    p = m.policy
    print(f"policy: direct >= {p.direct_threshold}, remote when confidence < {p.fallback_threshold}, "
          f"coalition {p.coalition_size}, remote {p.remote}, one run stopped past {p.max_run_ms:g} ms")
    print(f"\n{'model':20}{'role':12}{'backend':9}{'labels':>7}{'bytes':>12}{'T':>8}  file")
    for e in m.models:
        size = sum((root / f).stat().st_size for f in [e.file.path] + [x.path for x in m.files
                                                                       if x.path.startswith(e.file.path)])
        print(f"{e.id:20}{e.role:12}{e.backend:9}{len(e.labels):>7}{size:>12}"
              f"{e.calibration.temperature:>8.3f}  {e.file.path}")
    signed = (root / "ecology.toml.sig").is_file()
    print("\nall files present, sha256 verified"
          + (", signature verified" if args.trust and signed else
             ", not signed (the trust does not require a signature)" if args.trust else "") + ", the bundle opens"
          + ("" if failed else f", all {len(m.models)} models load and run"))
    for model_id, error in failed.items():
        print(f"model {model_id} FAILS: {error}")
    if failed:
        print(f"edge-eco info: {len(failed)} of {len(m.models)} models cannot load or run "
              f"({', '.join(failed)}); requests routed to them are answered without them", file=sys.stderr)
        return 1
    return 0


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from .fuzz import run_fuzz

    failed = False
    for layer in args.layer:
        r = run_fuzz(layer, args.ecology, args.cases, seed=args.seed, signed=args.signed and layer == "bundle",
                     plugin=args.plugin,
                     progress=lambda i, n: print(f"  {i}/{n} cases", file=sys.stderr, flush=True))
        print(f"fuzz {layer}{' (signed, signature required)' if args.signed and layer == 'bundle' else ''}: {r.cases} cases in {r.seconds:.1f} s: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r.outcomes.items())) + "; refusals by error: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r.errors.items())))
        for line in r.failures[:20] + r.must_refuse_accepted[:20]:
            print(f"  FAIL {line}")
        failed |= not r.ok
    return 1 if failed else 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .signing import generate_key

    if Path(args.out).exists() or Path(f"{args.out}.pub").exists():
        raise CliError(f"{args.out} or {args.out}.pub already exists; not overwriting a key")
    generate_key(args.out)
    print(f"secret key written to {args.out} (mode 0600; keep it off devices), public key to {args.out}.pub")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from .signing import sign_bundle

    out = sign_bundle(args.ecology, args.key)
    print(f"signed {args.ecology}/ecology.toml (every file's sha256 verified first): {out}")
    return 0


REMOTE_HELP = ("URL of the remote generalist. v2: http://host:port (the model is the manifest's [remote] model "
               "or --remote-model) or http://host:port/v2/models/NAME; openai: the API base, e.g. "
               "http://host:8000/v1")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-eco", description="Run, serve and inspect small-model ecologies.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer every request of a file and report accuracy, paths and latency")
    run.add_argument("ecology", help="ecology folder (with ecology.toml)")
    run.add_argument("--requests", required=True, help="JSON lines of {text, label?}, or a CLINC150 json with --split")
    run.add_argument("--split", choices=["train", "val", "test"], help="split of a CLINC150 data_*.json")
    run.add_argument("--remote", help=REMOTE_HELP)
    run.add_argument("--remote-protocol", choices=["v2", "openai"],
                     help="protocol of the remote (default: the manifest's [remote] protocol, else v2)")
    run.add_argument("--remote-model", help="model name on the remote (default: the manifest's [remote] model)")
    run.add_argument("--token-env", help="environment variable holding the remote's bearer token")
    run.add_argument("--out", help="write the report as JSON here")
    run.add_argument("--limit", type=_positive(int), help="answer only the first N requests")
    run.add_argument("--deadline-ms", type=_positive(float), help="deadline of every request")
    run.add_argument("--budget-bytes", type=_positive(int, zero_ok=True),
                     help="memory budget for resident models, 0 = unlimited (overrides the manifest)")
    run.add_argument("--local-only", action="store_true", help="never send a request off the device")
    run.add_argument("--trust", help="trust file or .pub key: the ecology must carry a valid signature")
    run.add_argument("--no-baselines", action="store_true", help="skip the local and remote baselines")
    run.add_argument("--plan", help="a device plan from `edge-eco assign`: honour it; prints figures per niche")
    run.add_argument("--by-niche", action="store_true", help="print accuracy, remote rate and latency per niche")
    run.add_argument("--stride", type=_positive(int), default=1, help="with --plan/--by-niche: every Nth request")
    run.set_defaults(fn=_cmd_run)
    serve = sub.add_parser("serve", help="serve an ecology over the Open Inference Protocol v2 (REST)")
    serve.add_argument("ecology")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (0 picks a free one)")
    serve.add_argument("--token-env", help="environment variable holding the bearer token clients must send")
    serve.add_argument("--trust", help="trust file or .pub key: the ecology must carry a valid signature")
    serve.add_argument("--max-concurrent", type=_positive(int), default=4, help="infer requests run at once")
    serve.add_argument("--max-queue", type=_positive(int, zero_ok=True), default=64,
                       help="infer requests waiting for a slot; more answer 503 at once")
    serve.add_argument("--max-client-connections", type=_positive(int), default=16,
                       help="open connections one client (IPv4 address, IPv6 /64) may hold; more get 429")
    serve.add_argument("--request-timeout", type=_positive(float), default=10.0,
                       help="seconds for a request's line, headers and body to arrive (else 408)")
    serve.add_argument("--rate-limit", type=_positive(float), default=None,
                       help="requests/s per client (token bucket; default: no rate limit); more get 429")
    serve.add_argument("--burst", type=_positive(int), default=None,
                       help="with --rate-limit: requests a client may send at once (default 2 x rate)")
    serve.add_argument("--tls-cert", help="PEM certificate (chain) to serve https")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.set_defaults(fn=_cmd_serve)
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    br = bench_sub.add_parser("routing", help="routing quality vs remote-call rate against baselines")
    br.add_argument("ecology")
    br.add_argument("--requests", required=True)
    br.add_argument("--split", choices=["train", "val", "test"])
    br.add_argument("--remote-bundle", help="remote generalist bundle, run in-process (e.g. models/minilm)")
    br.add_argument("--remote", help=REMOTE_HELP)
    br.add_argument("--remote-protocol", choices=["v2", "openai"],
                    help="protocol of the remote (default: the manifest's [remote] protocol, else v2)")
    br.add_argument("--remote-model", help="model name on the remote (default: the manifest's [remote] model)")
    br.add_argument("--token-env")
    br.add_argument("--limit", type=_positive(int))
    br.add_argument("--seed", type=int, default=0, help="seed of the random-router baseline")
    br.add_argument("--out", help="write the report as JSON here")
    br.add_argument("--plot", help="write the curves as PNG here")
    br.set_defaults(fn=lambda a: cli_bench.bench_routing_cmd(a, lambda: _token(a.token_env)))
    fr = sub.add_parser("fit-router", help="fit the per-model correctness router from validation outcomes")
    fr.add_argument("ecology")
    fr.add_argument("--requests", required=True, help="labelled requests (JSON lines, or CLINC150 json + --split)")
    fr.add_argument("--split", choices=["train", "val", "test"])
    fr.add_argument("--lambda", dest="lam", type=_positive(float, zero_ok=True), default=0.0,
                    help="utility = P(correct) - lambda x cost (cost: the model's MiB); default 0")
    fr.add_argument("--l2", type=_positive(float), default=1e-3, help="L2 strength of the sparse correction")
    fr.add_argument("--reject-share", type=_share, default=None,
                    help="expected share of requests whose answer is the reject label (out of scope); the "
                         "validation outcomes are re-weighted to it (default: as in the data)")
    fr.add_argument("--include-generalist", action="store_true",
                    help="route to the local generalist directly too (default: it is asked when every "
                         "specialist declines)")
    fr.add_argument("--out", help="write the fitting report as JSON here")
    fr.set_defaults(fn=_cmd_fit_router)
    bres = bench_sub.add_parser("residency", help="eviction policies on traces vs LRU and the offline optimum; "
                                "load, unload, accounting and warm-latency figures of the residency manager")
    bres.add_argument("--clinc", default="models/clinc150")
    bres.add_argument("--har", default="models/har")
    bres.add_argument("--data", help="data folder (default $EDGE_ECO_DATA or ../shared/data)")
    bres.add_argument("--stride", type=_positive(int), default=2, help="record every Nth CLINC150 test query")
    bres.add_argument("--cycles", type=_positive(int), default=1000, help="load/unload cycles per backend")
    bres.add_argument("--out", help="write the report as JSON here")
    bres.add_argument("--plot", help="write a bar chart as PNG here")
    bres.set_defaults(fn=cli_bench.bench_residency_cmd)
    from .devicecmd import add_parsers
    add_parsers(sub, _positive, _device_cmd)
    info = sub.add_parser("info", help="verify an ecology bundle and list its population")
    info.add_argument("ecology")
    info.add_argument("--trust", help="trust file or .pub key: check the ecology's signature too")
    info.set_defaults(fn=_cmd_info)
    kg = sub.add_parser("keygen", help="make an Ed25519 key pair for signing ecologies (FILE, FILE.pub)")
    kg.add_argument("out", help="secret key file to write (the public key goes to OUT.pub)")
    kg.set_defaults(fn=_cmd_keygen)
    sg = sub.add_parser("sign", help="sign an ecology's manifest (which lists every file's sha256)")
    sg.add_argument("ecology")
    sg.add_argument("--key", required=True, help="secret key file written by edge-eco keygen")
    sg.set_defaults(fn=_cmd_sign)
    fz = sub.add_parser("fuzz", help="damage a bundle's models and manifest many ways; count refusals")
    fz.add_argument("ecology")
    fz.add_argument("--layer", nargs="+", default=["bundle", "ort"], help="bundle and/or a backend (ort)")
    fz.add_argument("--cases", type=_positive(int), default=1000, help="cases per layer")
    fz.add_argument("--seed", type=int, default=0)
    fz.add_argument("--signed", action="store_true",
                    help="bundle layer: sign the copy with a throw-away key and require the signature")
    fz.add_argument("--plugin", help="module that registers more layers (edge_eco.fuzz.LOADERS, BACKEND_MUTATIONS)")
    fz.set_defaults(fn=_cmd_fuzz)
    cli_build.register(sub, _positive, _token)
    from . import cli_population
    cli_population.register(sub, _printing)
    return ap


def _printing(command):
    """Wrap a command of cli_population (returns text) so that its text is printed here."""
    def run(args: argparse.Namespace) -> int:
        print(command(args, os.environ.get("USER") or os.environ.get("LOGNAME") or "cli"))
        return 0
    return run


# Commands that write their --out/--plot/--replay file after a run of seconds to minutes.
_WRITES_AFTER = frozenset({"run", "eval", "profile", "assign", "fit-router"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-eco``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in _WRITES_AFTER:  # refuse an unwritable report path before the job, not after it
            for flag in ("out", "plot", "replay"):
                if getattr(args, flag, None):
                    cli_bench.refuse_unwritable(f"--{flag}", Path(getattr(args, flag)))
        if args.command == "serve":  # it stops on SIGINT by itself, draining its requests
            return args.fn(args)
        from .backends.runlimit import interrupts_stop_runs
        with interrupts_stop_runs():  # Ctrl-C stops a run in flight instead of waiting for it
            return args.fn(args)
    except (EdgeEcoError, OSError) as exc:  # OSError: a port in use, an unwritable --out, ...
        where = " ".join(filter(None, (args.command, getattr(args, "population", None))))
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # not "[Errno 2] ..."
            exc = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") + f": {exc.strerror}"
        print(f"edge-eco {where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

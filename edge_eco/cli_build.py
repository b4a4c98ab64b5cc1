"""``edge-eco build`` and ``edge-eco eval``: an ecology from your own data, and its score on a
labelled file (the README's "Build an ecology from your own data"). Registered by ``cli``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from . import ecology as _ecology
from .datasets import refuse_windows_for_text
from .errors import RequestError
from .report import format_report


def register(sub, positive: Callable, token: Callable[[str | None], str | None]) -> None:
    """Add ``build`` and ``eval`` to the ``edge-eco`` sub-command parsers ``sub``."""
    bld = sub.add_parser("build", help="build an ecology bundle from labelled data and a recipe (needs the build extra)")
    bld.add_argument("recipe", help="recipe TOML (see recipes/)")
    bld.add_argument("--out", required=True, help="bundle folder to write")
    bld.add_argument("--data", help="data folder the recipe's paths are relative to (default: $EDGE_ECO_DATA or "
                                    "../shared/data)")
    bld.add_argument("--quiet", action="store_true", help="no progress bars")
    bld.set_defaults(fn=_cmd_build)
    ev = sub.add_parser("eval", help="score a bundle on a labelled file (the keys of `run`, plus an eval block)")
    ev.add_argument("ecology")
    ev.add_argument("--requests", required=True, help="JSON lines, CSV/TSV, or a CLINC150 json or the stm32_har "
                                                      "folder with --split")
    ev.add_argument("--split", choices=["train", "val", "test"])
    ev.add_argument("--text-field", default="text")
    ev.add_argument("--vector-field", help="field holding each row's vector (a dense-vector ecology)")
    ev.add_argument("--label-field", default="label")
    ev.add_argument("--niche-field", help="field giving each request's niche (per-niche accuracy)")
    ev.add_argument("--remote", help="remote generalist URL (Open Inference Protocol v2)")
    ev.add_argument("--remote-bundle", help="remote generalist bundle, run in-process")
    ev.add_argument("--token-env")
    ev.add_argument("--limit", type=positive(int))
    ev.add_argument("--out", help="write the report as JSON here")
    ev.set_defaults(fn=lambda a: _cmd_eval(a, token))


_BAR_OPEN = [False]


def _progress(step: str, done: int, total: int) -> None:
    """A one-line stderr progress bar, rewritten in place."""
    width = 30
    fill = int(width * done / max(1, total))
    _BAR_OPEN[0] = done < total
    print(f"\r  {step:18} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}", end="" if _BAR_OPEN[0] else "\n",
          file=sys.stderr, flush=True)


def _log_line(line: str) -> None:
    """A log line on stderr, after ending an open progress bar."""
    print(("\n" if _BAR_OPEN[0] else "") + line, file=sys.stderr, flush=True)
    _BAR_OPEN[0] = False


def _cmd_build(args: argparse.Namespace) -> int:
    """``edge-eco build``: a bundle from a recipe and labelled data."""
    import time

    from .build.pipeline import build
    from .build.recipe import load_recipe
    from .datasets import data_root

    recipe = load_recipe(args.recipe)
    root = data_root(args.data, os.environ.get("EDGE_ECO_DATA"))
    t0 = time.monotonic()
    report = build(recipe, root, Path(args.out),
                   log=lambda m: _log_line(f"[build {time.monotonic() - t0:6.1f}s] {m}"),
                   progress=None if args.quiet else _progress)
    t = report["test"]
    if "eval" not in t:  # an embedding-head bundle: one model, no remote tier
        print(f"edge-eco build: {recipe.name} -> {args.out} in {time.monotonic() - t0:.1f} s; test accuracy "
              f"{t['accuracy']}, in scope {t['in_scope_accuracy']}, {recipe.reject_label} recall {t['oos_recall']}")
        return 0
    print(f"edge-eco build: {recipe.name} -> {args.out} in {time.monotonic() - t0:.1f} s; test accuracy "
          f"{t['accuracy']}, remote rate {t['remote_rate']}, local tier {t['eval']['local_accuracy']}")
    return 0


def _cmd_eval(args: argparse.Namespace, token: Callable[[str | None], str | None]) -> int:
    """``edge-eco eval``: score a bundle on a labelled file."""
    from .evaljob import InProcessRemote, eval_bundle, load_labelled

    if args.remote and args.remote_bundle:
        raise RequestError("give the remote generalist at most once: --remote URL or --remote-bundle DIR")
    examples = load_labelled(args.requests, split=args.split, text_field=args.text_field,
                             label_field=args.label_field, niche_field=args.niche_field,
                             vector_field=args.vector_field)
    if args.limit:
        examples = examples[: args.limit]
    if not examples:
        raise RequestError(f"{args.requests} holds no labelled requests")
    remote_eco = _ecology.open(args.remote_bundle) if args.remote_bundle else None
    try:
        remote = InProcessRemote(remote_eco) if remote_eco else None
        with _ecology.open(args.ecology, remote_url=args.remote, remote_token=token(args.token_env),
                           remote_client=remote) as eco:
            if args.vector_field and eco.feature_dim is None:
                raise RequestError(f"{eco.name} takes text, not vectors: drop --vector-field {args.vector_field} "
                               f"(requests are read from --text-field, default 'text')")
            if eco.feature_dim is not None and any(e.vector is None for e in examples):
                raise RequestError(f"{eco.name} takes {eco.takes}, not text: name the field holding them with "
                               "--vector-field FIELD")
            if eco.feature_dim is None:
                refuse_windows_for_text(examples, eco.name, args.requests)
            elif remote_eco is not None:
                raise RequestError(f"--remote-bundle {args.remote_bundle}: {eco.name} answers {eco.takes}, and a "
                               "remote generalist answers text; score a sensor ecology without one")
            label = (lambda t: eco.remote.infer([t])[0].label) if eco.remote is not None else None
            report = eval_bundle(eco, examples, source=str(args.requests) + (f" [{args.split}]" if args.split else ""),
                                 remote_label=label, local_only=eco.remote is None,
                                 progress=lambda i, n: _progress("requests", i, n))
    finally:
        if remote_eco is not None:
            remote_eco.close()
    print(format_report(report))
    e = report["eval"]
    print(f"local tier {100 * e['local_accuracy']:.2f} %, ECE {e['ece_local']}"
          + (f", remote alone {100 * e['remote_accuracy']:.2f} %, APGR {e['apgr']}" if "apgr" in e else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.out}")
    return 0

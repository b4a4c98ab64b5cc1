"""``edge-eco population ...`` and ``edge-eco diversity``: argument parsers and table text.

Each command returns the text to print; ``cli.py`` prints it (the only module that prints) and
passes ``who`` (the user named in the environment) for the audit log.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from .errors import RequestError
from .population import Population


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with columns sized to their contents."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) if rows else "\n".join(lines[:2] + ["(none)"])


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z" if ts else "-"


def status(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, readonly=True) as pop:
        pop.store.check()  # the whole file, however big (opening checks files up to 64 MiB)
        m = pop.manifest
        shadow = {}
        errors = pop.shadow_errors()
        for ch, st, _ in pop.challengers(None):
            if st not in ("shadow", "watch"):
                continue
            n = errors.get((ch.capability, ch.entry.version), (0, ""))[0]
            shadow.setdefault(ch.capability, []).append(ch.entry.version + (" (watch)" if st == "watch" else "")
                                                        + (f" ({n} errors)" if n else ""))
        rows = [[e.id, e.role, e.version, e.file.sha256[:12], _when(pop.last_change_s(e.id)),
                 ",".join(shadow.get(e.id, [])) or "-"] for e in m.models]
        counts = {t: pop.store.query(f"SELECT count(*) FROM {t}")[0][0]
                  for t in ("outcomes", "feedback", "shadow", "audit")}
        st = pop.store.stats()
        g = m.governance
        return "\n".join([
            f"{m.name} v{m.version} — population of {len(m.models)}",
            table(["capability", "role", "champion", "sha256", "last change", "challengers"], rows), "",
            f"outcome memory: {counts['outcomes']} decisions, {counts['feedback']} feedback labels, "
            f"{counts['shadow']} shadow pairs, {counts['audit']} audit entries, {st['bytes']} bytes "
            f"(bounds: {g.max_rows} rows, {g.max_bytes} bytes)",
            f"archive: {pop.archive.bytes_used()} of {g.archive_bytes} bytes",
            *[f"shadow errors: {cap} v{v}: {n}, last: {e}" for (cap, v), (n, e) in sorted(errors.items())],
            f"policy: auto-apply {list(g.auto_apply) or 'nothing'}; promote after >= {g.min_pairs} labelled pairs, "
            f"exact McNemar at {g.alpha} over {g.looks} looks, no slice regression at {g.slice_alpha}, "
            f"cool-down {g.cooldown_s:.0f} s; the replaced champion watches the new one (rollback on the same test); "
            f"undecided ones retire after {g.retire_after_s:.0f} s; shadow {g.shadow_rate:.0%} of traffic within {g.shadow_cpu_share:.0%} CPU"])


def challengers(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, readonly=not args.add) as pop:
        out = []
        if args.add:
            ch = pop.add_challenger(args.add, who=who)
            out.append(f"registered challenger {ch.capability} v{ch.entry.version} (shadow evaluation starts "
                       "with the next ecology opened with a recorder)\n")
        now = time.time()
        rows = []
        errors = pop.shadow_errors()
        for ch, st, lin in pop.challengers(None):
            live = st in ("shadow", "watch")  # a watch: a replaced champion shadowing the new one
            if not (live or args.all):
                continue
            v = pop.evaluate(ch, now) if live else None
            rows.append([ch.capability, ch.entry.version, st, lin.get("parent") or "-",
                         errors.get((ch.capability, ch.entry.version), (0, ""))[0],
                         len(pop.pairs(ch)) if live else "-",
                         f"{v.challenger_only}/{v.champion_only}" if v and v.n else "-",
                         f"{v.p_better:.3g}" if v and v.n else "-", v.action if v else "-",
                         v.reason if v else ""])
        out.append(table(["capability", "version", "status", "parent", "shadow errors", "labelled pairs", "wins/losses",
                          "p (better)", "verdict", "why"], rows))
        return "\n".join(out)


def proposals(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, readonly=not args.review, trust=args.trust) as pop:
        out = []
        if args.review:
            made = pop.review(who="controller")
            out.append(f"controller review: {len(made)} new proposal(s), "
                       f"{sum(1 for _, applied in made if applied)} applied by policy\n")
        rows = [[p.id, _when(p.ts), p.kind, p.capability, p.version, p.status,
                 f"{p.evidence.get('challenger_only')}/{p.evidence.get('champion_only')} of {p.evidence.get('n')}",
                 p.reason] for p in pop.proposals(None if args.all else "pending")]
        out.append(table(["id", "when", "kind", "capability", "version", "status", "wins/losses", "why"], rows))
        return "\n".join(out)


def approve(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, trust=args.trust) as pop:
        p = pop.approve(args.id, who=who)
        return f"proposal {p.id} applied: {p.kind} {p.capability} v{p.version} (by {who})"


def rollback(args: argparse.Namespace, who: str) -> str:
    # the emergency path: it works when the outcome database is damaged, without an audit entry
    with Population(args.ecology, trust=args.trust, damaged_store_ok=True) as pop:
        before = pop.manifest.model(args.capability).version
        version = pop.rollback(args.capability, to_version=args.to, who=who, why=args.why or "")
        out = f"{args.capability}: rolled back from v{before} to archived champion v{version}"
        if pop.store_damage is not None:
            out += ("\nwarning: the audit log could not be written (the outcome database is damaged); not recorded: "
                    + "; ".join(pop.unrecorded) + f"\n{pop.store_damage}")
        return out


def archive(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, readonly=True) as pop:
        rows = [[a.capability, a.version, "yes" if a.was_champion else "no", a.bytes, a.parent or "-",
                 (a.data_fingerprint or "-")[:12], ", ".join(f"{k}={v}" for k, v in a.metrics.items()) or "-",
                 "-" if a.diversity is None else f"{a.diversity:.3f}", "evicted" if a.evicted else "kept",
                 _when(a.archived_ts)] for a in pop.archive.list()]
        return table(["capability", "version", "champion", "bytes", "parent", "data", "metrics", "diversity",
                      "files", "archived"], rows)


def audit(args: argparse.Namespace, who: str) -> str:
    with Population(args.ecology, readonly=True) as pop:
        rows = [[r[0], _when(r[1]), r[2], r[3] + ("" if r[10] == "done" else f" ({r[10]})"), r[4], r[5] or "-",
                 r[6] or "-", (r[9] or "-")[:12], r[7]] for r in pop.audit()]
        return table(["#", "when", "who", "action", "capability", "from", "to", "manifest", "why"], rows)


def diversity(args: argparse.Namespace, who: str) -> str:
    from .datasets import load_requests
    from .diversity import format_diversity, measure
    from .ecology import open as open_ecology

    examples = [e for e in load_requests(args.requests, args.split) if e.label is not None]
    if not examples:
        raise RequestError(f"{args.requests}: no labelled requests (lines need a \"label\")")
    with open_ecology(args.ecology) as eco:
        space = set(eco.manifest.labels)
        known = [(e.text, e.label) for e in examples if e.label in space]
        if not known:
            raise RequestError(f"{args.requests}: none of the {len(examples)} labels is in the ecology's label space")
        report = measure(eco, known, limit=args.limit, seed=args.seed)
    out = format_diversity(report)
    if len(known) < len(examples):
        out += (f"\nwarning: {len(examples) - len(known)} of {len(examples)} labelled requests skipped: "
                "their label is not in the ecology's label space")
    if args.archive:
        from .archive_score import score_archive

        with Population(args.ecology) as pop:
            scored = score_archive(pop, known, limit=args.limit, seed=args.seed)
        out += ("\n\narchived versions against their champion (error disagreement, stored for the archive's "
                "eviction: least diverse first)\n" + table(["capability", "version", "requests", "diversity"],
                                                            [[c, v, n, f"{d:.3f}"] for c, v, d, n in scored]))
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: Any, run: Callable[[Callable[[argparse.Namespace, str], str]], Callable]) -> None:
    """Add ``population`` and ``diversity`` to the ``edge-eco`` sub-parsers; ``run`` wraps a command."""
    pop = sub.add_parser("population", help="govern the population: champions, challengers, proposals, archive")
    ps = pop.add_subparsers(dest="population", required=True)
    p = ps.add_parser("status", help="champions, challengers, outcome memory and policy")
    p.add_argument("ecology")
    p.set_defaults(fn=run(status))
    p = ps.add_parser("challengers", help="challengers in shadow, watches of replaced champions, their evidence "
                                          "(--add DIR registers one)")
    p.add_argument("ecology")
    p.add_argument("--add", metavar="DIR", help="folder with challenger.toml and the model files")
    p.add_argument("--all", action="store_true", help="include promoted, rejected, retired and ended ones")
    p.set_defaults(fn=run(challengers))
    p = ps.add_parser("proposals", help="the controller's proposals (--review runs the controller first)")
    p.add_argument("ecology")
    p.add_argument("--review", action="store_true", help="propose from the evidence; apply what policy allows")
    p.add_argument("--all", action="store_true", help="include applied proposals")
    p.add_argument("--trust", help="trust file naming the governance_key that re-signs a signed ecology")
    p.set_defaults(fn=run(proposals))
    p = ps.add_parser("approve", help="apply a pending proposal (atomic manifest swap + audit entry)")
    p.add_argument("ecology")
    p.add_argument("id", type=int)
    p.add_argument("--trust", help="trust file naming the governance_key that re-signs a signed ecology")
    p.set_defaults(fn=run(approve))
    p = ps.add_parser("rollback", help="restore an archived champion of a capability")
    p.add_argument("ecology")
    p.add_argument("capability")
    p.add_argument("--to", metavar="VERSION", help="archived version (default: the previous champion)")
    p.add_argument("--why", help="reason recorded in the audit log")
    p.add_argument("--trust", help="trust file naming the governance_key that re-signs a signed ecology")
    p.set_defaults(fn=run(rollback))
    p = ps.add_parser("archive", help="archived model versions with lineage")
    p.add_argument("ecology")
    p.set_defaults(fn=run(archive))
    p = ps.add_parser("audit", help="the audit log of every change")
    p.add_argument("ecology")
    p.set_defaults(fn=run(audit))
    d = sub.add_parser("diversity", help="error correlation of the models under perturbations, oracle gap per niche")
    d.add_argument("ecology")
    d.add_argument("--requests", required=True, help="labelled requests: JSON lines, or a CLINC150 json with --split")
    d.add_argument("--split", choices=["train", "val", "test"])
    d.add_argument("--limit", type=_positive_int, default=600, help="requests sampled (seeded) from the file")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--archive", action="store_true",
                   help="also score every archived version against its champion and store it (archive eviction)")
    d.set_defaults(fn=run(diversity))

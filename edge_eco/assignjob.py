"""The jobs behind ``edge-eco profile``, ``assign`` and per-niche figures: data in, results out. Shell.

Requests come from the data set the ecology was built from: a CLINC150 ``data_*.json`` (with a
split), a SIB-200 folder (``<language>/{train,dev,test}.tsv``; the language is the request's
niche) or, for a sensor ecology, the stm32_har folder (with a split) or rows of vectors. Only ``cli.py`` prints; these functions return data and formatted text.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

from . import assign as A
from . import ecology as _ecology
from .datasets import Example, load_requests
from .errors import RequestError
from .evaljob import load_labelled as load_evaluated
from .har_data import is_har_folder
from .manifest import Manifest
from .plan import DevicePlan, make_plan
from .platform import Platform
from .profile import DeviceProfile
from .replay import label_niches, model_costs, niche_values, replay

_SIB_SPLITS = {"train": "train", "val": "dev", "dev": "dev", "test": "test"}


def load_sib200(folder: Path, split: str, languages: Sequence[str] | None = None) -> tuple[list[Example], list[str]]:
    """SIB-200 requests of one split, in language order, and the language of each.

    Raises:
        RequestError: unknown split, no language folders, a malformed TSV.
    """
    if split not in _SIB_SPLITS:
        raise RequestError(f"split {split!r} is not one of {sorted(_SIB_SPLITS)}")
    langs = sorted(p.name for p in Path(folder).iterdir() if (p / f"{_SIB_SPLITS[split]}.tsv").is_file()) \
        if Path(folder).is_dir() else []
    if languages:
        missing = sorted(set(languages) - set(langs))
        if missing:
            raise RequestError(f"{folder}: no {split} data for language(s) {missing}")
        langs = [x for x in langs if x in set(languages)]
    if not langs:
        raise RequestError(f"{folder}: no <language>/{_SIB_SPLITS[split]}.tsv files (is this the sib200 folder?)")
    examples, niches = [], []
    for lang in langs:
        path = Path(folder) / lang / f"{_SIB_SPLITS[split]}.tsv"
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows or rows[0][:3] != ["index_id", "category", "text"]:
            raise RequestError(f"{path}: expected the header index_id<TAB>category<TAB>text")
        for n, row in enumerate(rows[1:], 2):
            if len(row) != 3:
                raise RequestError(f"{path}:{n}: expected 3 tab-separated fields, got {len(row)}")
            examples.append(Example(row[2], row[1]))
            niches.append(lang)
    return examples, niches


def requests_source(path: Path, split: str) -> str:
    """Which requests were read, in words: the file and, where it has splits (a folder, a .json), the split."""
    return f"{path} [{split}]" if path.is_dir() or path.suffix == ".json" else str(path)


def default_requests(manifest: Manifest, data_root: Path) -> Path:
    """The data set an ecology was built from, by its input contract: the stm32_har folder for a
    sensor (dense-vector) ecology, the SIB-200 folder for a ``sib200*`` ecology, else CLINC150.

    Raises:
        RequestError: a dense ecology of plain vectors, which has no shipped data set.
    """
    if manifest.dense is not None:
        if manifest.dense.kind != "accel-window-v1":
            raise RequestError(f"{manifest.name} reads {manifest.dense.kind} vectors and has no default data set: "
                               "give --requests FILE with --vector-field FIELD")
        return data_root / "stm32_har"
    return data_root / ("sib200" if manifest.name.startswith("sib200") else "clinc150/data_full.json")


def load_labelled(manifest: Manifest, data_root: Path, requests: str | None, split: str,
                  limit: int | None = None, stride: int = 1,
                  vector_field: str | None = None) -> tuple[list[Example], list[str]]:
    """Labelled requests of ``split`` and the niche of each, from ``requests`` or the ecology's data set
    (:func:`default_requests`).

    ``requests`` is a SIB-200 folder, the stm32_har folder or a CLINC150 JSON (read with ``split``),
    JSON lines of ``{text, label}``, or with ``vector_field`` JSON lines or CSV/TSV rows of dense
    requests (read like ``edge-eco eval --vector-field``). The niche is the language for SIB-200, else
    the niche of the specialist whose labels hold the gold label (the reject label and unknown
    labels get the label itself).

    Raises:
        RequestError: unreadable or malformed data, no labelled request, no label of the ecology's,
        or text rows for a dense ecology (and vectors for a text one).
    """
    path = Path(requests) if requests is not None else default_requests(manifest, data_root)
    dense = manifest.dense is not None
    if vector_field is not None and not dense:
        raise RequestError(f"--vector-field: {manifest.name} takes text, not vectors")
    if path.is_dir() and not is_har_folder(path):
        examples, niches = load_sib200(path, split)
    else:
        if vector_field is not None:
            examples = [Example(e.text, e.label, e.vector) for e in load_evaluated(path, vector_field=vector_field)]
        elif dense and not path.is_dir():
            raise RequestError(f"{path}: {manifest.name} answers sensor windows; give the stm32_har folder, or "
                               "--vector-field FIELD for rows holding a vector each")
        else:
            examples = load_requests(path, split if path.is_dir() or path.suffix == ".json" else None)
        by_label = label_niches(manifest)
        niches = [by_label.get(e.label or "", e.label or "") for e in examples]
    if examples and dense != all(e.vector is not None for e in examples):
        raise RequestError(f"{path}: {'text' if dense else 'vector'} requests for {manifest.name}, which takes "
                           f"{'sensor windows' if dense else 'text'}")
    examples, niches = examples[::stride], niches[::stride]
    if limit:
        examples, niches = examples[:limit], niches[:limit]
    examples_niches = [(e, n) for e, n in zip(examples, niches) if e.label is not None]
    if not examples_niches:
        raise RequestError(f"{path}: no labelled requests in split {split!r}")
    if not {e.label for e, _ in examples_niches} & set(manifest.labels):
        raise RequestError(f"{path}: none of its labels is in {manifest.name}'s label space; "
                           "is it the data set this ecology was built from?")
    return [e for e, _ in examples_niches], [n for _, n in examples_niches]


def remote_labeller(remote_bundle: str | None, remote_url: str | None, token: str | None,
                    default_model: str) -> tuple[Callable[[str], str], Callable[[], None]]:
    """text -> label of the remote generalist (a bundle run in-process, or a v2 URL), and a closer."""
    if remote_bundle:
        eco = _ecology.open(remote_bundle)
        return (lambda text: eco.answer(text).label), eco.close
    from .fallback import V2Client
    url, model = (remote_url.split("/v2/models/", 1) + [default_model])[:2]
    client = V2Client(url, model.strip("/"), token=token)
    return (lambda text: client.infer([text])[0].label), client.close


def replay_ecology(path: str | Path, examples: Sequence[Example], niches: Sequence[str],
                   remote: Callable[[str], str], progress=None) -> list[A.Outcome]:
    """Open the ecology with no budget and replay ``examples`` (see :func:`edge_eco.replay.replay`)."""
    with _ecology.open(path, budget_bytes=0, remote_url=None) as eco:
        return replay(eco, examples, remote, niches, progress)


def budgets(p: Platform, remote_allowed: bool = True) -> A.Budgets:
    """The optimiser's view of a platform (as offline when the remote is not allowed)."""
    return A.Budgets(p.memory_budget_bytes, p.latency_budget_ms, p.remote_budget_rate if remote_allowed else 0.0,
                     p.cpu_factor, p.remote_rtt_ms if remote_allowed else None)


def region_of(manifest: Manifest, niches: Sequence[str] | None) -> frozenset[str] | None:
    """The region as a set of niche values, checked against the ecology's niches (None: no region).

    Raises:
        RequestError: an empty niche (``--niches ""``), or a niche no model of the ecology serves.
    """
    if niches is None:
        return None
    known = {v for m in manifest.models for v in niche_values(m)}
    if not niches or not all(n.strip() for n in niches):
        raise RequestError(f"--niches: give comma-separated niche names, got {','.join(niches)!r} "
                           f"(known: {sorted(known)})")
    unknown = sorted(set(niches) - known)
    if unknown:
        raise RequestError(f"--niches: {unknown} are not niches of {manifest.name} (known: {sorted(known)})")
    return frozenset(niches)


def assign_one(root: Path, manifest: Manifest, platform: Platform, outcomes: list[A.Outcome],
               profile: DeviceProfile | None, region: frozenset[str] | None,
               allow_remote: bool = False) -> tuple[DevicePlan, A.Plan]:
    """Optimise the ecology's assignment to ``platform``; returns the plan file's content and the result.

    The remote is used when the manifest's policy allows it, or when ``allow_remote`` overrides a
    manifest that forbids it (an ecology shipped without a remote tier, deployed with one).
    """
    remote_ok = manifest.policy.remote == "allowed" or allow_remote
    costs = model_costs(root, manifest, profile)
    result = A.optimise(outcomes, costs, budgets(platform, remote_ok), region)
    return make_plan(manifest, platform, costs, result.decisions, result.expected, region, len(outcomes),
                     remote_ok), result


def format_plan(plan: DevicePlan, result: A.Plan, source: str = "") -> str:
    """The plan as a table and its expected figures (``source``: which requests were replayed)."""
    e = result.expected
    region = f", region {','.join(plan.region)}" if plan.region else ""
    lines = [f"{plan.ecology} on {plan.platform}: budget {plan.memory_budget_bytes / 2**20:.1f} MiB, latency "
             f"{plan.latency_budget_ms} ms (local p95), remote <= {plan.remote_budget_rate:.0%}, network "
             f"{plan.network} (remote {plan.remote_policy}), cpu x{plan.cpu_factor}{region}",
             f"{'model':22}{'decision':>11}{'bytes':>12}{'load ms':>10}"]
    for m in plan.models:
        lines.append(f"{m.id:22}{m.decision:>11}{m.resident_bytes:>12}{m.load_ms:>10.3f}")
    lines.append(f"expected on {plan.requests} requests{' of ' + source if source else ''}: accuracy {e.accuracy:.2%}, remote rate "
                 f"{e.remote_rate:.2%} (forced {e.forced_rate:.2%}), local p50/p95 {e.local_p50_ms:.3f}/"
                 f"{e.local_p95_ms:.3f} ms, p95 {e.p95_ms:.3f} ms, cold loads {e.cold_loads}, pinned "
                 f"{e.pinned_bytes / 2**20:.2f} MiB" + ("" if e.feasible else "  INFEASIBLE: " + "; ".join(e.problems)))
    if plan.remote_policy == "forbidden" and e.forced_rate > 0:
        lines.append(f"note: no remote on this device ({plan.network} network or the ecology's policy forbids it): the "
                     f"{e.forced_rate:.1%} of requests needing excluded models get the reject label; --allow-remote "
                     "deploys with a remote generalist")
    return "\n".join(lines)


def platform_curves(root: Path, manifest: Manifest, platforms: Sequence[Platform], outcomes: list[A.Outcome],
                    profile: DeviceProfile | None, region: frozenset[str] | None,
                    allow_remote: bool = False) -> dict[str, dict]:
    """Per platform: its plan's expected accuracy against remote rate as the remote budget varies."""
    costs = model_costs(root, manifest, profile)
    remote_ok = manifest.policy.remote == "allowed" or allow_remote
    rates = [i / 50 for i in range(51)]
    out = {}
    for p in platforms:
        result = A.optimise(outcomes, costs, budgets(p, remote_ok), region)
        pts = A.curve(outcomes, costs, result.decisions, budgets(p, remote_ok), rates, region)
        out[p.name] = {"points": pts, "at": (result.expected.remote_rate, result.expected.accuracy),
                       "feasible": result.expected.feasible}
    return out


def plot_platforms(curves: dict[str, dict], path: Path, title: str) -> Path:
    """One PNG: expected accuracy against remote rate, a line per platform, a dot at its budget."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RequestError("--plot needs matplotlib (pip install 'edge_eco[bench]')") from exc
    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", "-.", ":"]
    for k, (name, c) in enumerate(curves.items()):
        xs, ys = zip(*sorted(set(c["points"])))  # identical plans draw identical lines: styles tell them apart
        line, = ax.plot([100 * x for x in xs], [100 * y for y in ys], styles[k % len(styles)], label=name,
                        lw=2.2 - 0.2 * k)
        ax.plot([100 * c["at"][0]], [100 * c["at"][1]], "o" if c["feasible"] else "x", color=line.get_color())
    ax.set_xlabel("remote calls (% of requests)")
    ax.set_ylabel("expected accuracy (%), validation replay")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def answer_by_niche(eco, examples: Sequence[Example], niches: Sequence[str], progress=None) -> dict[str, dict]:
    """Answer every example and report accuracy, remote rate and latency per niche and overall ("all")."""
    import time

    from .report import percentiles_ms
    rows: dict[str, list[tuple[bool, str, float]]] = {}
    for i, (ex, niche) in enumerate(zip(examples, niches)):
        t0 = time.perf_counter()
        a = eco.answer(ex.request)
        ms = (time.perf_counter() - t0) * 1e3
        for key in (niche, "all"):
            rows.setdefault(key, []).append((a.label == ex.label, a.path, ms))
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(examples))
    out = {}
    for key, r in rows.items():
        local = [ms for _, p, ms in r if p in ("direct", "coalition")]
        out[key] = {"requests": len(r), "accuracy": sum(ok for ok, _, _ in r) / len(r),
                    "remote_rate": sum(p == "remote" for _, p, _ in r) / len(r),
                    "unavailable": sum(p == "unavailable" for _, p, _ in r),
                    "local_ms": percentiles_ms(local), "all_ms": percentiles_ms([ms for _, _, ms in r])}
    return out


def format_by_niche(table: dict[str, dict], title: str) -> str:
    """The per-niche table as text (the "all" row last)."""
    lines = [title, f"{'niche':22}{'requests':>9}{'accuracy':>10}{'remote':>9}{'local p50':>11}{'local p95':>11}"
             f"{'p95 all':>10}{'unavailable':>13}"]
    for key in sorted(table, key=lambda k: (k == "all", k)):
        r = table[key]
        lines.append(f"{key:22}{r['requests']:>9}{r['accuracy']:>10.2%}{r['remote_rate']:>9.2%}"
                     f"{r['local_ms']['p50']:>9.3f}ms{r['local_ms']['p95']:>9.3f}ms{r['all_ms']['p95']:>8.2f}ms"
                     f"{r['unavailable']:>13}")
    return "\n".join(lines)


def save_outcomes(outcomes: Sequence[A.Outcome], manifest: Manifest, path: Path) -> None:
    """Write replayed outcomes as JSON (so that assign can be rerun for other platforms without a replay),
    with each model's sha256 from the manifest, so that the file is only ever reused for these models."""
    import dataclasses
    import json
    rows = [dataclasses.asdict(o) for o in outcomes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ecology": manifest.name, "version": manifest.version,
                                "models": [m.id for m in manifest.models],
                                "sha256": {m.id: m.file.sha256 for m in manifest.models}, "outcomes": rows}) + "\n")


def load_outcomes(manifest: Manifest, path: Path) -> list[A.Outcome]:
    """Read outcomes written by :func:`save_outcomes` for this ecology.

    A replay is reused only for the very models it was taken with: the same ecology name and model
    ids are not enough (a rebuilt bundle, or the population before a promote or rollback, has them too).

    Raises:
        RequestError: unreadable, malformed, written for another ecology or population, written without
        the models' sha256s, or for a model whose file differs from this manifest's (named).
    """
    import json
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d["ecology"] != manifest.name or d["models"] != [m.id for m in manifest.models]:
            raise RequestError(f"{path}: replayed for {d['ecology']} {d['models']}, not this ecology's population")
        if not isinstance(d.get("sha256"), dict):
            raise RequestError(f"{path}: the replay does not record its models' sha256s (written by an older "
                               "edge-eco), so it may be of other models; delete it to replay again")
        changed = [m.id for m in manifest.models if d["sha256"].get(m.id) != m.file.sha256]
        if changed:
            m = manifest.model(changed[0])
            raise RequestError(f"{path}: replayed with other model files than {manifest.name}'s now: {changed} "
                               f"(e.g. {m.id}: {m.file.path} is sha256 {m.file.sha256[:12]}, the replay's "
                               f"{str(d['sha256'].get(m.id))[:12]}); delete the file or give a new --replay "
                               "path to replay again")
        return [A.Outcome(tuple(int(m) for m in o["models"]), bool(o["local_ok"]), bool(o["remote_ok"]),
                          float(o["confidence"]), float(o["local_ms"]), float(o["remote_ms"]), str(o["niche"]),
                          tuple(int(x) for x in o.get("stages", ())))
                for o in d["outcomes"]]
    except RequestError:
        raise  # already says what is wrong with the file
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RequestError(f"{path}: not a replay file of this ecology ({exc})") from exc

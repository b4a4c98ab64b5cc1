"""The whole build: recipe + data -> a bundle the runtime opens (``edge-eco build``).

Steps: validate the data (before any training), featurize, train one int8 specialist per niche
(its labels + a decline label) and a local generalist, fit every temperature on the calibration
split, fit the router (:func:`edge_eco.build.router_fit.fit_router`), write ``ecology.toml`` with
sha256s, pick the thresholds by replaying the calibration split through the runtime, optionally
fit the learned deferral, then score the test split and write ``build.json`` and ``MODEL_CARD.md``.
An embedding-head recipe (the remote generalist) is built by :mod:`edge_eco.build.embedding_head`.
Deterministic for a recipe and data: a rebuild is byte-identical (no clocks or timings in files).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .._native import Featurizer
from ..bundle import sha256_file
from ..errors import BuildError, DataError
from ..manifest import Calibration, FileEntry, Manifest, ModelEntry, Policy, RemoteSpec, RouterSpec
from ..tomlwrite import manifest_to_toml
from .calibrate import pick_reject_floor, tune_policy
from .data import Dataset, Row, prepare
from .outdir import clear_out
from .precheck import check_before_training
from .recipe import Recipe, unsafe_id
from .recipe_embedding import EmbeddingHeadRecipe
from .router_fit import fit_router

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Population:
    """Which model answers which niche values."""

    specialists: tuple[tuple[str, tuple[str, ...]], ...]  # id -> niche values
    generalist: str

    def owner(self, niche: str | None) -> str:
        """The model id that owns a niche value (the generalist when no specialist does)."""
        for sid, values in self.specialists:
            if niche in values:
                return sid
        return self.generalist


def population(recipe: Recipe, data: Dataset) -> Population:
    """Specialists from the recipe's groups, else one per niche value seen in train (sorted)."""
    if recipe.specialists.groups:
        specs = recipe.specialists.groups
    else:
        specs = tuple((n, (n,)) for n in sorted({r.niche for r in data.train if r.niche is not None}))
    ids = [s for s, _ in specs] + [recipe.generalist.id]
    bad = [s for s in ids if unsafe_id(s)]
    if bad:
        raise BuildError(f"niche value(s) {bad[:5]} cannot name a model file (1-64 letters, digits, _ - ., no "
                         "'..'); map them with [specialists] groups = {{id = [values]}} (nothing was trained)")
    if len(set(ids)) != len(ids):
        raise BuildError(f"model ids collide: {ids} (a niche value equals the generalist's id?)")
    val_niches = {r.niche for r in data.val}
    no_val = [s for s, values in specs if not val_niches.intersection(values)]
    if no_val:
        raise BuildError(f"specialist(s) {no_val[:5]} have no validation rows (their niches appear in train only), "
                         "so they cannot be calibrated; add data or raise [split] val_fraction (nothing was trained)")
    return Population(specs, recipe.generalist.id)


def _train_one(name: str, labels: list[str], y_tr, y_va, x_tr, f_va, out: Path, family, weight=None) -> dict:
    from .export import onnx_logits, write_onnx
    from .train import fit_softmax, fit_temperature

    w, b = fit_softmax(x_tr, y_tr, len(labels), l2=family.l2, max_iter=family.max_iter, sample_weight=weight)
    files = write_onnx(w, b, out, name)
    logits = onnx_logits(out / files[0], f_va)
    return {"files": files, "temperature": fit_temperature(logits, y_va), "val_logits": logits,
            "val_accuracy": float((logits.argmax(1) == y_va).mean())}


def _calibrate_generalist(recipe: Recipe, trained: dict, y_va: np.ndarray, reject: int | None) -> tuple[float, float]:
    """(temperature, reject bias) of the generalist by the recipe's ``[calibration]`` method.

    Without a reject label in its labels the generalist keeps its plain temperature.
    """
    cal = recipe.calibration
    if reject is None or (cal.method == "temperature" and cal.reject_share is None):
        return trained["temperature"], 0.0
    from .train import fit_temperature, fit_temperature_reject_bias, reject_share_weights

    weight = None if cal.reject_share is None else reject_share_weights(y_va, reject, cal.reject_share)
    if cal.method == "temperature":
        return fit_temperature(trained["val_logits"], y_va, weight), 0.0
    return fit_temperature_reject_bias(trained["val_logits"], y_va, reject, weight)


def build(recipe: Recipe | EmbeddingHeadRecipe, data_root: Path, out: Path, *, log: Log = lambda m: None,
          progress: Progress | None = None) -> dict:
    """Build the bundle of ``recipe`` into ``out`` (created or emptied of what a build writes).

    Args:
        recipe: a parsed recipe.
        data_root: the folder the recipe's data paths are relative to.
        out: the bundle folder.
        log: called with one line per step.
        progress: called as (step, done, total) on long steps.

    Returns:
        The build report (also written as ``build.json``).

    Raises:
        DataError: the data cannot be used (found before training). BuildError: a missing build
        dependency or a failed step. RecipeError: a recipe that does not fit its data.
    """
    from .train import csr_from_features

    embedding = isinstance(recipe, EmbeddingHeadRecipe)
    groups = () if embedding else recipe.specialists.groups
    data = prepare(data_root, recipe.data, recipe.split, reject_label=recipe.reject_label,
                   niche_values=tuple(v for _, vals in groups for v in vals))
    data = replace(data, licence_text=_licence_text(data_root, recipe.card.licence_file))
    log(f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test rows, "
        f"fingerprint {data.fingerprint[:16]}" + "".join(f"; {n}" for n in data.notes))
    if embedding:  # one encoder + linear head, its own bundle (the remote generalist)
        from .embedding_head import build_embedding_head
        return build_embedding_head(recipe, data, out, log=log, progress=progress)
    if recipe.dense is not None:  # vectors: MLPs over the dense featurizer, served by the dense contract
        from .dense_build import build_dense
        return build_dense(recipe, data, out, log=log, progress=progress)
    pop = population(recipe, data)
    check_before_training(recipe, data)
    clear_out(out)  # a rebuild keeps no stale model of an earlier population, and no user file is deleted
    spec = recipe.featurizer
    feat = Featurizer(spec)
    f_tr = _featurize(feat, data.train, "featurize train", progress)
    f_va = _featurize(feat, data.val, "featurize val", progress)
    x_tr, x_va = csr_from_features(f_tr, spec.dim), csr_from_features(f_va, spec.dim)
    metrics: dict = {}
    models = []
    steps = len(pop.specialists) + 2
    for k, (sid, values) in enumerate(pop.specialists):
        if progress:
            progress("train models", k, steps)
        decline = recipe.specialists.decline_label
        labels = sorted({r.label for r in data.train if r.niche in values}) + [decline]
        index = {lab: i for i, lab in enumerate(labels)}
        y = lambda rows: np.array([index[r.label] if r.niche in values and r.label in index  # noqa: E731
                                   else index[decline] for r in rows])
        y_tr = y(data.train)
        keep = _decline_sample(y_tr != index[decline], recipe.specialists.max_decline_rows, recipe.seed, k)
        x_sub, y_tr = (x_tr, y_tr) if keep is None else (x_tr[keep], y_tr[keep])
        weight = None
        if recipe.specialists.balance_decline:
            # Balance "not mine" against the niche's own labels: unweighted, its large prior makes
            # a specialist decline many of its own requests.
            mine = y_tr != index[decline]
            weight = np.where(mine, 1.0, mine.sum() / max(1, (~mine).sum()))
        y_va = y(data.val)
        r = _train_one(sid, labels, y_tr, y_va, x_sub, f_va, out, recipe.specialists.model, weight)
        own = np.array([row.niche in values for row in data.val])
        own_acc = float((r["val_logits"][own].argmax(1) == y_va[own]).mean()) if own.any() else None
        log(f"{sid}: {len(labels)} labels, val accuracy {r['val_accuracy']:.4f} (own niche {_fmt(own_acc)}), "
            f"T={r['temperature']}")
        metrics[sid] = {"files": r["files"], "temperature": r["temperature"], "val_accuracy": r["val_accuracy"],
                        "val_accuracy_own_niche": own_acc}
        models.append(ModelEntry(
            id=sid, version=recipe.version, role="specialist", backend="ort", file=FileEntry(r["files"][0], ""),
            input="hashed-text", labels=tuple(labels), decline_label=decline,
            niches={recipe.specialists.niche: ",".join(values)}, calibration=Calibration(temperature=r["temperature"])))
    if progress:
        progress("train models", len(pop.specialists), steps)
    gid = pop.generalist
    labels = sorted({r.label for r in data.train} - {recipe.reject_label})
    has_reject = any(r.label == recipe.reject_label for r in data.train)
    labels += [recipe.reject_label] if has_reject else []
    index = {lab: i for i, lab in enumerate(labels)}
    y_va = np.array([index[r.label] for r in data.val])
    r = _train_one(gid, labels, np.array([index[r.label] for r in data.train]), y_va, x_tr, f_va, out,
                   recipe.generalist.model)
    temperature, bias = _calibrate_generalist(recipe, r, y_va, index.get(recipe.reject_label))
    reject = 0.0
    if has_reject and recipe.generalist.reject_floor:
        from .train import softmax
        reject = pick_reject_floor(softmax(r["val_logits"], temperature, index[recipe.reject_label], bias), y_va,
                                   index[recipe.reject_label])
    log(f"{gid}: {len(labels)} labels, val accuracy {r['val_accuracy']:.4f}, T={temperature}"
        + (f", reject bias {bias}" if bias else "") + f", reject floor {reject}")
    metrics[gid] = {"files": r["files"], "temperature": temperature, "val_accuracy": r["val_accuracy"],
                    "reject_below": reject}
    if bias:
        metrics[gid]["reject_bias"] = bias
    models.append(ModelEntry(
        id=gid, version=recipe.version, role="generalist", backend="ort", file=FileEntry(r["files"][0], ""),
        input="hashed-text", labels=tuple(labels), niches={recipe.specialists.niche: "*"},
        calibration=Calibration(temperature=temperature, reject_below=reject, reject_bias=bias)))
    if progress:
        progress("train models", steps - 1, steps)
    candidates = tuple(s for s, _ in pop.specialists) + (gid,)
    cindex = {c: i for i, c in enumerate(candidates)}
    route = lambda rows: np.array([cindex[pop.owner(r.niche)] for r in rows])  # noqa: E731
    fit = fit_router(x_tr, route(data.train), x_va, route(data.val), candidates=candidates, featurizer=spec,
                     model=recipe.router, out_path=out / "router.bin")
    if progress:
        progress("train models", steps, steps)
    log(f"router: val accuracy {fit.val_accuracy:.4f}, T={fit.temperature}")
    metrics["router"] = {"val_accuracy": fit.val_accuracy, "temperature": fit.temperature}
    rem = recipe.remote
    manifest = Manifest(
        name=recipe.name, version=recipe.version, description=recipe.description,
        reject_label=recipe.reject_label, featurizer=spec,
        policy=Policy(coalition_size=recipe.policy.coalition_size,
                      remote="allowed" if rem is not None else "forbidden"),
        budget_bytes=recipe.budget_bytes,
        remote=RemoteSpec(rem.protocol, rem.url, rem.model, rem.timeout_ms) if rem is not None else None,
        router=RouterSpec(FileEntry("router.bin", ""), "linear-softmax", candidates, fit.temperature),
        models=tuple(models), files=())
    manifest = _with_hashes(out, manifest, metrics)
    (out / "ecology.toml").write_text(manifest_to_toml(manifest))
    if recipe.correctness is not None:
        from ..datasets import Example
        from ..fitrouter import fit_and_install

        c = recipe.correctness
        manifest, report = fit_and_install(out, [Example(r.text, r.label) for r in data.val], lam=c.lam, l2=c.l2,
                                           include_generalist=c.include_generalist)
        report.pop("cost_ms")  # timings: not part of a deterministic bundle
        metrics["correctness_router"] = report
        log(f"correctness router: top choice right on {report['top_choice_correct']:.4f} of val")
    rate = recipe.policy.target_remote_rate if rem is not None else 0.0
    policy, tuning = tune_policy(out, [r.text for r in data.val], [r.label for r in data.val], rate,
                                 recipe.policy.coalition_size)
    manifest = replace(manifest, policy=replace(policy, remote=manifest.policy.remote))
    (out / "ecology.toml").write_text(manifest_to_toml(manifest))
    metrics["policy_tuning"] = tuning
    log(f"policy: direct_threshold={policy.direct_threshold}, fallback_threshold={policy.fallback_threshold}")
    from .finish import finish
    return finish(recipe, data, out, manifest, metrics, log=log, progress=progress)


def _licence_text(root: Path, name: str) -> str:
    """The text of the recipe's ``card.licence_file`` (relative to the data folder), or ""."""
    if not name:
        return ""
    try:
        return (root / name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"card.licence_file {root / name} cannot be read ({exc}); the model card must reproduce "
                        "it (nothing was trained)") from exc


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _decline_sample(mine: np.ndarray, max_rows: int, seed: int, k: int) -> np.ndarray | None:
    """Row indices that train specialist ``k``: all its own rows and at most ``max_rows`` others,
    drawn with a seed (None: every row)."""
    others = np.flatnonzero(~mine)
    if not max_rows or len(others) <= max_rows:
        return None
    picked = np.random.default_rng([seed, k]).choice(others, size=max_rows, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(mine), picked]))


def _featurize(feat: Featurizer, rows: tuple[Row, ...], step: str, progress: Progress | None) -> list:
    out = []
    for i, r in enumerate(rows):
        out.append(feat(r.text.encode()))
        if progress and ((i + 1) % 2000 == 0 or i + 1 == len(rows)):
            progress(step, i + 1, len(rows))
    return out


def _with_hashes(out: Path, m: Manifest, metrics: dict) -> Manifest:
    """Fill every sha256 and list the external-data files."""
    models = tuple(replace(e, file=FileEntry(e.file.path, sha256_file(out / e.file.path)), niches=dict(e.niches))
                   for e in m.models)
    data_files = tuple(FileEntry(f, sha256_file(out / f)) for e in m.models for f in metrics[e.id]["files"][1:])
    router = replace(m.router, file=FileEntry("router.bin", sha256_file(out / "router.bin")))
    return replace(m, models=models, router=router, files=data_files)


"""The build of a dense-vector recipe: rows whose input is a vector (a flattened sensor window, or
any fixed-length vector) -> a bundle served through the runtime's dense contract (``[dense]`` in
``ecology.toml``, :mod:`edge_eco.dense`).

Steps, after the same data checks as a text build: the recipe's dense featurizer turns each request
into features (``vector-v1``: the vector itself; ``accel-window-v1``: window statistics), standardized
with the train mean/std written to ``featurizer.bin``; one int8 MLP per specialist (specialists may
share niche values: cost tiers, e.g. a tiny and a larger model) and a local generalist, written as
``.tflite`` or ``.onnx``; temperatures on the calibration split from the backend's own logits; a
linear int8 router whose target is the cheapest specialist owning the request's niche; thresholds
by replaying the calibration split through the runtime; test metrics and the model card.
Deterministic for a recipe and data (seeded training on one BLAS thread; no clock in any file).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import sha256_file
from ..dense import dim as dense_dim, features, standardize
from ..errors import BuildError
from ..manifest import Calibration, DenseInput, FileEntry, Manifest, ModelEntry, Policy, RouterSpec
from ..routerfile import write_router
from ..tomlwrite import manifest_to_toml
from . import require
from .calibrate import pick_reject_floor, tune_policy
from .data import Dataset
from .outdir import clear_out
from .precheck import check_before_training
from .recipe import Recipe
from .recipe_dense import DenseRecipe
from .router_fit import fit_router
from .train import fit_temperature, softmax
from .train_dense import backend_logits, fit_mlp, one_thread, weights_count, write_mlp

STD_FLOOR = 1e-3  # a feature constant in train is not blown up by standardization


def dense_spec(recipe: Recipe, data: Dataset) -> DenseRecipe:
    """The recipe's ``[dense]`` with the request shape settled (``vector-v1``: the vectors' length).

    Raises:
        BuildError: the vectors' length is not ``samples`` x ``axes``.
    """
    d = recipe.dense
    length = len(data.train[0].vector)
    if not d.samples:
        if length % d.axes:
            raise BuildError(f"the vectors have {length} numbers, not a multiple of dense.axes {d.axes}")
        d = replace(d, samples=length // d.axes)
    if d.samples * d.axes != length:
        raise BuildError(f"the vectors have {length} numbers; [dense] says samples x axes = {d.samples} x {d.axes} "
                         f"= {d.samples * d.axes} (nothing was trained)")
    return d


def _requests(rows, d: DenseRecipe) -> np.ndarray:
    """float32 [n, samples, axes]: the requests exactly as the runtime will receive them."""
    return np.array([r.vector for r in rows], dtype=np.float32).reshape(len(rows), d.samples, d.axes)


def build_dense(recipe: Recipe, data: Dataset, out: Path, *, log: Callable[[str], None],
                progress: Callable[[str, int, int], None] | None) -> dict:
    """Build the bundle of a dense-vector ``recipe`` from its validated ``data`` into ``out``.

    Returns:
        The build report (also written as ``build.json``).

    Raises:
        BuildError, RecipeError: a recipe that does not fit its data (before any training).
    """
    from .finish import finish
    from .pipeline import _decline_sample, population

    d = dense_spec(recipe, data)
    pop = population(recipe, data)
    check_before_training(recipe, data, (feature_count(d), d.max_abs))
    clear_out(out)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    req = {k: _requests(rows, d) for k, rows in splits.items()}
    raw = {k: features(v, d.featurizer) for k, v in req.items()}
    mean = raw["train"].mean(0).astype(np.float32)
    std = np.maximum(raw["train"].std(0), STD_FLOOR).astype(np.float32)
    x = {k: standardize(v, mean, std) for k, v in raw.items()}
    write_router(out / "featurizer.bin", "dense-standardize", {"mean": mean, "std": std})
    n_in = x["train"].shape[1]
    decline = recipe.specialists.decline_label
    own = {sid: sorted({r.label for r in data.train if r.niche in values}) + [decline] for sid, values in pop.specialists}
    # Cheapest first: the router's target for a niche several specialists share is the cheapest one.
    order = sorted(range(len(pop.specialists)), key=lambda i: (weights_count(
        recipe.specialists.family(pop.specialists[i][0]), n_in, len(own[pop.specialists[i][0]])), i))
    pop = replace(pop, specialists=tuple(pop.specialists[i] for i in order))
    metrics: dict = {}
    models = []
    steps = len(pop.specialists) + 1
    with one_thread():
        for k, (sid, values) in enumerate(pop.specialists):
            if progress:
                progress("train models", k, steps)
            labels = own[sid]
            index = {lab: i for i, lab in enumerate(labels)}
            y = {s: np.array([index[r.label] if r.niche in values and r.label in index else index[decline]
                              for r in rows]) for s, rows in splits.items()}
            y_tr, x_tr = y["train"], x["train"]
            keep = _decline_sample(y_tr != index[decline], recipe.specialists.max_decline_rows, recipe.seed, k)
            if keep is not None:
                x_tr, y_tr = x_tr[keep], y_tr[keep]
            weight = None
            if recipe.specialists.balance_decline:  # as in the text build: "not mine" must not swamp the niche
                mine = y_tr != index[decline]
                weight = np.where(mine, 1.0, mine.sum() / max(1, (~mine).sum()))
            fam = recipe.specialists.family(sid)
            m = _train_one(recipe.name, sid, labels, x_tr, y_tr, weight, x, y, fam, recipe.seed, out)
            own_rows = np.array([r.niche in values for r in data.val])
            m["val_accuracy_own_niche"] = float((m.pop("val_pred")[own_rows] == y["val"][own_rows]).mean()) \
                if own_rows.any() else None
            metrics[sid] = m
            log(f"{sid} ({fam.tier}, hidden {list(fam.hidden)}): {len(labels)} labels, val accuracy "
                f"{m['val_accuracy']:.4f}, T={m['temperature']}")
            models.append(ModelEntry(
                id=sid, version=recipe.version, role="specialist", backend=fam.backend,
                file=FileEntry(m["files"][0], sha256_file(out / m["files"][0])), input="dense-vector",
                labels=tuple(labels), decline_label=decline,
                niches={recipe.specialists.niche: ",".join(values), "tier": fam.tier},
                calibration=Calibration(temperature=m["temperature"])))
        if progress:
            progress("train models", steps - 1, steps)
        gid, gfam = pop.generalist, recipe.generalist.model
        labels = sorted({r.label for r in data.train} - {recipe.reject_label})
        has_reject = any(r.label == recipe.reject_label for r in data.train)
        labels += [recipe.reject_label] if has_reject else []
        index = {lab: i for i, lab in enumerate(labels)}
        y = {s: np.array([index[r.label] for r in rows]) for s, rows in splits.items()}
        m = _train_one(recipe.name, gid, labels, x["train"], y["train"], None, x, y, gfam, recipe.seed, out)
        m.pop("val_pred")
        reject = 0.0
        if has_reject and recipe.generalist.reject_floor:
            reject = pick_reject_floor(softmax(m.pop("val_logits"), m["temperature"]), y["val"],
                                       index[recipe.reject_label])
        m.pop("val_logits", None)
        m["reject_below"] = reject
        metrics[gid] = m
        log(f"{gid} (hidden {list(gfam.hidden)}): {len(labels)} labels, val accuracy {m['val_accuracy']:.4f}, "
            f"T={m['temperature']}")
        models.append(ModelEntry(
            id=gid, version=recipe.version, role="generalist", backend=gfam.backend,
            file=FileEntry(m["files"][0], sha256_file(out / m["files"][0])), input="dense-vector",
            labels=tuple(labels), niches={recipe.specialists.niche: "*", "tier": gfam.tier},
            calibration=Calibration(temperature=m["temperature"], reject_below=reject)))
        for mm in metrics.values():
            mm.pop("val_logits", None)
        if progress:
            progress("train models", steps, steps)
        fit = _router(recipe, pop, data, x, d, out)
    metrics["router"] = {"val_accuracy": fit.val_accuracy, "temperature": fit.temperature}
    log(f"router: val accuracy {fit.val_accuracy:.4f}, T={fit.temperature}")
    candidates = tuple(s for s, _ in pop.specialists) + (pop.generalist,)
    manifest = Manifest(
        name=recipe.name, version=recipe.version, description=recipe.description, reject_label=recipe.reject_label,
        featurizer=None, policy=Policy(coalition_size=recipe.policy.coalition_size, remote="forbidden"),
        remote=None, budget_bytes=recipe.budget_bytes,
        router=RouterSpec(FileEntry("router.bin", sha256_file(out / "router.bin")), "linear-softmax", candidates,
                          fit.temperature),
        models=tuple(models), files=(),
        dense=DenseInput(FileEntry("featurizer.bin", sha256_file(out / "featurizer.bin")), d.featurizer, d.samples,
                         d.axes, d.max_abs))
    (out / "ecology.toml").write_text(manifest_to_toml(manifest))
    policy, tuning = tune_policy(out, list(req["val"]), [r.label for r in data.val], 0.0,
                                 recipe.policy.coalition_size)
    manifest = replace(manifest, policy=replace(policy, remote="forbidden"))
    (out / "ecology.toml").write_text(manifest_to_toml(manifest))
    metrics["policy_tuning"] = tuning
    log(f"policy: direct_threshold={policy.direct_threshold} (val local accuracy {tuning['val_local_accuracy']:.4f})")
    metrics["dense"] = {"featurizer": d.featurizer, "samples": d.samples, "axes": d.axes, "max_abs": d.max_abs,
                        "features": n_in}
    if recipe.data.windows is not None:  # which recordings went where (splits are by whole recording)
        metrics["dense"]["recordings"] = {k: sorted({Path(r.group).name for r in rows}) for k, rows in splits.items()}
    return finish(recipe, data, out, manifest, metrics, log=log, progress=progress, requests=list(req["test"]))


def _train_one(bundle: str, name: str, labels: list[str], x_tr: np.ndarray, y_tr: np.ndarray, weight, x: dict, y: dict,
               fam, seed: int, out: Path) -> dict:
    """Train, quantize and write one model; calibrate it on the val split through its backend."""
    ws, bs = fit_mlp(x_tr, y_tr, len(labels), fam, seed, weight)
    name_file = write_mlp(ws, bs, x["train"], out, name, fam.backend, f"edge_eco {bundle} {name}")
    logits = backend_logits(out / name_file, fam.backend, {"val": x["val"]})["val"]
    pred = logits.argmax(1)
    return {"files": [name_file], "temperature": fit_temperature(logits, y["val"]), "val_logits": logits,
            "val_pred": pred, "val_accuracy": float((pred == y["val"]).mean()), "hidden": list(fam.hidden),
            "tier": fam.tier, "backend": fam.backend}


def _router(recipe: Recipe, pop, data: Dataset, x: dict, d: DenseRecipe, out: Path):
    """Fit the linear router over the dense features; target: the cheapest owner of the row's niche."""
    sparse = require("scipy.sparse")
    candidates = tuple(s for s, _ in pop.specialists) + (pop.generalist,)
    cindex = {c: i for i, c in enumerate(candidates)}
    targets = {s: np.array([cindex[pop.owner(r.niche)] for r in rows])
               for s, rows in (("train", data.train), ("val", data.val))}
    csr = {s: sparse.csr_matrix(x[s].astype(np.float64)) for s in ("train", "val")}
    if len(set(targets["train"].tolist())) < 2:
        raise BuildError("every training row belongs to one model's niche: the router has nothing to learn "
                         "(give [specialists] niches that split the data)")
    return fit_router(csr["train"], targets["train"], csr["val"], targets["val"], candidates=candidates,
                      featurizer=None, model=recipe.router, out_path=out / "router.bin", dense_kind=d.featurizer)


def feature_count(d: DenseRecipe) -> int:
    """How many features the dense featurizer gives (the router's and every model's input width)."""
    return dense_dim(d.axes, d.featurizer, d.samples)

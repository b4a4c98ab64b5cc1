"""``edge-eco fit-router``: fit the per-model correctness router from validation outcomes.

For every router candidate (the specialists; the local generalist too on request) the validation
split is run through the model and labelled right or wrong (a decline counts as the reject label). One logistic
predictor per candidate learns P(this model answers this request correctly) from the featurizer's
sparse output, stacked on the bundle's domain router: logit_c = a_c * z_c(x) + w_c . x + b_c, where
z_c is the domain router's logit for c (fitted on the much larger training split) and w_c an
L2-regularised sparse correction learned from the outcomes. Because z_c is linear in x the result
is one linear layer again, quantized to int8 per candidate and ranked in the C kernel by
utility = p - lambda x cost. The cost is the candidate's size in MiB (model file + external data):
for these linear int8 models it tracks both residency and compute, and unlike a timing it is
deterministic, so the same data and bundle give the same router bytes. Measured inference
milliseconds are reported beside it.

Build-time only: scipy is imported inside the functions (the ``build`` extra); the runtime reads
the result through :mod:`edge_eco.routerfile` like any router.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .bundle import read_bundle, sha256_file
from .datasets import Example
from .errors import ManifestError
from .manifest import FileEntry, Manifest, RouterSpec
from .router import DeferralWeights, RouterWeights, linear_logits, route_reference
from .routerfile import read_router, write_router
from .swap import write_atomic

FILE_NAME = "correctness.bin"
L2 = 1e-3
MAX_ITER = 400
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95


@dataclass(frozen=True)
class Outcomes:
    """Validation outcomes: per request the features, per candidate right/wrong and latency."""

    features: list[tuple[np.ndarray, np.ndarray]]
    correct: np.ndarray      # bool [n, K]
    offsets: np.ndarray      # float64 [n, K] domain-router logits
    cost_ms: np.ndarray      # float32 [K] median inference milliseconds (reported only)


def domain_router(root: Path, manifest: Manifest) -> tuple[str, RouterWeights, tuple[str, ...]]:
    """The linear-softmax router the correctness router is stacked on (path, weights, candidates)."""
    spec = manifest.router
    if spec is None:
        raise ManifestError("fit-router: the ecology has no [router] to stack on")
    path, candidates = spec.file.path, spec.candidates
    if spec.kind == "correctness":
        header, _ = read_router(root / path)
        stacked = header.get("stacked_on", {})
        path, candidates = stacked.get("path", ""), tuple(stacked.get("candidates", ()))
        if not path or not candidates:
            raise ManifestError(f"{spec.file.path} does not name the domain router it was stacked on")
    header, arrays = read_router(root / path)
    if header.get("kind") != "linear-softmax":
        raise ManifestError(f"{path}: expected a linear-softmax router, found {header.get('kind')!r}")
    w = RouterWeights(arrays["weight"], arrays["scale"], arrays["bias"], spec.temperature)
    if w.weight.shape[1] != len(candidates):
        raise ManifestError(f"{path}: {w.weight.shape[1]} outputs for {len(candidates)} candidates")
    return path, w, candidates


def collect(eco, base: RouterWeights, cols: Sequence[int], candidates: Sequence[str],
            examples: Sequence[Example], progress: Callable[[int, int], None] | None = None) -> Outcomes:
    """Run every candidate on every example (the real models, through the runtime).

    ``cols[c]`` is the domain router's output for ``candidates[c]`` (its offset).
    """
    reject = eco.manifest.reject_label
    feats, correct, offsets = [], [], []
    times = [[] for _ in candidates]
    for i, ex in enumerate(examples):
        idx, val = eco._featurizer(ex.text.encode("utf-8"))
        feats.append((idx, val))
        offsets.append(linear_logits(base, idx, val).astype(np.float64)[list(cols)])
        row = []
        for c, model_id in enumerate(candidates):
            t0 = time.perf_counter()
            vote = eco.predict_with(model_id, ex.text)
            times[c].append((time.perf_counter() - t0) * 1e3)
            row.append((reject if vote.declined else vote.label) == ex.label)
        correct.append(row)
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(examples))
    return Outcomes(feats, np.array(correct, bool), np.array(offsets),
                    np.array([np.median(t) for t in times], np.float32))


def _csr(features, dim: int):
    import scipy.sparse as sp

    indptr = np.cumsum([0] + [len(i) for i, _ in features])
    idx = np.concatenate([i for i, _ in features]) if features else np.zeros(0, np.int32)
    val = np.concatenate([v for _, v in features]) if features else np.zeros(0, np.float32)
    return sp.csr_matrix((val.astype(np.float64), idx, indptr), shape=(len(features), dim))


def fit_stacked(x, z: np.ndarray, y: np.ndarray, l2: float = L2,
                sample_weight: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """Logistic regression of y on a * z + x . w + b with L2 on w (full-batch L-BFGS, deterministic).

    Returns (a, b, w).
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    n, d = x.shape
    sw = np.ones(n) if sample_weight is None else sample_weight * (n / sample_weight.sum())
    sign = np.where(y, 1.0, -1.0)
    xt = x.T.tocsr()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, w = theta[0], theta[1], theta[2:]
        m = sign * (a * z + b + x @ w)
        g = -sign * sw * expit(-m) / n
        value = float((sw * np.logaddexp(0.0, -m)).mean() + 0.5 * l2 * (w @ w))
        return value, np.concatenate([[g @ z, g.sum()], xt @ g + l2 * w])

    theta0 = np.zeros(d + 2)
    theta0[0] = 1.0
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": MAX_ITER})
    return float(res.x[0]), float(res.x[1]), res.x[2:]


def model_mib(root: Path, manifest: Manifest, candidates: Sequence[str]) -> np.ndarray:
    """float32 [K] size in MiB of each candidate's files (x.onnx and x.onnx.data)."""
    out = []
    for model_id in candidates:
        path = manifest.model(model_id).file.path
        paths = [path] + [f.path for f in manifest.files if f.path.startswith(path + ".")]
        out.append(sum((root / p).stat().st_size for p in paths) / 2**20)
    return np.round(np.array(out), 4).astype(np.float32)


def fit(base: RouterWeights, cols: Sequence[int], o: Outcomes, dim: int, cost_mib: np.ndarray,
        l2: float = L2, sample_weight: np.ndarray | None = None) -> DeferralWeights:
    """One stacked predictor per candidate (on domain-router output ``cols[c]``), folded into one
    int8 linear layer."""
    x = _csr(o.features, dim)
    deq = base.weight.astype(np.float64) * base.scale.astype(np.float64)  # float weight = int8 x scale
    out, bias = [], []
    for c in range(o.correct.shape[1]):
        a, b, w = fit_stacked(x, o.offsets[:, c], o.correct[:, c], l2, sample_weight)
        out.append(a * deq[:, cols[c]] + w)
        bias.append(a * float(base.bias[cols[c]]) + b)
    cols = np.stack(out, axis=1)
    scale = np.maximum(np.abs(cols).max(axis=0), 1e-12) / 127.0
    q = np.clip(np.rint(cols / scale), -127, 127).astype(np.int8)
    return DeferralWeights(q, scale.astype(np.float32), np.array(bias, np.float32), cost_mib)


def predicted(w: DeferralWeights, o: Outcomes) -> np.ndarray:
    """float64 [n, K] predicted correctness, as the runtime computes it."""
    return np.array([1.0 / (1.0 + np.exp(-linear_logits(w, i, v).astype(np.float64))) for i, v in o.features])


def prior_weights(examples: Sequence[Example], reject_label: str, reject_share: float | None) -> np.ndarray:
    """Sample weights that give requests labelled ``reject_label`` the declared share of traffic.

    A validation split rarely has the deployment's share of out-of-scope requests (CLINC150's val:
    3 %; its test: 18 %); fitted on the raw split, the predictors learn that the generalist is
    almost always right, which out-of-scope traffic contradicts.
    """
    oos = np.array([ex.label == reject_label for ex in examples])
    if reject_share is None or not oos.any() or oos.all():
        return np.ones(len(examples))
    share = oos.mean()
    return np.where(oos, reject_share / share, (1 - reject_share) / (1 - share))


def install(folder: Path, manifest: Manifest, w: DeferralWeights, base_path: str,
            base_candidates: Sequence[str], candidates: Sequence[str], lam: float) -> Manifest:
    """Write ``correctness.bin`` and point the manifest's [router] at it (the domain router stays
    in the bundle as a verified file, to refit from)."""
    write_router(folder / FILE_NAME, "deferral-linear",
                 {"weight": w.weight, "scale": w.scale, "bias": w.bias, "cost": w.cost},
                 {"dim": int(w.weight.shape[0]), "candidates": list(candidates),
                  "featurizer_spec": {f: getattr(manifest.featurizer, f)
                                      for f in manifest.featurizer.__dataclass_fields__},
                  "cost_unit": "MiB", "stacked_on": {"path": base_path, "candidates": list(base_candidates),
                                                     "sha256": sha256_file(folder / base_path)}})
    files = tuple(f for f in manifest.files if f.path not in (base_path, FILE_NAME))
    files += (FileEntry(base_path, sha256_file(folder / base_path)),)
    router = RouterSpec(FileEntry(FILE_NAME, sha256_file(folder / FILE_NAME)), "correctness",
                        tuple(candidates), 1.0, lam)
    return replace(manifest, router=router, files=tuple(sorted(files, key=lambda f: f.path)))


def route_all(w: DeferralWeights, o: Outcomes, lam: float) -> np.ndarray:
    """Index of the top-utility candidate per request (numpy reference), for reports."""
    mask = np.ones(w.weight.shape[1], bool)
    return np.array([route_reference(w, i, v, mask, lam).order[0] for i, v in o.features])


def fit_and_install(folder: Path, examples: Sequence[Example], *, lam: float = 0.0, l2: float = L2,
                    reject_share: float | None = None, include_generalist: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> tuple[Manifest, dict]:
    """Fit the correctness router of the bundle at ``folder`` and point its manifest at it.

    Writes ``correctness.bin`` and ``ecology.toml``; the policy thresholds are left as they were
    (:func:`fit_router` re-tunes them). Returns (the new manifest, a report).

    Generalists are left out of the candidates unless ``include_generalist``: the request path
    still asks the local generalist when every specialist declines, and the judge weighs its answer
    against the declines. Routed to directly, it answered most out-of-scope requests with an intent:
    a validation split with 100 out-of-scope queries does not teach its predictor where it fails
    (CLINC150 test, local tier: 83.3 % with it, 89.4 % without; the domain router alone 89.2 %).
    """
    from . import ecology

    if reject_share is not None and not 0.0 < reject_share < 1.0:  # NaN fails too
        raise ValueError(f"reject_share must be a share strictly between 0 and 1, got {reject_share!r}")
    root, manifest = read_bundle(folder)
    base_path, base, base_candidates = domain_router(root, manifest)
    candidates = tuple(c for c in base_candidates
                       if include_generalist or manifest.model(c).role != "generalist")
    cols = [base_candidates.index(c) for c in candidates]
    with ecology.open(root) as eco:
        o = collect(eco, base, cols, candidates, examples, progress)
    weights = prior_weights(examples, manifest.reject_label, reject_share)
    w = fit(base, cols, o, manifest.featurizer.dim, model_mib(root, manifest, candidates), l2, weights)
    top = route_all(w, o, lam)
    top_ok = np.average(o.correct[np.arange(len(top)), top], weights=weights)
    conf = predicted(w, o)[np.arange(len(top)), top]
    new = install(root, manifest, w, base_path, base_candidates, candidates, lam)
    write_atomic(root / "ecology.toml", _toml(new).encode("utf-8"))
    return new, {"requests": len(examples), "candidates": list(candidates),
                 "val_accuracy_per_candidate": {c: round(float(o.correct[:, i].mean()), 4)
                                                for i, c in enumerate(candidates)},
                 "cost_ms": {c: round(float(v), 4) for c, v in zip(candidates, o.cost_ms)},
                 "cost_mib": {c: float(v) for c, v in zip(candidates, w.cost)},
                 "lambda": lam, "l2": l2, "reject_share": reject_share,
                 "top_choice_correct": round(float(top_ok), 4),
                 "oracle_any_correct": round(float(o.correct.any(axis=1).mean()), 4),
                 "top_confidence_mean": round(float(conf.mean()), 4)}


def fit_router(folder: Path, examples: Sequence[Example], *, lam: float = 0.0, l2: float = L2,
               reject_share: float | None = None, include_generalist: bool = False,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """``edge-eco fit-router``: fit and install the correctness router, then re-tune the policy's
    direct and fallback thresholds by replaying ``examples`` through the runtime (the build's
    :func:`edge_eco.build.calibrate.tune_policy`, same target remote rate and coalition size).

    Returns a report of what was fitted and measured.
    """
    from .build.calibrate import tune_policy

    t0 = time.perf_counter()
    new, report = fit_and_install(folder, examples, lam=lam, l2=l2, reject_share=reject_share,
                                  include_generalist=include_generalist, progress=progress)
    p = new.policy
    policy, tuning = tune_policy(Path(folder), [e.text for e in examples], [e.label for e in examples],
                                 p.target_remote_rate, p.coalition_size)
    policy = replace(policy, remote=p.remote, remote_rule=p.remote_rule)
    write_atomic(Path(folder) / "ecology.toml", _toml(replace(new, policy=policy)).encode("utf-8"))
    report.update({"direct_threshold": policy.direct_threshold, "fallback_threshold": policy.fallback_threshold,
                   "tuning": tuning, "seconds": round(time.perf_counter() - t0, 1)})
    return report


def _toml(m: Manifest) -> str:
    from .tomlwrite import manifest_to_toml

    return manifest_to_toml(m)

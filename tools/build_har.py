"""Build models/har: a sensor ecology of int8 TFLite models from the STM32 HAR accelerometer data.

Recipe (each step a function, so that it can become an ``edge-eco build`` recipe):

1. ``load_windows``: 2 s windows (52 x 3 readings); splits by recording (edge_eco.har_data).
2. ``features``: ``accel-window-v1`` (edge_eco.dense), standardized with the train mean/std.
3. ``train_models``: scikit-learn MLPs in two cost tiers plus a generalist, quantized to full int8
   and written as .tflite without TensorFlow (tools/tflite_mlp.py); each is checked through the
   runtime's own LiteRT backend.
4. ``calibrate``: one temperature per model, fitted on the validation split (NLL).
5. ``train_router``: int8 linear router over the same features; its target is the cheapest model
   that answers a training window right (the generalist when none does).
6. ``write_bundle``: ecology.toml with every sha256, featurizer.bin, router.bin, build.json.

Deterministic: fixed seeds, single-threaded BLAS; a rebuild gives the same bytes.
Usage: python tools/build_har.py --data ../shared/data --out models/har
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_eco.backends import open_model  # noqa: E402
from edge_eco.bundle import sha256_file  # noqa: E402
from edge_eco.dense import KIND, raw_features, standardize  # noqa: E402
from edge_eco.har_data import AXES, CLASSES, SAMPLES, load_har, split_files  # noqa: E402
from edge_eco.manifest import (Calibration, DenseInput, FileEntry, Manifest, ModelEntry, Policy,  # noqa: E402
                               RouterSpec)
from edge_eco.routerfile import write_router  # noqa: E402
from edge_eco.routing_metrics import ece  # noqa: E402
from edge_eco.tomlwrite import manifest_to_toml  # noqa: E402
from tflite_mlp import quantize_mlp, write_tflite  # noqa: E402

SEED = 20261203
DECLINE, REJECT = "not_mine", "unknown"
# id -> (labels it answers, hidden layer sizes, tier). Order = cost order for the router target.
MODELS = {
    "still_tiny": (("stationary",), (4,), "tiny"),
    "active_tiny": (("running", "walking"), (8,), "tiny"),
    "active_large": (("running", "walking"), (64, 64), "large"),
    "generalist": (CLASSES, (96, 96), "generalist"),
}


def load_windows(data: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (windows float32 [n, 52, 3], labels str [n]); train windows overlap by 3/4."""
    out = {}
    for split, hop in (("train", SAMPLES // 4), ("val", SAMPLES), ("test", SAMPLES)):
        ex = load_har(data / "stm32_har", split, hop=hop)
        out[split] = (np.stack([e.vector for e in ex]), np.array([e.label for e in ex]))
    return out


def features(windows: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    raw = {k: raw_features(w) for k, (w, _) in windows.items()}
    mean = raw["train"].mean(0).astype(np.float32)
    std = np.maximum(raw["train"].std(0), 1e-3).astype(np.float32)
    return {k: standardize(r, mean, std) for k, r in raw.items()}, mean, std


def _targets(labels: np.ndarray, answers: tuple[str, ...], general: bool) -> tuple[tuple[str, ...], np.ndarray]:
    names = tuple(sorted(answers)) if general else tuple(sorted(answers)) + (DECLINE,)
    y = np.array([lab if lab in answers else DECLINE for lab in labels])
    return names, np.array([names.index(v) for v in y])


def train_models(x: dict, y: dict, out: Path) -> dict:
    """Train, quantize and write every model; returns id -> (labels, tflite logits per split)."""
    from sklearn.neural_network import MLPClassifier

    built = {}
    for mid, (answers, hidden, _) in MODELS.items():
        names, t = _targets(y["train"], answers, mid == "generalist")
        clf = MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-3, max_iter=400, random_state=SEED,
                            early_stopping=False, learning_rate_init=3e-3)
        clf.fit(x["train"], t)
        ws, bs = clf.coefs_, clf.intercepts_
        if len(names) == 2:  # scikit-learn writes one logistic unit for 2 classes: make it 2 logits
            ws = ws[:-1] + [np.concatenate([-ws[-1] / 2, ws[-1] / 2], axis=1)]
            bs = bs[:-1] + [np.concatenate([-bs[-1] / 2, bs[-1] / 2])]
        q = quantize_mlp([w.astype(np.float64) for w in ws], [b.astype(np.float64) for b in bs], x["train"])
        path = out / f"{mid}.tflite"
        path.write_bytes(write_tflite(q, f"edge_eco har {mid}"))
        session = open_model("tflite", path)  # scored through the runtime's own backend
        logits = {k: np.stack([session.run({"x": row[None]}) for row in v]) for k, v in x.items()}
        session.close()
        built[mid] = (names, logits)
    return built


def _nll(logits: np.ndarray, t: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(t)), t].mean())


def calibrate(logits: np.ndarray, t: np.ndarray) -> float:
    """Temperature minimizing validation NLL (grid, deterministic)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    return float(round(grid[int(np.argmin([_nll(logits, t, g) for g in grid]))], 5))


def train_router(x: dict, y: dict, built: dict) -> tuple[dict, float, dict]:
    """int8 linear router whose target is the cheapest model that answers right."""
    from sklearn.linear_model import LogisticRegression

    ids = list(MODELS)

    def target(split):
        tgt = np.full(len(y[split]), ids.index("generalist"))
        for k in range(len(y[split]) - 1, -1, -1):
            for j, mid in enumerate(ids):
                names, logits = built[mid]
                pred = names[int(logits[split][k].argmax())]
                if pred == y[split][k]:
                    tgt[k] = j
                    break
        return tgt
    t_train, t_val = target("train"), target("val")
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=SEED)
    clf.fit(x["train"], t_train)
    w = np.zeros((x["train"].shape[1], len(ids)), np.float32)
    b = np.full(len(ids), -30.0, np.float32)  # a model never used as a target gets no traffic
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # one logistic unit: the same decision as two logits of +-half
        coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-icpt / 2, icpt / 2])
    for c, cls in enumerate(clf.classes_):
        w[:, cls], b[cls] = coef[c], icpt[c]
    scale = (np.abs(w).max(0) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    deq = x["val"] @ (q * scale) + b
    temperature = calibrate(deq, t_val)
    share = {ids[j]: round(float((t_train == j).mean()), 4) for j in range(len(ids))}
    return {"weight": q, "scale": scale, "bias": b}, temperature, share


def write_bundle(out: Path, built: dict, temps: dict, router: dict, router_t: float, mean, std) -> Manifest:
    write_router(out / "featurizer.bin", "dense-standardize", {"mean": mean, "std": std})
    write_router(out / "router.bin", "linear-softmax", router)
    entries = []
    for mid, (answers, hidden, tier) in MODELS.items():
        names = built[mid][0]
        role = "generalist" if mid == "generalist" else "specialist"
        entries.append(ModelEntry(
            id=mid, version="1", role=role, backend="tflite",
            file=FileEntry(f"{mid}.tflite", sha256_file(out / f"{mid}.tflite")), input="dense-vector",
            labels=names, output="logits", decline_label=None if role == "generalist" else DECLINE,
            niches={"tier": tier, "activity": "+".join(answers)}, calibration=Calibration(temps[mid])))
    m = Manifest(
        name="har", version="1", reject_label=REJECT,
        description="STM32 HAR accelerometer activity: tiny and large int8 TFLite specialists and a generalist",
        featurizer=None, policy=Policy(direct_threshold=0.9, fallback_threshold=0.5, coalition_size=2,
                                       remote="forbidden"),
        remote=None, router=RouterSpec(FileEntry("router.bin", sha256_file(out / "router.bin")), "linear-softmax",
                                       tuple(MODELS), router_t),
        models=tuple(entries), files=(), budget_bytes=0,
        dense=DenseInput(FileEntry("featurizer.bin", sha256_file(out / "featurizer.bin")), KIND, SAMPLES, AXES,
                         4000.0))
    (out / "ecology.toml").write_text(manifest_to_toml(m))
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description="Build models/har from the stm32_har data.")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    ap.add_argument("--out", default="models/har")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    windows = load_windows(data)
    y = {k: v[1] for k, v in windows.items()}
    x, mean, std = features(windows)
    built = train_models(x, y, out)
    temps, metrics = {}, {}
    for mid, (names, logits) in built.items():
        answers = MODELS[mid][0]
        _, t_val = _targets(y["val"], answers, mid == "generalist")
        _, t_test = _targets(y["test"], answers, mid == "generalist")
        temps[mid] = calibrate(logits["val"], t_val)
        ok = logits["test"].argmax(1) == t_test

        def conf(t):
            z = logits["test"] / t
            p = np.exp(z - z.max(1, keepdims=True))
            return (p / p.sum(1, keepdims=True)).max(1)
        metrics[mid] = {"test_accuracy_own_labels": round(float(ok.mean()), 4),
                        "test_ece_before": round(ece(conf(1.0), ok), 4), "test_ece_after": round(ece(conf(temps[mid]), ok), 4),
                        "bytes": (out / f"{mid}.tflite").stat().st_size, "temperature": temps[mid],
                        "hidden": list(MODELS[mid][1])}
        print(f"{mid:13} {metrics[mid]}")
    router, router_t, share = train_router(x, y, built)
    write_bundle(out, built, temps, router, router_t, mean, std)
    build = {"data": "stm32_har (STMicroelectronics, BSD-3-Clause)", "seed": SEED,
             "windows": {k: int(len(v)) for k, v in y.items()},
             "split_files": {s: [p.name for p, _ in split_files(data / "stm32_har", s)] for s in ("train", "val", "test")},
             "models": metrics, "router_temperature": router_t, "router_target_share_train": share}
    (out / "build.json").write_text(json.dumps(build, indent=1, sort_keys=True) + "\n")
    print(f"router target share (train): {share}; temperature {router_t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

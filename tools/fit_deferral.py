"""Fit the learned remote deferral of an ecology from validation-split outcomes.

    python tools/fit_deferral.py --ecology models/clinc150 --remote-bundle models/minilm \\
        [--data ../shared/data] [--target-remote-rate 0.2]

Replays the validation split through the ecology's local tier and through the remote generalist
(run in-process from its bundle), labels each request gain (remote right, local wrong) or loss
(local right, remote wrong), and fits two L2 logistic predictors on the featurizer's sparse output
plus three meta-features of the local answer (edge_eco/deferral.py). Weights are quantized to int8
per predictor and written as ``deferral.bin`` (msgpack header + raw arrays); the margin is set so
that the target share of validation requests goes remote; ``ecology.toml`` gains a [deferral] table.
Deterministic (full-batch L-BFGS, no sampling).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_sparse import quantize_columns  # noqa: E402
from train_linear import csr_from_features, fit_softmax  # noqa: E402

import edge_eco  # noqa: E402
from edge_eco._native import Featurizer  # noqa: E402
from edge_eco.bundle import read_bundle, sha256_file  # noqa: E402
from edge_eco.datasets import data_root, fetch_clinc150, load_clinc150  # noqa: E402
from edge_eco.deferral import N_META, gain_score, meta_features  # noqa: E402
from edge_eco.manifest import DeferralSpec, FileEntry  # noqa: E402
from edge_eco.router import DeferralWeights, linear_logits  # noqa: E402
from edge_eco.routerfile import write_router  # noqa: E402
from edge_eco.tomlwrite import manifest_to_toml  # noqa: E402

L2 = 3e-4
MAX_ITER = 300


def outcomes(folder: Path, remote_bundle: Path, examples) -> dict:
    """Local answers (label, confidence), remote labels and features of every example."""
    root, manifest = read_bundle(folder)
    feat = Featurizer(manifest.featurizer)
    with edge_eco.open(folder) as eco, edge_eco.open(remote_bundle) as remote:
        local = [eco.answer(e.text, local_only=True) for e in examples]
        remote_labels = [remote.answer(e.text).label for e in examples]
    gold = [e.label for e in examples]
    return {"gold_oos": np.array([g == manifest.reject_label for g in gold]),
            "local_ok": np.array([a.label == g for a, g in zip(local, gold)]),
            "remote_ok": np.array([r == g for r, g in zip(remote_labels, gold)]),
            "conf": np.array([a.confidence for a in local]),
            "reject": np.array([a.label == manifest.reject_label for a in local]),
            "features": [feat(e.text.encode()) for e in examples], "dim": manifest.featurizer.dim}


def augmented(o: dict) -> sp.csr_matrix:
    """Sparse features with the three meta-feature columns appended after dim."""
    rows = []
    for (idx, val), c, r in zip(o["features"], o["conf"], o["reject"]):
        mi, mv = meta_features(o["dim"], float(c), bool(r))
        rows.append((np.concatenate([idx, mi]), np.concatenate([val, mv])))
    return csr_from_features(rows, o["dim"] + N_META)


def prior_weights(gold_oos: np.ndarray, oos_share: float | None) -> np.ndarray:
    """Sample weights that give out-of-scope requests the declared share of the traffic.

    The validation split has 3 % out-of-scope queries; where the deployment expects more (CLINC150's
    test split: 18 %), a deferral fitted on the raw split learns that the remote is nearly always
    right, which out-of-scope traffic contradicts (the remote's oos recall is ~54 %).
    """
    if oos_share is None:
        return np.ones(len(gold_oos))
    share = gold_oos.mean()
    return np.where(gold_oos, oos_share / share, (1 - oos_share) / (1 - share))


def fit(o: dict, weights: np.ndarray | None = None) -> DeferralWeights:
    """Two logistic predictors (gain, loss), int8 per predictor."""
    x = augmented(o)
    targets = {"gain": o["remote_ok"] & ~o["local_ok"], "loss": o["local_ok"] & ~o["remote_ok"]}
    cols, biases = [], []
    for y in targets.values():
        w, b = fit_softmax(x, y.astype(int), 2, l2=L2, max_iter=MAX_ITER, sample_weight=weights)
        cols.append(w[:, 1] - w[:, 0])
        biases.append(b[1] - b[0])
    q, scale = quantize_columns(np.stack(cols, axis=1))
    return DeferralWeights(q, scale, np.array(biases, np.float32), np.zeros(2, np.float32))


def scores(w: DeferralWeights, o: dict) -> np.ndarray:
    """P(gain) - P(loss) per example, exactly as the runtime computes it."""
    out = []
    for (idx, val), c, r in zip(o["features"], o["conf"], o["reject"]):
        mi, mv = meta_features(o["dim"], float(c), bool(r))
        out.append(gain_score(linear_logits(w, np.concatenate([idx, mi]), np.concatenate([val, mv]))))
    return np.array(out)


def weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The q-quantile of x under sample weights w (step function, lower value)."""
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    return float(x[order][min(len(x) - 1, int(np.searchsorted(cum, q)))])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ecology", default="models/clinc150")
    ap.add_argument("--remote-bundle", default="models/minilm")
    ap.add_argument("--data", default=None)
    ap.add_argument("--target-remote-rate", type=float, default=0.2)
    ap.add_argument("--oos-share", type=float, default=None,
                    help="expected share of out-of-scope traffic; val is re-weighted to it (default: as in val)")
    args = ap.parse_args(argv)
    t0 = time.time()
    folder = Path(args.ecology)
    clinc = fetch_clinc150(data_root(args.data, os.environ.get("EDGE_ECO_DATA")))
    val = load_clinc150(clinc / "data_full.json", "val")
    o = outcomes(folder, Path(args.remote_bundle), val)
    weights = prior_weights(o["gold_oos"], args.oos_share)
    w = fit(o, weights)
    write_router(folder / "deferral.bin", "deferral-gain-loss",
                 {"weight": w.weight, "scale": w.scale, "bias": w.bias}, {"dim": o["dim"], "meta": N_META})
    s = scores(w, o)
    margin = float(np.round(weighted_quantile(s, weights, 1.0 - args.target_remote_rate), 4))
    _, manifest = read_bundle(folder, verify=False)
    spec = DeferralSpec(FileEntry("deferral.bin", sha256_file(folder / "deferral.bin")), "gain-loss", margin)
    (folder / "ecology.toml").write_text(manifest_to_toml(replace(manifest, deferral=spec)))
    gain, loss = o["remote_ok"] & ~o["local_ok"], o["local_ok"] & ~o["remote_ok"]
    report = {"val_requests": len(val), "oos_share": args.oos_share, "val_gain": int(gain.sum()), "val_loss": int(loss.sum()), "margin": margin,
              "target_remote_rate": args.target_remote_rate, "l2": L2}
    build = folder / "build.json"
    if build.exists():
        doc = json.loads(build.read_text())
        doc["deferral"] = report
        build.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"[fit_deferral] {report} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

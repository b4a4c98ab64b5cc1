"""The end of a build: optional deferral, test-split metrics, ``build.json`` and the model card."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..bundle import sha256_file
from ..evaljob import InProcessRemote, Labelled, eval_bundle
from ..tomlwrite import manifest_to_toml
from .card import model_card
from .data import Dataset
from .deferral_fit import fit_deferral
from .recipe import Recipe

_KEEP = ("accuracy", "in_scope_accuracy", "oos_recall", "labelled", "remote_rate", "paths", "errors")


def _stable(report: dict) -> dict:
    """The parts of a run report that do not depend on timing (no latencies, no memory figures)."""
    out = {k: report[k] for k in _KEEP}
    out["baselines"] = {k: {m: v[m] for m in ("accuracy", "in_scope_accuracy", "oos_recall")}
                        for k, v in report["baselines"].items()}
    out["eval"] = report["eval"]
    return out


def finish(recipe: Recipe, data: Dataset, out: Path, manifest, metrics: dict, *,
           log: Callable[[str], None], progress, requests: list | None = None) -> dict:
    """Fit the deferral (when asked), score the test split, write build.json and MODEL_CARD.md.

    ``requests``: a dense build's test requests (arrays, in test-split order); None for text.

    Returns:
        The build report (what build.json holds).
    """
    import edge_eco

    remote_eco = None
    if recipe.remote is not None and recipe.remote.bundle is not None:
        remote_eco = edge_eco.open(recipe.base_dir / recipe.remote.bundle)
    try:
        remote = InProcessRemote(remote_eco) if remote_eco is not None else None
        remote_label = (lambda t: remote.infer([t])[0].label) if remote is not None else None
        if recipe.deferral.enabled:
            spec, report = fit_deferral(out, [r.text for r in data.val], [r.label for r in data.val],
                                        remote_label, recipe.deferral, recipe.policy.target_remote_rate)
            policy = manifest.policy
            if recipe.policy.remote_rule == "deferral":
                policy = replace(policy, remote_rule="deferral")
            manifest = replace(manifest, deferral=spec, policy=policy)
            (out / "ecology.toml").write_text(manifest_to_toml(manifest))
            metrics["deferral"] = report
            log(f"deferral: margin {report['margin']} ({report['val_gain']} gains, {report['val_loss']} losses on val)")
        test = [Labelled(r.text, r.label, r.niche) for r in data.test] if requests is None else \
            [Labelled(r.where, r.label, r.niche, v) for r, v in zip(data.test, requests)]
        with edge_eco.open(out, remote_client=remote) as eco:
            # Timing must not change answers in a build: no coalition member may miss its deadline.
            eco.policy = replace(eco.policy, coalition_timeout_ms=600_000.0)
            report = eval_bundle(eco, test, source="test split", remote_label=remote_label,
                                 local_only=remote is None,
                                 progress=(lambda i, n: progress("score test", i, n)) if progress else None)
    finally:
        if remote_eco is not None:
            remote_eco.close()
    metrics["test"] = _stable(report)
    metrics["data"] = {"fingerprint_sha256": data.fingerprint, "train": len(data.train), "val": len(data.val),
                       "test": len(data.test), "notes": list(data.notes)}
    if recipe.dense is None:
        metrics["featurizer"] = {f: getattr(recipe.featurizer, f) for f in recipe.featurizer.__dataclass_fields__}
    t = metrics["test"]
    log(f"test: accuracy {t['accuracy']}, remote rate {t['remote_rate']}, local {t['eval']['local_accuracy']}, "
        f"APGR {t['eval'].get('apgr')}, ECE {t['eval']['ece_local']}")
    (out / "build.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(recipe, manifest, metrics, out, data.licence_text))
    metrics["bundle_sha256"] = sha256_file(out / "ecology.toml")
    return metrics

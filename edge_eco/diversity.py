"""Behavioural diversity of a population: how its models fail together under perturbations.

For a seeded sample of labelled requests and a seeded perturbed copy of each (typo, casing,
punctuation, dropped word: :mod:`edge_eco.perturb`), every model of the population answers
every text. A model is *wrong* on a text when :func:`edge_eco.outcomes.right` says so (a
specialist must answer its own intents and decline the rest). Reported:

- pairwise error correlation (phi coefficient of the two models' error indicators), the share
  of texts (among those at least one of the two does not decline) on which two models give the
  same answer, and the pairs flagged redundant (the
  same answer on >= ``redundant_agree`` of the texts, or error correlation >= ``redundant_phi``
  over at least ``min_joint_errors`` texts both got wrong: fewer make the correlation noise);
- per niche (the domain of the true label; the reject label is its own niche): the ecology's
  accuracy, the oracle's (some local model answers the true label without declining, or, for
  an out-of-scope request, every specialist declines it) and the gap;
- the inputs no local model solves, by perturbation.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from .outcomes import right
from .perturb import KINDS, perturb


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """Phi coefficient (Pearson correlation) of two boolean vectors; 0.0 when either is constant."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def error_disagreement(a_wrong: np.ndarray, b_wrong: np.ndarray) -> float:
    """Share of texts on which exactly one of two models is wrong (0.0 for no texts).

    The behavioural diversity of an archived model against a champion: 0 when they fail on the
    same inputs (one is redundant as a fallback for the other), higher when their errors differ.
    """
    a, b = np.asarray(a_wrong, bool), np.asarray(b_wrong, bool)
    if a.shape != b.shape:
        raise ValueError(f"error vectors differ in shape: {a.shape} and {b.shape}")
    return float((a != b).mean()) if a.size else 0.0


def measure(eco: Any, examples: list[tuple[str, str]], *, limit: int = 600, seed: int = 0,
            redundant_phi: float = 0.7, redundant_agree: float = 0.99, min_joint_errors: int = 10) -> dict[str, Any]:
    """Run the diversity diagnostics of ``eco`` on ``examples`` ((text, true label)); see the module doc."""
    rng = random.Random(seed)
    sample = rng.sample(examples, min(limit, len(examples)))
    texts = [(t, y, "none") for t, y in sample]
    texts += [(perturb(t, kind, rng), y, kind) for t, y in sample for kind in KINDS]
    models = list(eco.manifest.models)
    niche_of = eco.manifest.label_niches()
    wrong = np.zeros((len(models), len(texts)), bool)
    solves = np.zeros((len(models), len(texts)), bool)
    answers = np.zeros((len(models), len(texts)), object)
    declined = np.zeros((len(models), len(texts)), bool)
    eco_right = np.zeros(len(texts), bool)
    for j, (text, truth, _) in enumerate(texts):
        for i, m in enumerate(models):
            v = eco.predict_with(m.id, text)
            wrong[i, j] = not right(m, v.label, v.declined, truth)
            solves[i, j] = v.label == truth and not v.declined  # a decline is not an answer
            answers[i, j], declined[i, j] = v.label, v.declined
        eco_right[j] = eco.answer(text, local_only=True).label == truth
    pairs = []
    for i in range(len(models)):
        for k in range(i + 1, len(models)):
            r = phi(wrong[i], wrong[k])
            both = int((wrong[i] & wrong[k]).sum())
            # agreement where at least one of the two answers: two specialists agreeing to decline
            # each other's requests says nothing
            asked = ~(declined[i] & declined[k])
            agree = float((answers[i][asked] == answers[k][asked]).mean()) if asked.sum() >= 10 else 0.0
            pairs.append({"a": models[i].id, "b": models[k].id, "phi": round(r, 4), "both_wrong": both,
                          "agree": round(agree, 4),
                          "redundant": bool(agree >= redundant_agree
                                            or (r >= redundant_phi and both >= min_joint_errors))})
    specialists = np.array([m.role == "specialist" for m in models])
    reject = np.array([y == eco.manifest.reject_label for _, y, _ in texts])
    # an out-of-scope request is also solved when every specialist declines it (the reject path)
    oracle = solves.any(axis=0) | (reject & ~wrong[specialists].any(axis=0) if specialists.any() else False)
    niches: dict[str, dict[str, Any]] = {}
    for j, (_, truth, _) in enumerate(texts):
        n = niches.setdefault(niche_of.get(truth, "?"),
                              {"n": 0, "ecology": 0, "oracle": 0})
        n["n"] += 1
        n["ecology"] += int(eco_right[j])
        n["oracle"] += int(oracle[j])
    for n in niches.values():
        n["ecology_acc"], n["oracle_acc"] = n["ecology"] / n["n"], n["oracle"] / n["n"]
        n["gap"] = n["oracle_acc"] - n["ecology_acc"]
    by_kind = {kind: {"n": 0, "ecology": 0, "unsolved": 0} for kind in ("none",) + KINDS}
    unsolved = []
    for j, (text, truth, kind) in enumerate(texts):
        by_kind[kind]["n"] += 1
        by_kind[kind]["ecology"] += int(eco_right[j])
        if not oracle[j]:
            by_kind[kind]["unsolved"] += 1
            unsolved.append({"text": text, "label": truth, "perturbation": kind})
    return {"requests": len(sample), "texts": len(texts), "seed": seed,
            "models": [m.id for m in models], "errors": {m.id: int(wrong[i].sum()) for i, m in enumerate(models)},
            "pairs": pairs, "redundant": [p for p in pairs if p["redundant"]], "niches": niches,
            "perturbations": by_kind, "unsolved": unsolved}


def format_diversity(r: dict[str, Any]) -> str:
    """Readable tables of a :func:`measure` report."""
    from .cli_population import table

    top = sorted(r["pairs"], key=lambda p: -p["phi"])[:10]
    lines = [f"{r['requests']} requests x (original + {len(KINDS)} perturbations) = {r['texts']} texts, seed {r['seed']}",
             "", "most correlated errors (phi of the error indicators)",
             table(["model a", "model b", "phi", "both wrong", "same answer", "redundant"],
                   [[p["a"], p["b"], f"{p['phi']:.3f}", p["both_wrong"], f"{p['agree']:.1%}",
                     "YES" if p["redundant"] else ""]
                    for p in top]),
             "", f"redundant pairs: {len(r['redundant'])}"
             + "".join(f"\n  {p['a']} ~ {p['b']} (phi {p['phi']:.3f})" for p in r["redundant"]),
             "", "oracle gap per niche (oracle: some local model answers the true label)",
             table(["niche", "texts", "ecology", "oracle", "gap"],
                   [[k, n["n"], f"{n['ecology_acc']:.2%}", f"{n['oracle_acc']:.2%}", f"{n['gap']:+.2%}"]
                    for k, n in sorted(r["niches"].items(), key=lambda kv: -kv[1]["gap"])]),
             "", "by perturbation",
             table(["perturbation", "texts", "ecology", "no local model solves"],
                   [[k, v["n"], f"{v['ecology'] / max(1, v['n']):.2%}", v["unsolved"]]
                    for k, v in r["perturbations"].items()]),
             "", f"inputs no local model solves: {len(r['unsolved'])} (first 10)"]
    lines += [f"  [{u['perturbation']}] {u['text']!r} -> {u['label']}" for u in r["unsolved"][:10]]
    if not math.isfinite(sum(p["phi"] for p in r["pairs"]) or 0.0):
        lines.append("warning: non-finite correlations")
    return "\n".join(lines)

"""Calibration on the calibration split: the generalist's reject floor and the policy thresholds.

Temperatures are fitted with :func:`edge_eco.build.train.fit_temperature`; the thresholds are
chosen by replaying the calibration split through the real runtime (the bundle as written).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..manifest import Policy


def pick_reject_floor(probs: np.ndarray, y: np.ndarray, reject: int) -> float:
    """The max-probability floor under which the reject label is answered, maximising accuracy.

    Args:
        probs: calibrated probabilities [n, C]; y: gold class index [n]; reject: the reject class.

    Returns:
        The floor, on a 0.01 grid in [0, 0.89].
    """
    top, conf = probs.argmax(1), probs.max(1)
    grid = np.round(np.arange(0.0, 0.9, 0.01), 2)
    accs = [float((np.where(conf < t, reject, top) == y).mean()) for t in grid]
    return float(grid[int(np.argmax(accs))])


def tune_policy(bundle: Path, texts: Sequence[str], gold: Sequence[str], target_remote_rate: float,
                coalition_size: int) -> tuple[Policy, dict]:
    """Replay the calibration split through the runtime (local only) and pick the thresholds.

    ``direct_threshold``: the lowest route confidence at which the direct path is as accurate as the
    coalition path (within 0.1 point of the best). ``fallback_threshold``: the answer confidence
    under which the target share of requests goes to the remote generalist (the cascade rule).

    Returns:
        (the policy, a dict of what was measured).
    """
    import edge_eco

    rows = []
    with edge_eco.open(bundle) as eco:
        base = replace(eco.policy, coalition_size=coalition_size)
        eco.policy = replace(base, direct_threshold=1.01)  # force the coalition so both paths are seen
        eco.controller = None
        for text, label in zip(texts, gold):
            a = eco.answer(text, local_only=True)
            direct_vote = a.provenance["votes"][0]
            rows.append((a.provenance["route"]["probs"][0], direct_vote[1] == label, a.label == label,
                         direct_vote[2], a.confidence))
    route_conf = np.array([r[0] for r in rows])
    direct_ok, judged_ok = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    grid = np.round(np.arange(0.5, 1.0, 0.01), 2)
    accs = np.array([np.where(route_conf >= t, direct_ok, judged_ok).mean() for t in grid])
    pick = int(np.argmax(accs >= accs.max() - 0.001))  # the cheapest within 0.1 point of the best
    best_t, best_acc = float(grid[pick]), float(accs[pick])
    final_conf = np.where(route_conf >= best_t, np.array([r[3] for r in rows]), np.array([r[4] for r in rows]))
    fallback = float(np.round(np.quantile(final_conf, target_remote_rate), 3)) if target_remote_rate > 0 else 0.0
    policy = replace(base, direct_threshold=best_t, fallback_threshold=fallback,
                     remote_rule="cascade", target_remote_rate=target_remote_rate)
    return policy, {"val_local_accuracy": best_acc, "direct_share": float((route_conf >= best_t).mean()),
                    "target_remote_rate": target_remote_rate}

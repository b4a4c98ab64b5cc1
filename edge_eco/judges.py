"""Calibrated model outputs and the judge that settles a coalition. Pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .manifest import ModelEntry


@dataclass(frozen=True)
class Vote:
    """One model's calibrated answer."""

    model_id: str
    label: str
    confidence: float
    declined: bool = False


def calibrated_probs(entry: ModelEntry, logits: np.ndarray, reject_label: str) -> np.ndarray:
    """float64 [C] softmax of ``logits / temperature``, with ``reject_bias`` added to the reject
    label's scaled logit when the model has that label."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1) / entry.calibration.temperature
    if entry.calibration.reject_bias != 0.0 and reject_label in entry.labels:
        z[entry.labels.index(reject_label)] += entry.calibration.reject_bias
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


def calibrated_vote(entry: ModelEntry, logits: np.ndarray, reject_label: str) -> Vote:
    """Calibrated softmax of ``logits`` (:func:`calibrated_probs`) -> the model's answer.

    A specialist whose top label is its ``decline_label`` declines (the request is not in its
    niche). A model whose top probability is under ``reject_below`` answers ``reject_label``
    with that (low) probability as its confidence.
    """
    p = calibrated_probs(entry, logits, reject_label)
    top = int(p.argmax())
    label, conf = entry.labels[top], float(p[top])
    if label == entry.decline_label:
        return Vote(entry.id, reject_label, conf, declined=True)
    if conf < entry.calibration.reject_below:
        return Vote(entry.id, reject_label, conf)
    return Vote(entry.id, label, conf)


def judge(votes: list[Vote], reject_label: str) -> Vote:
    """Pick the most confident vote that did not decline.

    When every candidate declined, the request belongs to none of their niches: the answer is
    ``reject_label`` with the least confident decline as its confidence.
    """
    if not votes:
        raise ValueError("judge needs at least one vote")
    answering = [v for v in votes if not v.declined]
    if answering:
        return max(answering, key=lambda v: v.confidence)
    weakest = min(votes, key=lambda v: v.confidence)
    return Vote("+".join(v.model_id for v in votes), reject_label, weakest.confidence, declined=True)


def settle(all_declined: Vote, generalist: Vote) -> Vote:
    """When every specialist declined, the generalist's answer stands only if it is at least as
    confident as the declines that argue for the reject label."""
    if not generalist.declined and generalist.confidence >= all_declined.confidence:
        return generalist
    return all_declined

"""Behavioural diversity of archived versions, measured against their capability's champion.

The score of an archived version is the error disagreement (:func:`edge_eco.diversity.error_disagreement`)
of the version and the current champion of its capability on a seeded sample of labelled
requests: the share of requests exactly one of the two gets wrong (:func:`edge_eco.outcomes.right`:
a specialist must answer its own intents and decline the rest). A version that fails where the
champion fails adds nothing as a fallback and is evicted first when the archive is over its byte
budget (:meth:`edge_eco.archive.Archive.enforce_budget`). The controller stores the same measure
from feedback-labelled shadow pairs when it archives a model; this module measures it for every
archived version at once (``edge-eco diversity ECOLOGY --requests FILE --archive``).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import backends
from ._native import Featurizer
from .diversity import error_disagreement
from .errors import ManifestError, RequestError
from .inputs import hashed_feeds
from .judges import calibrated_vote
from .manifest import ModelEntry
from .outcomes import right

if TYPE_CHECKING:
    from .population import Population


def _wrong(entry: ModelEntry, path: Path, feeds: list, truths: list[str], reject_label: str,
           max_run_ms: float) -> np.ndarray:
    session = backends.open_model(entry.backend, path, output=entry.output, optimize=False, max_run_ms=max_run_ms)
    out = np.zeros(len(feeds), bool)
    for i, (f, truth) in enumerate(zip(feeds, truths)):
        v = calibrated_vote(entry, session.run(f), reject_label)
        out[i] = not right(entry, v.label, v.declined, truth)
    return out


def score_archive(pop: "Population", examples: list[tuple[str, str]], *, limit: int = 600,
                  seed: int = 0) -> list[tuple[str, str, float, int]]:
    """Measure and store the diversity of every live archived version against its champion.

    Args:
        pop: the population (opened writable); examples: labelled requests (text, true label).
        limit: requests sampled (seeded); seed: the sample's seed.

    Returns:
        (capability, version, score, requests) for every version scored. Current champions, evicted
        versions and versions of capabilities no longer in the manifest are skipped.

    Raises:
        RequestError: no examples, or the ecology's models do not take hashed text.
    """
    m = pop.manifest
    if not examples:
        raise RequestError("no labelled requests to score the archive on")
    if m.featurizer is None:
        raise RequestError("archive diversity needs a hashed-text ecology (this one has no text featurizer)")
    sample = random.Random(seed).sample(examples, min(limit, len(examples)))
    featurizer = Featurizer(m.featurizer)
    feeds = [hashed_feeds(*featurizer(t.encode("utf-8"))) for t, _ in sample]
    truths = [y for _, y in sample]
    champions: dict[str, np.ndarray] = {}
    scored = []
    with tempfile.TemporaryDirectory(prefix="edge_eco-archive-") as tmp:
        for a in pop.archive.list():
            try:
                champ = m.model(a.capability)
            except ManifestError:
                continue
            if a.evicted or a.entry.input != "hashed-text" or \
                    (a.version, a.entry.file.sha256) == (champ.version, champ.file.sha256):
                continue
            if a.capability not in champions:
                champions[a.capability] = _wrong(champ, pop.root / champ.file.path, feeds, truths, m.reject_label,
                                               m.policy.max_run_ms)
            folder = Path(tmp) / f"{a.capability}-{a.version}"
            folder.mkdir()
            pop.archive.restore(folder, a.capability, a.version)  # checks every file's sha256
            theirs = _wrong(a.entry, folder / a.entry.file.path, feeds, truths, m.reject_label, m.policy.max_run_ms)
            score = error_disagreement(champions[a.capability], theirs)
            pop.archive.set_diversity(a.capability, a.version, score)
            scored.append((a.capability, a.version, score, len(sample)))
    return scored

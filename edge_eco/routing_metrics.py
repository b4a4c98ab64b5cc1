"""Metrics of routing quality: the deferral curve, PGR/APGR/CPT, ECE, AURC, baselines. Pure.

Setting: every request has a local (weak, on-device) answer and a remote (strong, generalist)
answer, each right or wrong, and a router score; the higher the score, the sooner the request
goes remote. Call rates are fractions in [0, 1] (the papers print them as percentages).

- Deferral curve (FrugalGPT-style cascade evaluation): accuracy when the ``round(r*N)`` requests
  with the highest score go remote and the rest are answered locally.
- PGR, APGR, CPT (RouteLLM, Ong et al. 2024, arXiv 2406.18665): PGR = (acc - weak) / (strong - weak);
  APGR = integral of PGR over the call rate 0..1; CPT(x) = the smallest call rate reaching PGR x.
- ECE (Guo et al. 2017): equal-width confidence bins, |accuracy - mean confidence| weighted by
  the bin's share of the samples.
- AURC, E-AURC (Geifman et al. 2019): area under the selective risk-coverage curve, and its
  excess over the best ranking for the same errors.

Inputs are 1-D array-likes; correctness arrays hold booleans or 0/1. Bad input raises
``ValueError`` (``TypeError`` for a non-numeric array) naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_REMOTE_RATES = (0.05, 0.1, 0.2, 0.3)


def _vector(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.bool_ and not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be numeric or boolean, got dtype {a.dtype}")
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    return a


def _correct(name: str, x: ArrayLike) -> np.ndarray:
    a = _vector(name, x)
    if a.dtype != np.bool_ and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name} must hold only booleans or 0/1")
    return a.astype(bool)


def _scores(name: str, x: ArrayLike, unit: bool = False) -> np.ndarray:
    a = _vector(name, x).astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if unit and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got [{a.min():g}, {a.max():g}]")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    sizes = {name: a.size for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must have the same length, got {sizes}")
    return next(iter(sizes.values()))


def _grid(rates: ArrayLike, accs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r, a = _scores("rates", rates, unit=True), _scores("accs", accs)
    _same_length(rates=r, accs=a)
    if r.size < 2 or np.any(np.diff(r) <= 0):
        raise ValueError("rates must hold at least two strictly increasing call rates")
    return r, a


def curve(local_correct: ArrayLike, remote_correct: ArrayLike, remote_score: ArrayLike,
          rates: ArrayLike) -> np.ndarray:
    """Accuracy when the requests with the highest ``remote_score`` go remote, per call rate.

    For each ``r`` in ``rates``, the ``k = round(r * N)`` requests of highest score are answered
    remotely and the others locally (Python rounding: halves go to the even integer). Equal
    scores are broken by index, lower index first, so the result is deterministic.

    Returns a 1-D float array, one accuracy per rate: rate 0 gives the local accuracy and
    rate 1 the remote accuracy. Raises ``ValueError`` on mismatched lengths, non-binary
    correctness, non-finite scores or rates outside [0, 1].
    """
    local, remote = _correct("local_correct", local_correct), _correct("remote_correct", remote_correct)
    score = _scores("remote_score", remote_score)
    n = _same_length(local_correct=local, remote_correct=remote, remote_score=score)
    r = _scores("rates", np.atleast_1d(rates), unit=True)
    order = np.argsort(-score, kind="stable")
    # Routing request i changes the number right by remote_i - local_i; prefix sums of that
    # gain in routing order give every rate at once.
    gain = remote[order].astype(np.int64) - local[order].astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(gain)))
    k = np.array([round(float(x) * n) for x in r], dtype=np.int64)
    return (int(local.sum()) + cum[k]) / n


def pgr(acc: ArrayLike, weak_acc: float, strong_acc: float) -> float | np.ndarray:
    """Performance gap recovered: ``(acc - weak_acc) / (strong_acc - weak_acc)`` (RouteLLM).

    0 at the weak (local-only) accuracy, 1 at the strong (remote-only) one. Not clipped: a
    router that beats the strong model gets PGR > 1, and one worse than the weak model < 0.
    If ``strong_acc < weak_acc`` the value is still the fraction of the way from weak to strong,
    but "gap recovered" then reads backwards. Returns a float for a scalar ``acc``, else an
    array. Raises ``ValueError`` when ``strong_acc == weak_acc`` (no gap) or on non-finite input.
    """
    weak, strong = float(weak_acc), float(strong_acc)
    if not (np.isfinite(weak) and np.isfinite(strong)):
        raise ValueError(f"weak_acc and strong_acc must be finite, got {weak_acc}, {strong_acc}")
    if strong == weak:
        raise ValueError(f"PGR is undefined when strong_acc == weak_acc (both {weak:g})")
    out = (np.asarray(acc, dtype=np.float64) - weak) / (strong - weak)
    return float(out) if out.ndim == 0 else out


def apgr(rates: ArrayLike, accs: ArrayLike, weak_acc: float, strong_acc: float) -> float:
    """Average performance gap recovered: the area under PGR over call rates 0..1 (RouteLLM).

    Trapezoid rule on the given grid, which must be strictly increasing from exactly 0 to
    exactly 1. Random routing scores about 0.5; since PGR is not clipped, APGR can exceed 1.
    Raises ``ValueError`` on a bad grid, mismatched lengths or ``strong_acc == weak_acc``.
    """
    r, a = _grid(rates, accs)
    if r[0] != 0.0 or r[-1] != 1.0:
        raise ValueError(f"APGR needs a grid from 0 to 1, got {r[0]:g}..{r[-1]:g}")
    p = pgr(a, weak_acc, strong_acc)
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2.0))


def cpt(rates: ArrayLike, accs: ArrayLike, weak_acc: float, strong_acc: float,
        target: float) -> float | None:
    """Call-performance threshold: the smallest call rate at which PGR reaches ``target``.

    PGR is taken as piecewise linear between grid points, so the answer is interpolated in the
    first segment that reaches ``target`` (``target=0.5`` gives RouteLLM's CPT(50%)). Returns a
    fraction, or ``None`` when PGR never reaches ``target`` on the grid. Raises ``ValueError``
    on a bad grid, mismatched lengths, non-finite ``target`` or ``strong_acc == weak_acc``.
    """
    r, a = _grid(rates, accs)
    t = float(target)
    if not np.isfinite(t):
        raise ValueError(f"target must be finite, got {target}")
    p = pgr(a, weak_acc, strong_acc)
    hits = np.flatnonzero(p >= t)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(r[0])
    r0, r1, p0, p1 = r[i - 1], r[i], p[i - 1], p[i]
    # Clamped to the segment so that rounding cannot make CPT decrease as target grows.
    return float(min(r1, max(r0, r0 + (t - p0) / (p1 - p0) * (r1 - r0))))


def accuracy_at_remote_rate(local_correct: ArrayLike, remote_correct: ArrayLike,
                            remote_score: ArrayLike,
                            rates: Sequence[float] = DEFAULT_REMOTE_RATES) -> dict[str, float]:
    """Accuracy at a few fixed call rates, keyed by the rate as ``str(float(rate))`` ("0.05")."""
    accs = curve(local_correct, remote_correct, remote_score, list(rates))
    return {str(float(r)): float(a) for r, a in zip(rates, accs)}


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width bins.

    ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over the bins ``((b-1)/M, b/M]`` (a
    confidence of exactly 0 falls in the first bin); empty bins add nothing. In [0, 1].
    Raises ``ValueError`` for confidences outside [0, 1], mismatched lengths or ``n_bins < 1``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf, corr = _scores("confidence", confidence, unit=True), _correct("correct", correct)
    n = _same_length(confidence=conf, correct=corr)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    # |B|/N * |acc - conf| == |sum(correct) - sum(conf)| / N within a bin.
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_bins)
    return float(np.sum(np.abs(sum_corr - sum_conf)) / n)


def _aurc_of_errors(errors_in_order: np.ndarray) -> float:
    k = np.arange(1, errors_in_order.size + 1)
    return float(np.mean(np.cumsum(errors_in_order) / k))


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve (Geifman et al. 2019); lower is better.

    Samples are sorted by confidence, highest first (equal confidences by index); the risk at
    coverage k/N is the error rate among the first k; AURC is the mean over k = 1..N. In [0, 1].
    """
    conf, corr = _scores("confidence", confidence), _correct("correct", correct)
    _same_length(confidence=conf, correct=corr)
    return _aurc_of_errors(~corr[np.argsort(-conf, kind="stable")])


def eaurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Excess AURC: ``aurc`` minus the AURC of the best ranking (every right answer first).

    The optimum depends only on the number of errors, so E-AURC compares rankings across models
    of different accuracy. Always >= 0; 0 exactly when the ranking puts all right answers first.
    """
    corr = _correct("correct", correct)
    return aurc(confidence, corr) - _aurc_of_errors(np.sort(~corr))


def random_scores(n: int, seed: int | np.random.Generator) -> np.ndarray:
    """Random-routing baseline: ``n`` uniform scores in [0, 1) from ``seed`` (an int or Generator)."""
    if seed is None:
        raise TypeError("seed must be an int or a numpy Generator, not None")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return np.random.default_rng(seed).random(int(n))


def max_softmax_scores(local_confidence: ArrayLike) -> np.ndarray:
    """Cascade baseline: ``1 - local_confidence``, so the least confident requests go remote first."""
    return 1.0 - _scores("local_confidence", local_confidence, unit=True)


def oracle_scores(local_correct: ArrayLike, remote_correct: ArrayLike) -> np.ndarray:
    """Oracle baseline, the best possible curve at every call rate.

    Scores 3 where local is wrong and remote right, 2 where both are wrong, 1 where both are
    right, 0 where local is right and remote wrong (routing those loses an answer).
    """
    local, remote = _correct("local_correct", local_correct), _correct("remote_correct", remote_correct)
    _same_length(local_correct=local, remote_correct=remote)
    return np.select([~local & remote, ~local & ~remote, local & remote], [3.0, 2.0, 1.0], 0.0)


def summarise(name: str, local_correct: ArrayLike, remote_correct: ArrayLike,
              remote_score: ArrayLike, weak_acc: float, strong_acc: float,
              grid: ArrayLike | None = None) -> dict:
    """One router's figures, JSON-ready: its curve on ``grid``, APGR, CPT(50%), CPT(80%).

    ``grid`` defaults to ``np.linspace(0, 1, 101)`` and must run from 0 to 1. ``weak_acc`` and
    ``strong_acc`` are normally the local-only and remote-only accuracies (the curve's ends).
    Returns ``{"name", "rates", "accuracy", "apgr", "cpt50", "cpt80",
    "accuracy_at_remote_rate"}``; a CPT never reached is ``None``.
    """
    rates = np.linspace(0.0, 1.0, 101) if grid is None else _scores("grid", grid, unit=True)
    accs = curve(local_correct, remote_correct, remote_score, rates)
    return {
        "name": name,
        "rates": [float(r) for r in rates],
        "accuracy": [float(a) for a in accs],
        "apgr": apgr(rates, accs, weak_acc, strong_acc),
        "cpt50": cpt(rates, accs, weak_acc, strong_acc, 0.5),
        "cpt80": cpt(rates, accs, weak_acc, strong_acc, 0.8),
        "accuracy_at_remote_rate": accuracy_at_remote_rate(local_correct, remote_correct, remote_score),
    }

"""Request contracts and the eligibility filter. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import RequestError
from .manifest import ModelEntry


@dataclass(frozen=True)
class RequestContract:
    """What a request demands of the models that may answer it."""

    local_only: bool = False
    deadline_ms: float | None = None
    max_risk: str = "medium"


_RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
RISK_LEVELS = tuple(_RISK_ORDER)


def risk_allows(risk: str, max_risk: str) -> bool:
    """Whether a model of risk level ``risk`` may answer under a contract's ``max_risk``."""
    return _RISK_ORDER[risk] <= _RISK_ORDER[max_risk]


def validate_text(text: str | bytes, max_text_bytes: int) -> bytes:
    """The request text as UTF-8 bytes, or RequestError naming what is wrong with it."""
    if isinstance(text, bytes):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"text is not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc
        data = text
    elif isinstance(text, str):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"text is not valid UTF-8 (character {exc.start}: {exc.reason})") from exc
    else:
        raise RequestError(f"text must be str or bytes, got {type(text).__name__}")
    if len(data) > max_text_bytes:
        raise RequestError(f"text is {len(data)} bytes; the limit is {max_text_bytes} (policy.max_text_bytes)")
    if not data.decode("utf-8").strip():  # str.strip: Unicode whitespace (NBSP, U+3000) too
        raise RequestError("text is empty")
    return data


def expected_latency_ms(entry: ModelEntry, resident: bool) -> float:
    """Cold-load cost (when not resident) plus p95 inference, from the manifest's measured costs."""
    return (0.0 if resident else entry.cost.load_ms) + entry.cost.p95_us / 1e3


def eligible_mask(entries: Sequence[ModelEntry], contract: RequestContract,
                  resident: frozenset[str]) -> np.ndarray:
    """bool [len(entries)]: which candidate models may answer this request.

    A candidate is eligible when its risk level is allowed and its expected latency fits the
    deadline. When the deadline excludes everything, the deadline is relaxed (a late local
    answer beats none) and only the risk rule applies.
    """
    risk_ok = np.array([_RISK_ORDER[e.risk] <= _RISK_ORDER[contract.max_risk] for e in entries])
    if contract.deadline_ms is None:
        return risk_ok
    fits = np.array([expected_latency_ms(e, e.id in resident) <= contract.deadline_ms for e in entries])
    both = risk_ok & fits
    return both if both.any() else risk_ok


def deadline_mask(risk_ok: np.ndarray, latency_ms: Sequence[float], deadline_ms: float) -> np.ndarray:
    """``risk_ok`` narrowed to the candidates whose expected latency fits ``deadline_ms``; the
    per-request form of :func:`eligible_mask` (the risk part computed once). When nothing fits,
    the deadline is relaxed: ``risk_ok``."""
    fits = np.fromiter((x <= deadline_ms for x in latency_ms), bool, len(latency_ms))
    both = risk_ok & fits
    return both if both.any() else risk_ok

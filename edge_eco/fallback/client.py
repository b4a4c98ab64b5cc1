"""The one interface of remote generalist clients: ``infer(texts, timeout_s=...)`` -> answers.

A protocol subclass (v2 REST, OpenAI chat completions) implements ``_call``: one try, one
exchange per batch or per text. This base adds what every protocol needs: argument checks,
the circuit breaker (a dead server costs a lock, not a timeout), bounded jittered retries
within the deadline, and the label-set check (an answer outside the ecology's labels is a
failed call, not an answer).
"""

from __future__ import annotations

import math
import random
import ssl
import time
from dataclasses import dataclass, replace
from typing import Callable

from edge_eco.errors import (FallbackError, ManifestError, RemoteProtocolError, RemoteStatusError, RemoteUnavailable,
                             RequestError)
from edge_eco.fallback.breaker import CircuitBreaker
from edge_eco.fallback.retry import RetryPolicy, retriable
from edge_eco.fallback.transport import HttpTransport

__all__ = ["RemoteAnswer", "RemoteClient"]


@dataclass(frozen=True)
class RemoteAnswer:
    """One answer from a remote generalist."""

    label: str
    confidence: float
    model: str
    model_version: str
    latency_ms: float
    attempts: int = 1


class RemoteClient:
    """Base of the protocol clients; thread-safe (one keep-alive connection per thread)."""

    protocol = ""

    def __init__(self, url: str, model: str, *, labels: tuple[str, ...] | None = None, token: str | None = None,
                 default_timeout_s: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 breaker: CircuitBreaker | None = None, retry: RetryPolicy | None = None,
                 rng: Callable[[], float] = random.random):
        """Describe the remote model; no connection is made until the first call.

        Args:
            url: base URL (``http://host:port[/prefix]`` or ``https://...``).
            model: the model name on the server.
            labels: the ecology's label set; an answer outside it is a failed call. None: no check.
            token: sent as ``Authorization: Bearer <token>`` when set.
            default_timeout_s: the budget of a call that gives none (all tries together).
            ssl_context: for https URLs; default: the ssl default context (verifies certificates).
            breaker: circuit breaker (default: open after 5 failed calls in a row, probe after 1 s,
                backing off to 30 s); while open, infer fails fast with RemoteUnavailable.
            retry: retry policy (default: 2 tries, full jitter from 10 ms).
            rng: uniform [0, 1) draws for the retry jitter (injected in tests).
        Raises:
            ManifestError: the URL, model name, labels or timeout is invalid.
        """
        if not model:
            raise ManifestError("remote model name must not be empty")
        if labels is not None and (not labels or not all(isinstance(x, str) and x for x in labels)):
            raise ManifestError("remote labels must be a non-empty list of non-empty strings")
        self.transport = HttpTransport(url, token=token, default_timeout_s=default_timeout_s,
                                       ssl_context=ssl_context)
        self.url, self.model, self.default_timeout_s = self.transport.url, model, self.transport.default_timeout_s
        self.labels = tuple(labels) if labels is not None else None
        self._label_set = frozenset(labels) if labels is not None else None
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.retry = retry if retry is not None else RetryPolicy()
        self._rng = rng
        self._last_failure = ""  # the failure behind an open circuit, named in its fast-fail message

    def infer(self, texts: list[str], *, timeout_s: float | None = None) -> list[RemoteAnswer]:
        """Classify a batch of texts remotely, every try within ``timeout_s``.

        Args:
            texts: one or more strings.
            timeout_s: the budget of the whole call (tries and waits); default_timeout_s when None.
        Returns:
            One RemoteAnswer per text, in order.
        Raises:
            RequestError: texts is empty or not a list of strings, or timeout_s is not positive.
            RemoteUnavailable: refused, reset, timed out, or the circuit is open.
            RemoteProtocolError: error status, a reply that is not a valid answer, or a label
                outside the label set.
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise RequestError("texts must be a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise RequestError("every text must be a string")
        budget_s = self.default_timeout_s if timeout_s is None else timeout_s
        if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not (
                budget_s > 0 and math.isfinite(budget_s)):
            raise RequestError(f"timeout_s must be a positive number, got {timeout_s!r}")
        wait_s = self.breaker.allow()
        if wait_s is not None:
            raise RemoteUnavailable(f"circuit open for {self.url} after repeated failures (last: "
                                    f"{self._last_failure}); next probe in {wait_s:.2f} s")
        t0 = time.perf_counter()
        deadline = t0 + budget_s
        tries = 0
        while True:
            tries += 1
            try:
                answers = self._call(list(texts), max(deadline - time.perf_counter(), 1e-3))
                self._check_labels(answers)
                break
            except FallbackError as exc:
                delay_s = self.retry.next_delay_s(tries, deadline - time.perf_counter(), self._rng()) \
                    if retriable(exc) else None
                if delay_s is None:
                    self._last_failure = f"{type(exc).__name__}: {str(exc)[:400]}"
                    self.breaker.failure()
                    if tries > 1:
                        raise _with_tries(exc, tries) from exc
                    raise
                time.sleep(delay_s)
        self.breaker.success()
        latency_ms = (time.perf_counter() - t0) * 1e3
        return [replace(a, latency_ms=latency_ms, attempts=tries) for a in answers]

    def ready(self, timeout_s: float = 1.0) -> bool:
        """True when the server says the model is ready; False on any failure."""
        try:
            status, _ = self.transport.request("GET", self._ready_path(), None, timeout_s)
        except FallbackError:
            return False
        return status == 200

    def close(self) -> None:
        """Close every connection this client opened (in any thread)."""
        self.transport.close()

    def __enter__(self) -> "RemoteClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_labels(self, answers: list[RemoteAnswer]) -> None:
        if self._label_set is None:
            return
        for a in answers:
            if a.label not in self._label_set:
                raise RemoteProtocolError(f"remote answered {a.label[:80]!r}, which is not in the label set "
                                          f"({len(self._label_set)} labels)")

    # -- what a protocol provides ---------------------------------------------------------------

    def _call(self, texts: list[str], remaining_s: float) -> list[RemoteAnswer]:
        """One try: the exchange(s) for ``texts`` within ``remaining_s``; latency_ms may be 0."""
        raise NotImplementedError

    def _ready_path(self) -> str:
        raise NotImplementedError


def _with_tries(exc: FallbackError, tries: int) -> FallbackError:
    """The same failure, its message saying how many tries were made."""
    message = f"{exc} (after {tries} tries)"
    if isinstance(exc, RemoteStatusError):
        return RemoteStatusError(message, exc.status)
    return type(exc)(message)

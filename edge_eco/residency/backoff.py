"""Back-off of failed loads: a model whose load failed (its probe run stopped at ``max_run_ms``, a
file gone or changed, a runtime that refuses it) is not loaded again for ``first_s``, then twice
as long after each failed retry up to ``most_s``, while its files are unchanged; a changed or
restored file is tried at once. Without it every request routed to such a model paid its whole
load again (a trial: 200 requests, 38 s against 0.49 s). Shell (stats the model's files).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Callable

from ..artifacts import file_identity


@dataclass(frozen=True)
class _Failure:
    """A model's last failed load: its error, how many failed in a row on the same files, until
    when it is not tried again, and its files' identity then."""

    exc: Exception
    count: int
    until: float
    files: tuple


class LoadBackoff:
    """The failed loads of one residency manager.

    Args:
        first_s, most_s: the first pause and the longest.
        paths: model id -> absolute paths of its files (what a fix changes).
        clock: seconds, monotonic.
    """

    def __init__(self, first_s: float, most_s: float, paths: Callable[[str], set[str]] | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._first_s, self._most_s, self._paths, self._clock = first_s, most_s, paths, clock
        self.failed: dict[str, _Failure] = {}  # model -> its last failed load (read bare: a dict get)

    def _files(self, model_id: str) -> tuple:
        out = []
        for path in sorted(self._paths(model_id)) if self._paths is not None else ():
            try:
                out.append((path, file_identity(os.stat(path))))
            except OSError:
                out.append((path, None))
        return tuple(out)

    def record(self, model_id: str, exc: Exception) -> None:
        """A load of ``model_id`` raised ``exc``: pause it (twice as long as last time when its
        files are the same)."""
        files = self._files(model_id)
        before = self.failed.get(model_id)
        count = before.count + 1 if before is not None and before.files == files else 1
        pause = min(self._first_s * 2 ** (count - 1), self._most_s)
        self.failed[model_id] = _Failure(exc, count, self._clock() + pause, files)

    def refusal(self, model_id: str) -> Exception | None:
        """The error to raise at once for a miss of ``model_id`` while it backs off (its failed
        load's error, saying so); None when it may be loaded (never failed, its pause is over,
        or its files changed)."""
        failure = self.failed.get(model_id)
        if failure is None:
            return None
        left = failure.until - self._clock()
        if left <= 0 or self._files(model_id) != failure.files:
            return None
        err = copy.copy(failure.exc)
        err.args = (f"{failure.exc} (its load failed {failure.count} time{'s' if failure.count > 1 else ''}; "
                    f"not tried again for {left:.1f} s unless its files change)",)
        return err

    def clear(self, model_id: str) -> None:
        """``model_id`` loaded: forget its failures."""
        self.failed.pop(model_id, None)

    def models(self) -> list[str]:
        """Ids of models whose pause is not over (unless their files change)."""
        now = self._clock()
        return sorted(m for m, f in list(self.failed.items()) if f.until > now)

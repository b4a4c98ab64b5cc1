"""Model runtimes behind one small interface, found by file name (``ort.py``, ``fake.py``).

A backend is a module with ``open(path, *, output, threads, optimize) -> Session``; a session has
``run(feeds) -> np.ndarray`` (the named output) and ``close()``. Only ``ort.py`` imports
onnxruntime, lazily; ``fake.py`` runs small numpy models so logic tests need no runtime.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ..artifacts import preflight
from ..errors import InferenceError, ModelLoadError
from ..manifest import MAX_RUN_MS


class Session(Protocol):
    """A loaded model."""

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run once; returns the model's declared output."""

    def close(self) -> None:
        """Release the model's memory; the session is unusable afterwards."""


NAMES = ("ort", "tflite", "fake")
MAX_THREADS = 1024  # the same bound as a platform profile's ``threads``

class _Deadline(threading.local):
    end_ns: int | None = None  # the deadline of the runs this thread starts; a class default, so
    # that a thread that never set one reads None without a failed attribute lookup (~0.5 us a run)


_deadline = _Deadline()


def deadline_in(ms: float | None) -> int | None:
    """The ``time.monotonic_ns()`` time ``ms`` milliseconds from now (None for None)."""
    return None if ms is None else time.monotonic_ns() + int(ms * 1e6)


def set_run_deadline(end_ns: int | None) -> int | None:
    """Runs this thread starts from now stop once ``time.monotonic_ns()`` passes ``end_ns`` (a
    request's deadline; ONNX Runtime sessions with a ``max_run_ms``, whose watchdog stops them,
    up to a quarter of that limit late); None: only their limit. Returns the previous value, for
    the caller to restore."""
    before, _deadline.end_ns = _deadline.end_ns, end_ns
    return before


def run_deadline() -> int | None:
    """This thread's run deadline (see :func:`set_run_deadline`), or None."""
    return _deadline.end_ns


def brief(message: object, limit: int = 400) -> str:
    """A runtime's error message cut to ``limit`` characters for an error of ours, keeping its
    start and its end: ONNX Runtime puts the reason last, after the node and the shapes."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]} ... {text[-(limit - head - 5):]}"


def check_feed_names(feeds: object, names: list[str]) -> None:
    """Refuse feeds that are not a dict, or that add inputs the model does not have (they would
    be dropped silently). A wrong name among the right number of feeds leaves a right one
    missing, which the backend's own check names.

    Raises:
        InferenceError: naming the problem and the model's inputs.
    """
    if not isinstance(feeds, dict):
        raise InferenceError(f"feeds must be a dict of input name -> array, not a {type(feeds).__name__}")
    if len(feeds) != len(names):  # same count: a wrong name leaves a right one missing (the caller's check)
        unknown = sorted(repr(n) for n in feeds if n not in names)
        if unknown:
            raise InferenceError(f"unknown input {', '.join(unknown)} (model inputs: {names})")


def check_threads(threads: object) -> None:
    """Refuse a thread count a runtime would turn into that many OS threads (10**6 exhausts a device).

    Raises:
        ModelLoadError: ``threads`` is not a whole number from 1 to MAX_THREADS.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ModelLoadError(f"threads must be a whole number from 1 to {MAX_THREADS}, not {threads!r}")


def check_max_run_ms(max_run_ms: object) -> float | None:
    """``max_run_ms`` as a float (a numpy scalar too), or None.

    Raises:
        ModelLoadError: not None and not a number of milliseconds in (0, MAX_RUN_MS] (inf, NaN
            and booleans included).
    """
    if max_run_ms is None:
        return None
    value = float(max_run_ms) if isinstance(max_run_ms, (np.integer, np.floating)) else max_run_ms
    # a comparison, not math.isfinite (OverflowError on an int past float range); NaN fails it too
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_RUN_MS:
        raise ModelLoadError(f"max_run_ms must be a positive number of milliseconds up to {MAX_RUN_MS:g}, "
                             f"or None, not {max_run_ms!r}")
    return float(value)


def open_model(backend: str, path: Path, *, output: str = "logits", threads: int = 1,
               optimize: bool = True, max_run_ms: float | None = None) -> Session:
    """Load ``path`` with the named backend; ``max_run_ms`` stops a run that lasts longer (ONNX
    Runtime; see ``ort.open``), None: no limit.

    Raises:
        ModelLoadError: unknown backend, runtime not installed, a file that fails the structural
            preflight (empty, Git LFS pointer, wrong magic, broken ONNX structure), or the runtime
            refused the file, or ``threads`` is not a whole number from 1 to MAX_THREADS, or
            ``max_run_ms`` is not None or a number in (0, MAX_RUN_MS].
    """
    if backend not in NAMES:
        raise ModelLoadError(f"unknown backend {backend!r} (known: {list(NAMES)})")
    check_threads(threads)
    max_run_ms = check_max_run_ms(max_run_ms)
    preflight(Path(path))  # before any runtime sees the bytes: some crash on corrupt files
    module = importlib.import_module(f"{__name__}.{backend}")
    return module.open(Path(path), output=output, threads=threads, optimize=optimize, max_run_ms=max_run_ms)

"""Stopping ONNX Runtime runs from outside: one watchdog thread for every session opened with a
``max_run_ms``, and what a session needs to be watched (:class:`LimitedRuns`).

A valid graph can loop for ever (a ``Loop`` of 10**15 trips passes every structural check); a run
past its session's limit, or past its request's deadline (``backends.set_run_deadline``), is
stopped through its run options' terminate flag, which ONNX Runtime checks between nodes, and
raises :class:`~edge_eco.errors.InferenceError`. The session runs again afterwards. Shell (a
thread, a signal pipe).

Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC, the clock the kernel (``ee_ort_job_run``)
stamps runs with.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import weakref
from typing import Callable, Iterator, TypeVar

from ..errors import InferenceError
from . import check_max_run_ms, run_deadline

T = TypeVar("T")


class LimitedRuns:
    """The run limit of one session: its runs in flight (``_inflight``: token -> (start ns,
    stop, deadline ns or None)) and how the watchdog stops them. A session sets ``_state`` (a
    lock) and calls :meth:`_limit` when it is built, :meth:`_unlimit` when it is closed."""

    max_run_ms: float | None = None  # a run past it is stopped (InferenceError); None: never
    _state: threading.Lock

    def _limit(self, max_run_ms: float | None) -> None:
        """Check ``max_run_ms`` (ModelLoadError) and keep it; call :meth:`_watch` once built."""
        limit = check_max_run_ms(max_run_ms)
        self._inflight: dict = {}
        if limit is not None:
            self.max_run_ms, self._limit_ns = limit, int(limit * 1e6)

    def _watch(self) -> None:
        if self.max_run_ms is not None:
            watchdog.watch(self)

    def _unlimit(self) -> None:
        watchdog.unwatch(self)

    def _stopped_error(self, deadline: int | None) -> InferenceError:
        if deadline and time.monotonic_ns() >= deadline:
            return InferenceError("onnxruntime run stopped: the request's deadline (deadline_ms) passed while it ran")
        return InferenceError(f"onnxruntime run stopped: it ran past {self.max_run_ms:g} ms, the limit of one run "
                              "(policy max_run_ms)")

    def _overdue(self, now: int, started: int, deadline: int | None) -> bool:
        """Whether a run that began at ``started`` with ``deadline`` is to be stopped at ``now``."""
        return now - started > self._limit_ns or (deadline is not None and now > deadline)

    def _run_watched(self, run: Callable[[], T], terminate: Callable[[], None]) -> T:
        """``run()``, registered so that the watchdog calls ``terminate()`` (under ``_state``)
        once it is overdue; its error then becomes the stopped-run InferenceError."""
        token, stopped, deadline = object(), [], run_deadline()

        def stop() -> None:
            stopped.append(True)
            terminate()
        with self._state:
            self._inflight[token] = (time.monotonic_ns(), stop, deadline)
        try:
            return run()
        except Exception as exc:
            if stopped:
                raise self._stopped_error(deadline) from exc
            raise
        finally:
            with self._state:
                del self._inflight[token]

    def _stop_overdue(self, now: int) -> None:
        """Stop the runs in flight that started more than ``max_run_ms`` before ``now``, or whose
        request's deadline has passed (the watchdog's thread). Under ``_state``: a run frees what
        ``terminate`` touches only once it is unregistered."""
        with self._state:
            for started, stop, deadline in self._inflight.values():
                if self._overdue(now, started, deadline):
                    stop()


class Watchdog:
    """One daemon thread that stops overdue runs of the sessions it watches. It wakes every
    quarter of the shortest limit watched (at least every 10 ms, at most every 250 ms); the
    request path pays no wake-up. It ends when no session is watched."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet = weakref.WeakSet()
        # Re-entrant: a garbage collection while it is held can run a dropped session's __del__
        # (close -> unwatch) on this same thread; with a plain lock the watchdog deadlocked on
        # itself and a runaway run in a fresh-clone CI went on for ever.
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def watch(self, session: LimitedRuns) -> None:
        with self._lock:
            self._sessions.add(session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edge_eco-run-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, session: LimitedRuns) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _watched(self) -> list[LimitedRuns]:
        with self._lock:
            return list(self._sessions)

    def _loop(self) -> None:
        while True:
            with self._lock:
                limits = [s.max_run_ms for s in self._sessions]
                if not limits:
                    self._thread = None
                    return
            time.sleep(min(0.25, max(0.01, min(limits) / 4000)))  # holding no session meanwhile
            now = time.monotonic_ns()
            for s in self._watched():
                s._stop_overdue(now)

    def stop_all(self) -> None:
        """Stop every run in flight of every watched session now."""
        for s in self._watched():
            s._stop_overdue(1 << 62)


watchdog = Watchdog()


def stop_all_runs() -> None:
    """Stop every ONNX Runtime run in flight of the sessions opened with ``max_run_ms`` (each
    raises its InferenceError): what Ctrl-C does in ``edge-eco`` commands (:func:`interrupts_stop_runs`),
    since a signal reaches Python code only once the run it interrupts has returned."""
    watchdog.stop_all()


@contextlib.contextmanager
def interrupts_stop_runs() -> Iterator[None]:
    """While in this block (in the main thread), SIGINT also stops the runs in flight
    (:func:`stop_all_runs`), so that Ctrl-C takes effect at once and not when a run of up to
    ``max_run_ms`` returns. A thread reads the signal numbers CPython writes to a wake-up pipe
    (``signal.set_wakeup_fd``); elsewhere than the main thread, or when the wake-up fd is in use
    (an event loop's), the block does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        previous = None
    if previous != -1:  # not allowed here, or an event loop's: leave it be
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)
        yield
        return

    def read_signals() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:  # the block ended: its end of the pipe was closed
                return
            if int(signal.SIGINT) in data:
                stop_all_runs()

    thread = threading.Thread(target=read_signals, name="edge_eco-interrupts", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        os.close(w)
        thread.join(5)
        os.close(r)

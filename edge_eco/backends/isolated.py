"""Run a model in a sandboxed worker process: a backend wrapper for models of risk level ``high``.

The worker (``backends/_worker.py``) holds the real session (ONNX Runtime, ...) and talks
msgpack over a pipe. The sandbox, best effort with what the host allows:

- no network: a fresh network namespace (``unshare -n``, or ``unshare -r -n`` where only user
  namespaces are allowed) holding only a down loopback; where neither works the worker still
  runs, with ``net_isolated = False`` (reported, never silent);
- memory and CPU: ``RLIMIT_AS`` and ``RLIMIT_CPU`` set by the worker before any runtime loads,
  no core dumps;
- a clean environment (no tokens or proxies of the host), only stdin/stdout/stderr inherited
  (every other descriptor, sockets included, is closed), Python in isolated mode (``-I``).

A worker that dies (a segfault, ``kill -9``, its CPU limit) or does not answer within
``run_timeout_s`` (it is then killed) fails that one request with an :class:`InferenceError`
naming what happened; the next request starts a new worker and reloads the model.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendError, InferenceError, ModelLoadError
from . import _worker

# Measured private (anonymous) memory of a worker holding one small ONNX model: Python, numpy and
# ONNX Runtime loaded; the shared libraries are file-backed pages on top (~42 MB, shared).
WORKER_OVERHEAD_BYTES = 26_000_000
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_unshare_prefix: list[str] | None = None
_probe_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """Limits of one worker: address space, CPU seconds over its life, time per run."""

    address_space_bytes: int = 4 << 30
    cpu_s: int = 3600
    run_timeout_s: float = 5.0
    start_timeout_s: float = 60.0


def _net_prefix() -> list[str]:
    """The command prefix that gives the worker its own empty network namespace ([] if none works)."""
    global _unshare_prefix
    with _probe_lock:
        if _unshare_prefix is None:
            _unshare_prefix = []
            tool = shutil.which("unshare")
            for prefix in ([tool, "-n"], [tool, "-r", "-n"]) if tool else ():
                try:
                    ok = subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
                if ok:
                    _unshare_prefix = prefix
                    break
    return _unshare_prefix


class IsolatedSession:
    """A model served by a sandboxed worker process; ``run`` is thread-safe (one at a time)."""

    def __init__(self, backend: str, path: Path, output: str, threads: int, optimize: bool,
                 limits: Limits = Limits()) -> None:
        self._open_msg = {"op": "open", "backend": backend, "path": str(Path(path).resolve()), "output": output,
                          "threads": threads, "optimize": optimize}
        self.name, self.limits = Path(path).name, limits
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.restarts = 0
        self.net_isolated = False
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        """Process id of the current worker (None between a failure and the next request)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        prefix = _net_prefix()
        code = (f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
                "from edge_eco.backends._worker import main; main(sys.argv[1:])")
        cmd = prefix + [sys.executable, "-I", "-c", code, str(self.limits.address_space_bytes),
                        str(self.limits.cpu_s)]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, env=env, close_fds=True, cwd="/")
        except OSError as exc:
            raise ModelLoadError(f"{self.name}: cannot start a sandboxed worker: {exc}") from exc
        self.net_isolated = bool(prefix)
        try:
            reply = self._call(self._open_msg, self.limits.start_timeout_s)
        except InferenceError as exc:
            raise ModelLoadError(f"{self.name}: the sandboxed worker failed while loading: {exc}") from exc
        if not reply.get("ok"):
            self._kill()
            raise ModelLoadError(f"{self.name} (sandboxed): {reply.get('message')}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _call(self, msg: dict, timeout_s: float) -> dict:
        """Send one request and wait for its reply; the caller holds the lock."""
        import msgpack

        proc = self._proc
        try:
            _worker.write_frame(proc.stdin, msg)
        except (BrokenPipeError, OSError):
            return self._failed("died before the request", proc)
        fd, deadline = proc.stdout.fileno(), time.monotonic() + timeout_s
        head = b""
        while len(head) < 4:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._kill()
                raise InferenceError(f"{self.name} (sandboxed): no answer within {timeout_s:g} s; the worker was "
                                     "killed and will be restarted")
            chunk = os.read(fd, 4 - len(head))
            if not chunk:
                return self._failed("died during the request", proc)
            head += chunk
        (n,) = _worker._LEN.unpack(head)
        body = _worker.read_exact(fd, n) if n <= _worker.MAX_FRAME_BYTES else b""
        if len(body) != n:
            return self._failed("sent a truncated reply", proc)
        return msgpack.unpackb(body, raw=False)

    def _failed(self, what: str, proc: subprocess.Popen) -> dict:
        rc = proc.wait(timeout=5) if proc.poll() is None else proc.returncode
        self._kill()
        how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit status {rc}"
        raise InferenceError(f"{self.name} (sandboxed): the worker {what} ({how}); it will be restarted")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._kill()  # died while idle (no request lost): restart it quietly
            if self._proc is None:
                if self._open_msg is None:
                    raise InferenceError(f"{self.name}: the session is closed")
                self.restarts += 1
                self._start()
            msg = {"op": "run", "feeds": {k: _worker.encode_array(np.ascontiguousarray(v)) for k, v in feeds.items()}}
            reply = self._call(msg, self.limits.run_timeout_s)
        if not reply.get("ok"):
            raise InferenceError(f"{self.name} (sandboxed): {reply.get('message')}")
        return _worker.decode_array(reply["out"])

    def close(self) -> None:
        with self._lock:
            self._open_msg = None
            if self._proc is not None:
                try:
                    self._call({"op": "close"}, 2.0)
                except BackendError:
                    pass
                self._kill()


def open(path: Path, *, output: str = "logits", threads: int = 1, optimize: bool = True,  # noqa: A001
         backend: str = "ort", limits: Limits = Limits()) -> IsolatedSession:
    """Load ``path`` with ``backend`` inside a sandboxed worker process.

    Raises:
        ModelLoadError: the worker cannot start, or the backend refused the file there.
    """
    return IsolatedSession(backend, path, output, threads, optimize, limits)

"""Governance changes across processes: one lock, write-ahead intents, reconciliation.

- **Lock.** Every change of a bundle's population (approve, rollback, the controller's
  auto-apply, challenger registration) runs holding an exclusive ``fcntl.flock`` on
  ``population/governance.lock``, so two ``edge-eco population`` processes cannot interleave
  their read-modify-write of ``ecology.toml`` (the kernel drops the lock when a process dies).
- **Intent.** Before the manifest swap, the audit entry is written (committed, ``synchronous=FULL``)
  with ``state='applying'`` and the sha256 of the manifest before and after; once the swap and its
  bookkeeping are done, the entry and the proposal become ``done``/``applied`` in one transaction.
- **Reconciliation** (under the lock, when a bundle is opened for a change): an entry left
  ``applying`` by a killed process is completed when the manifest on disk is the intended
  ``after`` (its proposal marked applied, its challenger promoted), marked ``failed`` when it is
  still ``before``, and ``failed`` with a note when the manifest is something else (changed by hand).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Iterator
from contextlib import contextmanager

from .errors import StoreError
from .store import Store


class GovernanceLock:
    """An exclusive inter-process lock on ``path`` (re-entrant within one object)."""

    def __init__(self, path: Path) -> None:
        self.path, self._fd, self._depth = Path(path), -1, 0

    @contextmanager
    def held(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Hold the lock for the ``with`` block.

        Raises:
            StoreError: the lock file cannot be opened, or another process held it ``timeout_s``.
        """
        if self._depth == 0:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot open the governance lock {self.path}: {exc}") from exc
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(self._fd)
                        raise StoreError(f"another process holds {self.path} (waited {timeout_s:.0f} s)") from None
                    time.sleep(0.01)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                os.close(self._fd)  # closing the descriptor releases the flock


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def begin(store: Store, *, who: str, action: str, capability: str, from_v: str | None, to_v: str | None,
          why: str, before: str | None = None, after: str | None = None, proposal_id: int | None = None,
          state: str = "applying") -> int:
    """Write an audit entry (an intent when ``state='applying'``); returns its id."""
    return store.execute("INSERT INTO audit (ts, who, action, capability, from_version, to_version, why, "
                         "manifest_before, manifest_after, state, proposal_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                         (time.time(), who, action, capability, from_v, to_v, why, before, after, state, proposal_id))


def finish_statements(audit_id: int, action: str, capability: str, version: str | None,
                      proposal_id: int | None, who: str) -> list[tuple[str, tuple]]:
    """The statements that complete an intent: audit done, proposal applied, challenger promoted."""
    now = time.time()
    out: list[tuple[str, tuple]] = [("UPDATE audit SET state='done' WHERE id=?", (audit_id,))]
    if proposal_id is not None:
        out.append(("UPDATE proposals SET status='applied', decided_by=?, decided_ts=? WHERE id=? "
                    "AND status='pending'", (who, now, proposal_id)))
    if action == "promote":
        out.append(("UPDATE challengers SET status='promoted', decided_ts=? WHERE capability=? AND version=?",
                    (now, capability, version)))
    return out


def reconcile(store: Store, manifest_path: Path) -> list[tuple[int, str]]:
    """Settle intents left ``applying`` by a process that died (see the module docstring).

    Returns:
        (audit id, new state) for every intent settled.
    """
    rows = store.query("SELECT id, who, action, capability, to_version, manifest_before, manifest_after, "
                       "proposal_id FROM audit WHERE state='applying' ORDER BY id")
    if not rows:
        return []
    current = sha256_bytes(manifest_path.read_bytes())
    settled = []
    for aid, who, action, cap, to_v, before, after, pid in rows:
        if current == after:
            store.transaction(finish_statements(aid, action, cap, to_v, pid, who)
                              + [("UPDATE audit SET why = why || ' [completed after a crash]' WHERE id=?", (aid,))])
            settled.append((aid, "done"))
        else:
            note = "the process died before completing it" if before is None else \
                "the process died before the swap" if current == before else \
                "the manifest is neither the intended before nor after"
            store.execute("UPDATE audit SET state='failed', why = why || ? WHERE id=?", (f" [failed: {note}]", aid))
            settled.append((aid, "failed"))
    return settled

"""Outcome memory: an embedded SQLite database in WAL mode. The only module that imports sqlite3.

Two ways in:

- **Asynchronous writes** (the request path): :meth:`Store.submit` puts a row on a bounded queue
  and returns at once; one writer thread commits rows in batches (one transaction per batch).
  When the queue is full the row is dropped and counted (``stats()["dropped"]``) rather than
  stall a request.
- **Synchronous calls** (governance, CLI, tests): :meth:`Store.execute` / :meth:`Store.query` on
  the caller's thread, serialised by a lock, each statement its own committed transaction.

**Acknowledged** means: :meth:`Store.flush` (or :meth:`Store.close`) has returned after the row
was submitted. Its transaction has then committed to the WAL, so the row survives a crash or
kill of the process (tested with SIGKILL). By default the writer runs ``synchronous=NORMAL``
(the WAL is fsynced at checkpoints, not at every commit), so a power loss may drop the last
acknowledged batches, never corrupt the file; ``power_safe=True`` makes every batch commit
with ``synchronous=FULL`` (an fsync per batch) and then an acknowledged row also survives a
power loss. Synchronous calls (governance: challengers, proposals, audit) always commit with
``synchronous=FULL``. A row submitted but not yet acknowledged may be lost if the process dies.

Retention is bounded by rows (``max_rows`` outcomes, oldest first; their feedback goes with
them, and a feedback row is only written for a stored outcome, so feedback never outnumbers
outcomes) and by bytes (``max_bytes``: the database file plus its WAL; after a retention pass
the freed pages are returned and the WAL is checkpointed and truncated, ``journal_size_limit``
keeps it near 1 MiB otherwise). The bound is enforced by the writer after a batch, so the file
may exceed it by about one batch between passes. Shadow pairs are bounded separately
(``max_pairs``).

Opening runs ``PRAGMA quick_check`` on files up to ``CHECK_MAX_BYTES`` (64 MiB; bigger files:
:meth:`Store.check`, which ``population status`` and export run) and refuses a damaged file with
:class:`~edge_eco.errors.StoreCorruptError`: its first quick_check lines and how to recover (move the
file aside; a fresh one is created on the next open).
``readonly=True`` opens the file with ``mode=ro`` (no write, no -shm created when the folder is
read-only: ``immutable``), for read commands on a read-only bundle or a full disk.

The schema is versioned with ``PRAGMA user_version`` and upgraded by the migrations of :mod:`edge_eco.store_schema`; a
database written by a newer edge_eco is refused.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import StoreCorruptError, StoreError
from .store_schema import _INSERT, MIGRATIONS, SCHEMA_VERSION  # noqa: F401 (re-exported)

WAL_LIMIT_BYTES = 1 << 20
CHECK_MAX_BYTES = 64 << 20  # quick_check at open up to this file size (see Store)
CORRUPT_LINES_SHOWN = 3
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes of a damaged file


@dataclass(frozen=True)
class Retention:
    """Bounds of the outcome memory (0 = unbounded)."""

    max_rows: int = 1_000_000
    max_bytes: int = 256 << 20
    max_pairs: int = 200_000


def migrate(conn: Any, target: int = SCHEMA_VERSION) -> int:
    """Bring an open database up to schema ``target``; returns the version it had.

    Raises:
        StoreError: the database is newer than this edge_eco, or a migration failed.
    """
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(f"outcome database has schema {found}; this edge_eco reads up to {SCHEMA_VERSION}")
        for version in range(found + 1, target + 1):
            with conn:  # one transaction per migration, version bump included
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
        return found
    except sqlite3.Error as exc:
        raise StoreError(f"migrating the outcome database failed: {exc}") from exc


def corrupt_error(path: Path, detail: str) -> StoreCorruptError:
    """The error for a damaged database: the first lines of ``detail`` (a quick_check report can run to
    hundreds) and how to recover."""
    lines = [ln.strip() for ln in detail.splitlines() if ln.strip() and not ln.startswith("*** in database")]
    shown = "; ".join(lines[:CORRUPT_LINES_SHOWN])
    if len(lines) > CORRUPT_LINES_SHOWN:
        shown += f"; ... {len(lines) - CORRUPT_LINES_SHOWN} more lines"
    return StoreCorruptError(
        f"outcome database {path} is corrupt: {shown}\n"
        f"  to recover: move it aside with its -wal and -shm files (mv {path} {path}.corrupt); the next command "
        "starts an empty one\n"
        "  lost with it: decisions, feedback, shadow pairs, challenger registrations, proposals, the audit log; "
        "the manifest, models and archive are kept (rollback works even before the move)")


def _is_corrupt(exc: BaseException) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _translate(exc: Exception, path: Path, what: str) -> StoreError:
    return corrupt_error(path, str(exc)) if _is_corrupt(exc) else StoreError(f"{what}: {exc}")


def _connect(path: Path, synchronous: str = "FULL") -> Any:
    try:
        conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: freed pages can be returned
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        # a checkpoint truncates the WAL back to this size, so the WAL stays small beside the file
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        return conn
    except sqlite3.Error as exc:
        raise _translate(exc, path, f"cannot open outcome database {path}") from exc


def _connect_ro(path: Path) -> Any:
    """A read-only connection (no file is created or written); ``immutable`` when the folder is
    read-only and the WAL's shared-memory file cannot be created."""
    if not path.is_file():  # nothing recorded yet: an empty database of the current schema
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        migrate(conn)
        return conn
    last: Exception | None = None
    for mode in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=10.0,
                                   check_same_thread=False, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            last = exc
    raise _translate(last, path, f"cannot open outcome database {path} read-only") from last


def quick_check(conn: Any, path: Path) -> None:
    """Run ``PRAGMA quick_check``. Raises StoreCorruptError naming ``path`` when the file is damaged."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        raise corrupt_error(path, str(exc)) from exc
    if rows != [("ok",)]:
        raise corrupt_error(path, "\n".join(str(r[0]) for r in rows))


class Store:
    """The outcome database of one ecology (see the module docstring for the guarantees).

    Args:
        path: the database file (created with its folder when missing).
        retention: bounds on rows and bytes.
        queue_rows: capacity of the write queue.
        batch_rows: the most rows committed in one transaction.
        linger_s: how long the writer waits for more rows before committing a batch.
        power_safe: fsync every batch (``synchronous=FULL``) so acknowledged rows survive power loss.

    Raises:
        StoreCorruptError: the file is not a database or is damaged. StoreError: it cannot be
            opened, or has a newer schema.
    """

    def __init__(self, path: str | Path, *, retention: Retention = Retention(), queue_rows: int = 10_000,
                 batch_rows: int = 512, linger_s: float = 0.01, power_safe: bool = False,
                 readonly: bool = False, check: bool = True) -> None:
        self.path = Path(path)
        self.retention, self._batch_rows, self._linger_s = retention, batch_rows, linger_s
        self.readonly = readonly
        self._lock = threading.Lock()
        self._counts = {"submitted": 0, "written": 0, "dropped": 0, "batches": 0, "deleted": 0}
        self._error: BaseException | None = None
        self._closed = False
        if readonly:
            self._conn = self._wconn = _connect_ro(self.path)
            self._check_schema(check)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc}") from exc
        self._conn = _connect(self.path)
        try:
            self._check_schema(check)
            migrate(self._conn)
        except StoreError:
            self._conn.close()
            raise
        self._wconn = _connect(self.path, "FULL" if power_safe else "NORMAL")
        self._queue: queue.Queue = queue.Queue(maxsize=queue_rows)
        self._hurry = threading.Event()  # flush() / close(): cut the writer's linger short
        self._writer = threading.Thread(target=self._run, name="edge_eco-store", daemon=True)
        self._writer.start()

    def _check_schema(self, check: bool) -> None:
        try:
            if check and self.path.is_file() and self.path.stat().st_size <= CHECK_MAX_BYTES:
                quick_check(self._conn, self.path)
            found = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, f"cannot read outcome database {self.path}") from exc
        if self.readonly and found > SCHEMA_VERSION:  # migrations only go forward: no command can read it
            raise StoreError(f"outcome database {self.path} has schema {found}, newer than this edge_eco "
                             f"reads ({SCHEMA_VERSION}); use the edge_eco that wrote it")
        if self.readonly and found != SCHEMA_VERSION:
            raise StoreError(f"outcome database {self.path} has schema {found}, this edge_eco reads "
                             f"{SCHEMA_VERSION}; open it once with a writing command to migrate it")

    def check(self) -> None:
        """``PRAGMA quick_check`` of the whole file, whatever its size. Raises StoreError when damaged."""
        with self._lock:
            quick_check(self._conn, self.path)

    # -- asynchronous writes -----------------------------------------------------------------
    def submit(self, kind: str, row: tuple | Callable[[], tuple]) -> bool:
        """Queue one row of ``kind`` (outcome, feedback, shadow) for the writer; never blocks.

        ``row`` may be a callable that builds the row in the writer thread (keeps serialisation
        off the request path). Returns False when the queue was full and the row was dropped.
        """
        if self._closed:
            raise StoreError("the outcome store is closed")
        if self.readonly:
            raise StoreError(f"outcome database {self.path} is open read-only")
        try:
            self._queue.put_nowait((kind, row))
        except queue.Full:
            self._counts["dropped"] += 1
            return False
        self._counts["submitted"] += 1
        return True

    def flush(self, timeout_s: float = 30.0) -> None:
        """Return once every row submitted before the call is committed (acknowledged).

        Raises:
            StoreError: the writer failed, or did not finish within ``timeout_s``.
        """
        if self.readonly:
            return
        done = threading.Event()
        self._queue.put(("flush", done), timeout=timeout_s)
        self._hurry.set()
        if not done.wait(timeout_s):
            raise StoreError(f"outcome store did not flush within {timeout_s} s")
        if self._error is not None:
            raise StoreError(f"outcome writer failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            # Linger so that a burst becomes one transaction (one fsync) rather than many, asleep on
            # an event that new rows do not set: a put wakes no one meanwhile, so a steady stream
            # costs the request threads one writer wake-up per linger instead of one per row (a
            # timed queue.get() here had woken the writer for every row: each answer paid a thread
            # switch and the interpreter lock, 1.29-1.30x p50 in tools/bench_population.py).
            if items[0][0] not in ("flush", "stop") and self._queue.qsize() < self._batch_rows:
                self._hurry.wait(self._linger_s)
            self._hurry.clear()
            while len(items) < self._batch_rows and items[-1][0] not in ("flush", "stop"):
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: dict[str, list[tuple]] = {}
            events, stop = [], False
            for kind, payload in items:
                if kind == "flush":
                    events.append(payload)
                elif kind == "stop":
                    events.append(payload)
                    stop = True
                else:
                    try:
                        rows.setdefault(kind, []).append(payload() if callable(payload) else payload)
                    except Exception as exc:  # a row that cannot be built is dropped, not fatal
                        self._counts["dropped"] += 1
                        self._error = exc
            if rows:
                self._write(rows)
            for event in events:
                event.set()
            if stop:
                return

    def _write(self, rows: dict[str, list[tuple]]) -> None:
        try:
            with self._wconn:
                # outcomes first: a feedback row is written only when its outcome exists
                for kind, batch in sorted(rows.items(), key=lambda kv: kv[0] != "outcome"):
                    n = self._wconn.executemany(_INSERT[kind], batch).rowcount
                    if kind == "feedback" and n < len(batch):  # for an outcome that is not (or no longer) stored
                        self._counts["orphan_feedback"] = self._counts.get("orphan_feedback", 0) + len(batch) - n
            self._counts["written"] += sum(len(b) for b in rows.values())
            self._counts["batches"] += 1
            # the byte bound is cheap to check (two pragmas): every batch; the row count every 16
            if self._counts["batches"] % 16 == 1 or (self.retention.max_bytes
                                                    and self.size_bytes(self._wconn) > self.retention.max_bytes):
                self._enforce_retention(self._wconn)
        except sqlite3.Error as exc:
            self._error = exc

    def _enforce_retention(self, conn: Any) -> None:
        r = self.retention
        with conn:
            if r.max_rows:
                n = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
                if n > r.max_rows:
                    self._delete_oldest(conn, n - r.max_rows)
            if r.max_pairs:
                n = conn.execute("SELECT count(*) FROM shadow").fetchone()[0]
                if n > r.max_pairs:
                    conn.execute("DELETE FROM shadow WHERE rowid IN (SELECT rowid FROM shadow ORDER BY ts LIMIT ?)",
                                 (n - r.max_pairs,))
            # feedback whose outcome is gone (or never came) is not kept: it counts in no bound
            conn.execute("DELETE FROM feedback WHERE request_id NOT IN (SELECT request_id FROM outcomes)")
        size = self.size_bytes(conn)
        if r.max_bytes and size > r.max_bytes:
            n = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
            with conn:  # down to 80 % of the bound, assuming rows of the average size
                self._delete_oldest(conn, max(1, int(n * (1 - 0.8 * r.max_bytes / size)) + 1))
            conn.executescript("PRAGMA incremental_vacuum;")  # run to completion (execute() frees one page)
        # the deletes went to the WAL: fold it into the file and truncate it (the bound counts both)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _delete_oldest(self, conn: Any, n: int) -> None:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (request_id TEXT)")
        conn.execute("DELETE FROM doomed")
        conn.execute("INSERT INTO doomed SELECT request_id FROM outcomes ORDER BY ts LIMIT ?", (n,))
        conn.execute("DELETE FROM feedback WHERE request_id IN (SELECT request_id FROM doomed)")
        conn.execute("DELETE FROM outcomes WHERE request_id IN (SELECT request_id FROM doomed)")
        self._counts["deleted"] += n

    def enforce_retention(self) -> None:
        """Apply the retention bounds now (the writer also does it every 16 batches)."""
        self.flush()
        with self._lock:
            try:
                self._enforce_retention(self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"retention failed: {exc}") from exc

    def size_bytes(self, conn: Any) -> int:
        """Bytes of the database's pages plus the WAL file (what ``max_bytes`` bounds)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            wal = Path(f"{self.path}-wal").stat().st_size
        except OSError:
            wal = 0
        return pages + wal

    # -- synchronous calls ---------------------------------------------------------------------
    def execute(self, sql: str, params: Iterable = ()) -> int:
        """Run one write statement in its own committed transaction; returns lastrowid.

        Raises:
            StoreError: SQLite refused it.
        """
        with self._lock:
            try:
                with self._conn:
                    return self._conn.execute(sql, tuple(params)).lastrowid
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "outcome store write failed") from exc

    def transaction(self, statements: Iterable[tuple[str, Iterable]]) -> list[int]:
        """Run write statements in one committed transaction (all or none); returns their rowcounts.

        Raises:
            StoreError: SQLite refused one (nothing of the transaction is kept).
        """
        with self._lock:
            try:
                with self._conn:
                    return [self._conn.execute(sql, tuple(params)).rowcount for sql, params in statements]
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "outcome store write failed") from exc

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """All rows of one read statement.

        Raises:
            StoreError: SQLite refused it.
        """
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "outcome store read failed") from exc

    def stats(self) -> dict[str, Any]:
        """Counters of the writer (submitted, written, dropped, batches, deleted) and the file size."""
        out = dict(self._counts)
        with self._lock:
            out["bytes"] = self.size_bytes(self._conn)
        out["queued"] = 0 if self.readonly else self._queue.qsize()
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit everything queued (acknowledging it), stop the writer, close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.readonly:
            self._conn.close()
            return
        done = threading.Event()
        self._queue.put(("stop", done), timeout=timeout_s)
        self._hurry.set()
        done.wait(timeout_s)
        self._writer.join(timeout_s)
        with self._lock:
            self._wconn.close()
            self._conn.close()
        if self._error is not None:
            raise StoreError(f"outcome writer failed: {self._error}") from self._error

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_s() -> float:
    """Wall-clock seconds (the stores' timestamps)."""
    return time.time()

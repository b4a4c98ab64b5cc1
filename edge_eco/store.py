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
them) and by bytes (``max_bytes``: the database file; SQLite reuses freed pages, so the file
stays near the bound without VACUUM). Shadow pairs are bounded separately (``max_pairs``).

The schema is versioned with ``PRAGMA user_version`` and upgraded by the migrations below; a
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

from .errors import StoreError

# Migration N takes a database at user_version N-1 to N. Never edit a shipped migration.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: decisions and feedback
        """CREATE TABLE outcomes (
            request_id TEXT PRIMARY KEY, ts REAL NOT NULL, path TEXT NOT NULL, label TEXT NOT NULL,
            confidence REAL NOT NULL, text_sha256 TEXT NOT NULL, text TEXT, models TEXT NOT NULL,
            total_us REAL, provenance BLOB NOT NULL)""",
        "CREATE INDEX outcomes_ts ON outcomes(ts)",
        "CREATE TABLE feedback (request_id TEXT PRIMARY KEY, label TEXT NOT NULL, ts REAL NOT NULL)",
    ),
    (  # 2: population governance
        """CREATE TABLE shadow (
            request_id TEXT NOT NULL, capability TEXT NOT NULL, champion TEXT NOT NULL,
            challenger TEXT NOT NULL, champion_label TEXT NOT NULL, challenger_label TEXT NOT NULL,
            champion_us REAL, challenger_us REAL, ts REAL NOT NULL,
            PRIMARY KEY (request_id, capability, challenger))""",
        "CREATE INDEX shadow_cap ON shadow(capability, challenger)",
        """CREATE TABLE challengers (
            capability TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL, folder TEXT NOT NULL,
            lineage TEXT NOT NULL, registered_ts REAL NOT NULL, decided_ts REAL,
            PRIMARY KEY (capability, version))""",
        """CREATE TABLE proposals (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, capability TEXT NOT NULL, kind TEXT NOT NULL,
            version TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL, status TEXT NOT NULL,
            decided_by TEXT, decided_ts REAL)""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
            capability TEXT NOT NULL, from_version TEXT, to_version TEXT, why TEXT NOT NULL,
            manifest_before TEXT, manifest_after TEXT)""",
        """CREATE TABLE archive (
            capability TEXT NOT NULL, version TEXT NOT NULL, entry TEXT NOT NULL, files TEXT NOT NULL,
            bytes INTEGER NOT NULL, parent TEXT, data_fingerprint TEXT, metrics TEXT NOT NULL,
            was_champion INTEGER NOT NULL, diversity REAL, archived_ts REAL NOT NULL, evicted INTEGER NOT NULL,
            PRIMARY KEY (capability, version))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = {
    "outcome": "INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?,?,?,?,?)",
    "feedback": "INSERT OR REPLACE INTO feedback VALUES (?,?,?)",
    "shadow": "INSERT OR REPLACE INTO shadow VALUES (?,?,?,?,?,?,?,?,?)",
}


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


def _connect(path: Path, synchronous: str = "FULL") -> Any:
    try:
        conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: freed pages can be returned
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open outcome database {path}: {exc}") from exc


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
        StoreError: the file cannot be opened, is not a database, or has a newer schema.
    """

    def __init__(self, path: str | Path, *, retention: Retention = Retention(), queue_rows: int = 10_000,
                 batch_rows: int = 512, linger_s: float = 0.01, power_safe: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc}") from exc
        self.retention, self._batch_rows, self._linger_s = retention, batch_rows, linger_s
        self._conn = _connect(self.path)
        try:
            migrate(self._conn)
        except StoreError:
            self._conn.close()
            raise
        self._wconn = _connect(self.path, "FULL" if power_safe else "NORMAL")
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_rows)
        self._counts = {"submitted": 0, "written": 0, "dropped": 0, "batches": 0, "deleted": 0}
        self._error: BaseException | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="edge_eco-store", daemon=True)
        self._writer.start()

    # -- asynchronous writes -----------------------------------------------------------------
    def submit(self, kind: str, row: tuple | Callable[[], tuple]) -> bool:
        """Queue one row of ``kind`` (outcome, feedback, shadow) for the writer; never blocks.

        ``row`` may be a callable that builds the row in the writer thread (keeps serialisation
        off the request path). Returns False when the queue was full and the row was dropped.
        """
        if self._closed:
            raise StoreError("the outcome store is closed")
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
        done = threading.Event()
        self._queue.put(("flush", done), timeout=timeout_s)
        if not done.wait(timeout_s):
            raise StoreError(f"outcome store did not flush within {timeout_s} s")
        if self._error is not None:
            raise StoreError(f"outcome writer failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            # Linger briefly so a burst becomes one transaction (one fsync) rather than many.
            until = time.monotonic() + self._linger_s
            while len(items) < self._batch_rows and items[-1][0] not in ("flush", "stop"):
                try:
                    items.append(self._queue.get(timeout=max(0.0, until - time.monotonic())))
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
                for kind, batch in rows.items():
                    self._wconn.executemany(_INSERT[kind], batch)
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
        size = self.size_bytes(conn)
        if r.max_bytes and size > r.max_bytes:
            n = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
            with conn:  # down to 80 % of the bound, assuming rows of the average size
                self._delete_oldest(conn, max(1, int(n * (1 - 0.8 * r.max_bytes / size)) + 1))
            conn.executescript("PRAGMA incremental_vacuum;")  # run to completion (execute() frees one page)

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

    @staticmethod
    def size_bytes(conn: Any) -> int:
        """Bytes of the database's pages (without the WAL)."""
        return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]

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
                raise StoreError(f"outcome store write failed: {exc}") from exc

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """All rows of one read statement.

        Raises:
            StoreError: SQLite refused it.
        """
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"outcome store read failed: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        """Counters of the writer (submitted, written, dropped, batches, deleted) and the file size."""
        out = dict(self._counts)
        with self._lock:
            out["bytes"] = self.size_bytes(self._conn)
        out["queued"] = self._queue.qsize()
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit everything queued (acknowledging it), stop the writer, close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        done = threading.Event()
        self._queue.put(("stop", done), timeout=timeout_s)
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

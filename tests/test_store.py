"""Outcome store: real SQLite (WAL), migrations, acknowledgement, retention, recorder, export."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

import edge_eco
from edge_eco.errors import RequestError, StoreCorruptError, StoreError
from edge_eco.outcomes import Recorder, export_batch
from edge_eco.store import SCHEMA_VERSION, Retention, Store, migrate

ROOT = Path(__file__).resolve().parent.parent


def _row(i: int, ts: float | None = None) -> tuple:
    return (f"r{i}", ts if ts is not None else float(i), "direct", "balance", 0.9, "0" * 64, None, "{}", 80.0,
            msgpack.packb({"request_id": f"r{i}"}))


def test_wal_mode_and_schema_version(tmp_path):
    with Store(tmp_path / "o.db") as s:
        assert s.query("PRAGMA journal_mode")[0][0] == "wal"
        assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3


def test_migrates_a_version_1_database_keeping_its_rows(tmp_path):
    conn = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    assert migrate(conn, target=1) == 0
    conn.execute("INSERT INTO outcomes VALUES (?,?,?,?,?,?,?,?,?,?)", _row(1))
    conn.close()
    with Store(tmp_path / "o.db") as s:
        assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert s.query("SELECT request_id FROM outcomes") == [("r1",)]
        assert s.query("SELECT count(*) FROM audit") == [(0,)]  # a version-2 table now exists


def test_refuses_a_newer_schema_and_a_file_that_is_not_a_database(tmp_path):
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema 99"):
        Store(tmp_path / "new.db")
    # read-only (population status): no writing command can migrate a newer file, so none is suggested
    with pytest.raises(StoreError, match=r"schema 99, newer than this edge_eco reads \(\d+\); use the edge_eco") as err:
        Store(tmp_path / "new.db", readonly=True)
    assert "writing command" not in str(err.value)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(tmp_path / "junk.db")
    assert (tmp_path / "junk.db").read_bytes() == b"this is not sqlite" * 100  # nothing overwritten


def test_flushed_rows_survive_a_sigkill(tmp_path):
    """Rows acknowledged by flush() are in the database after the process is killed."""
    script = f"""
import sys, time, msgpack
sys.path.insert(0, {str(ROOT)!r})
from edge_eco.store import Store
s = Store({str(tmp_path / 'o.db')!r})
for i in range(2000):
    s.submit("outcome", ("r%d" % i, float(i), "direct", "x", 0.5, "0"*64, None, "{{}}", 1.0, b""))
s.flush()
print("acknowledged", flush=True)
for i in range(2000, 100000):  # keeps writing, unacknowledged, until killed
    s.submit("outcome", ("r%d" % i, float(i), "direct", "x", 0.5, "0"*64, None, "{{}}", 1.0, b""))
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "acknowledged"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with Store(tmp_path / "o.db") as s:
        ids = {r[0] for r in s.query("SELECT request_id FROM outcomes")}
    assert {f"r{i}" for i in range(2000)} <= ids


def test_retention_by_rows_keeps_the_newest_and_drops_their_feedback(tmp_path):
    with Store(tmp_path / "o.db", retention=Retention(max_rows=100, max_bytes=0)) as s:
        for i in range(500):
            s.submit("outcome", _row(i))
            s.submit("feedback", (f"r{i}", "balance", float(i)))
        s.enforce_retention()
        assert s.query("SELECT count(*), min(ts) FROM outcomes") == [(100, 400.0)]
        assert s.query("SELECT count(*) FROM feedback") == [(100,)]


def test_retention_by_bytes_bounds_the_file(tmp_path):
    bound = 512 << 10
    with Store(tmp_path / "o.db", retention=Retention(max_rows=0, max_bytes=bound)) as s:
        blob = os.urandom(2000)
        for i in range(2000):  # ~4 MB offered
            s.submit("outcome", _row(i)[:-1] + (blob,))
        s.flush()
        size = s.stats()["bytes"]
        kept = s.query("SELECT count(*) FROM outcomes")[0][0]
    assert size <= bound * 1.25 and 0 < kept < 2000
    assert (tmp_path / "o.db").stat().st_size <= bound * 1.25


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    with Store(tmp_path / "o.db", queue_rows=4, batch_rows=1) as s:
        s.submit("outcome", lambda: time.sleep(0.3) or _row(0))  # keeps the writer busy
        t = time.perf_counter()
        results = [s.submit("outcome", _row(i)) for i in range(1, 50)]
        assert time.perf_counter() - t < 0.1
        s.flush()
        assert results.count(False) == s.stats()["dropped"] > 0


def test_recorder_stores_a_hash_not_the_text_unless_opted_in(tmp_path):
    text = "how much money is in my checking account"
    for opt_in in (False, True):
        store = Store(tmp_path / f"o{opt_in}.db")
        with edge_eco.open(ROOT / "models" / "clinc150") as eco:
            eco.attach_recorder(Recorder(store, store_text=opt_in))
            a = eco.answer(text, local_only=True)
            eco.feedback(a.provenance["request_id"], "balance")
            with pytest.raises(RequestError, match="label space"):
                eco.feedback(a.provenance["request_id"], "no_such_label")
            eco.recorder.flush()
            row = store.query("SELECT text, text_sha256, label, path, models FROM outcomes")[0]
            assert row[0] == (text if opt_in else None)
            assert row[1] == hashlib.sha256(text.encode()).hexdigest()
            assert row[2] == a.label == "balance" and row[3] == a.path
            assert "banking" in row[4]
            batch, last = export_batch(store)
        out = msgpack.unpackb(batch, raw=False)
        assert last == 1 and out["outcomes"][0]["feedback"] == "balance"
        assert out["outcomes"][0]["provenance"]["request_id"] == a.provenance["request_id"]
        assert "text" not in out["outcomes"][0]
        with pytest.raises(StoreError, match="closed"):
            store.submit("feedback", ("x", "y", 0.0))


def test_feedback_without_a_recorder_is_a_clear_error():
    with edge_eco.open(ROOT / "models" / "clinc150") as eco:
        with pytest.raises(RequestError, match="recorder"):
            eco.feedback("clinc150-x-1", "balance")


def test_the_byte_bound_covers_the_wal(tmp_path):
    bound = 512 << 10
    with Store(tmp_path / "o.db", retention=Retention(max_rows=0, max_bytes=bound)) as s:
        blob = os.urandom(2000)
        for i in range(2000):  # ~4 MB offered
            s.submit("outcome", _row(i)[:-1] + (blob,))
        s.flush()
        s.enforce_retention()
        wal = Path(f"{tmp_path / 'o.db'}-wal")
        on_disk = (tmp_path / "o.db").stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        assert s.stats()["bytes"] == on_disk
    assert on_disk <= bound * 1.25, on_disk


def test_a_database_damaged_mid_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "o.db"
    with Store(path) as s:
        for i in range(3000):
            s.submit("outcome", _row(i))
    data = bytearray(path.read_bytes())
    assert len(data) > 64 << 10
    page = 4096
    mid = (len(data) // page // 2) * page
    data[mid + 8: mid + page] = os.urandom(page - 8)  # a b-tree page's cells, not its header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=f"outcome database {path} is corrupt"):
        Store(path)


def test_feedback_in_the_same_batch_as_its_outcome_is_kept(tmp_path):
    """A batch may start with a feedback row and hold an outcome and its feedback: none is dropped."""
    with Store(tmp_path / "o.db", linger_s=0.2) as s:
        s.submit("outcome", _row(0))
        s.flush()
        s.submit("feedback", ("r0", "balance", 0.0))
        s.submit("outcome", _row(1))
        s.submit("feedback", ("r1", "balance", 1.0))
        s.flush()
        assert s.query("SELECT request_id FROM feedback ORDER BY request_id") == [("r0",), ("r1",)]
        assert "orphan_feedback" not in s.stats()


def test_the_writer_lingers_without_waking_per_row_and_flush_cuts_the_linger_short(tmp_path):
    # The writer sleeps through its linger on an event rows do not set (a timed queue.get had
    # woken it for every row: the request threads paid a thread switch each); flush() and close()
    # set it, so an acknowledgement never waits out a long linger.
    store = Store(tmp_path / "o.db", linger_s=30.0)
    try:
        for i in range(50):
            store.submit("feedback", (f"r{i}", "balance", float(i)))
        t0 = time.monotonic()
        store.flush()
        assert time.monotonic() - t0 < 5.0
        assert store.stats()["batches"] == 1  # one transaction for the 50 rows, then the flush
    finally:
        t0 = time.monotonic()
        store.close()
        assert time.monotonic() - t0 < 5.0

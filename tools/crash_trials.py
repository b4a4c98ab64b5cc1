"""Crash consistency: kill -9 a writer at random points, then check nothing acknowledged was lost
and nothing is torn.

    python tools/crash_trials.py --target manifest-swap [--trials 200] [--seed 0]
    python tools/crash_trials.py --target outcome-rows  [--trials 200]
    python tools/crash_trials.py --target signed-swap   [--trials 200]   # manifest + signature
    python tools/crash_trials.py --target MODULE:FACTORY [--trials 200]   # e.g. issue 7's store

A target is a factory ``make(folder) -> (write, check)``:

- ``write(i)`` performs the i-th write (an outcome row, a manifest swap) and returns only once it
  is durable: the harness acknowledges ``i`` after it returns.
- ``check(acked)`` runs after the crash in a fresh process state: raises AssertionError when an
  acknowledged write is missing (lost rows), a file is torn, or the folder no longer opens.

Each trial runs the writer in a child process that calls ``write(0), write(1), ...`` and reports
each acknowledgement on a pipe; the parent kills it with SIGKILL after a random delay, then runs
``check`` on what is on disk. A kill -9 tests atomicity and acknowledge-after-commit ordering (the
kernel keeps the page cache); power loss (fsync ordering) needs a real power cut or a block-level
fault injector.

Built-in targets show the harness on reference implementations until the real ones land:
``manifest-swap`` (write a temp file, fsync, ``os.replace``, fsync the folder; every version is
a signed-off bundle that must open) and ``outcome-rows`` (SQLite in WAL mode, synchronous=FULL).
``manifest-swap-naive`` rewrites in place and shows what a torn manifest looks like.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import select
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_swap(folder: Path, *, naive: bool = False):
    """Target: swap ecology.toml between versions that differ in a policy value (each a valid
    bundle); check that it opens and is exactly one of the versions written, the latest
    acknowledged one or a later one."""
    import edge_eco

    eco = folder / "eco"
    if not eco.exists():
        shutil.copytree(ROOT / "models" / "clinc150", eco)
    base = (ROOT / "models" / "clinc150" / "ecology.toml").read_text()
    found = re.search(r"^direct_threshold = [0-9.]+$", base, re.M)
    assert found, "ecology.toml has no direct_threshold line"
    key = found.group(0)

    def version(i: int) -> str:
        return base.replace(key, f"direct_threshold = {0.5 + (i % 400) / 1000:.3f}") + f"# version {i}\n" + "#" * (i % 977)

    def write(i: int) -> None:
        path = eco / "ecology.toml"
        if naive:
            path.write_text(version(i))
            return
        tmp = eco / "ecology.toml.tmp"
        with open(tmp, "w") as fh:
            fh.write(version(i))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(eco)

    def check(acked: list[int]) -> None:
        text = (eco / "ecology.toml").read_text()
        last = acked[-1] if acked else -1
        ok = text == base or any(text == version(i) for i in range(max(last, 0), last + 2))
        found = text.rsplit("# version ", 1)[-1].split("\n")[0] if "# version " in text else "none"
        assert ok, f"torn or stale manifest after ack {last}: {len(text)} bytes, version {found}"
        edge_eco.open(eco).close()
    return write, check


def outcome_rows(folder: Path):
    """Target: one row per write in SQLite (WAL, synchronous=FULL); check every acknowledged row."""
    db = folder / "outcomes.sqlite"

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE IF NOT EXISTS outcome (id INTEGER PRIMARY KEY, label TEXT NOT NULL)")
        return con
    con = [None]

    def write(i: int) -> None:
        if con[0] is None:
            con[0] = connect()
        with con[0]:
            con[0].execute("INSERT OR REPLACE INTO outcome VALUES (?, ?)", (i, f"label-{i}"))

    def check(acked: list[int]) -> None:
        c = connect()
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        have = {r[0] for r in c.execute("SELECT id FROM outcome")}
        lost = [i for i in acked if i not in have]
        assert not lost, f"{len(lost)} acknowledged rows lost (first {lost[:5]})"
        c.close()
    return write, check


def store_swap(folder: Path):
    """Target: issue 7's ``edge_eco.swap.swap_manifest`` (verify, then atomic write) between
    manifest versions that differ in one model's version and description length."""
    from dataclasses import replace

    import edge_eco
    from edge_eco.bundle import read_bundle
    from edge_eco.manifest import parse_manifest
    from edge_eco.swap import swap_manifest

    eco = folder / "eco"
    if not eco.exists():
        shutil.copytree(ROOT / "models" / "clinc150", eco)
    _, base = read_bundle(ROOT / "models" / "clinc150")

    def version(i: int):
        return replace(base, description=f"{base.description} v{i} " + "x" * (i % 977),
                       models=tuple(replace(m, version=str(i)) if m.id == "home" else m for m in base.models))

    def write(i: int) -> None:
        swap_manifest(eco, version(i))

    def check(acked: list[int]) -> None:
        got = parse_manifest((eco / "ecology.toml").read_text())  # a torn file fails to parse
        last = acked[-1] if acked else -1
        ok = got == base or any(got == version(i) for i in range(max(last, 0), last + 2))
        assert ok, f"torn or stale manifest after ack {last}: home version {got.model('home').version}"
        edge_eco.open(eco).close()
    return write, check


def signed_swap(folder: Path):
    """Target: governance swaps of a **signed** ecology (``swap_manifest`` with the device's
    governance key): the manifest and ``ecology.toml.sig`` change together. Check: the manifest is
    whole and one of the versions written, and the bundle opens under a trust that requires a
    valid signature (fleet key + device key)."""
    from dataclasses import replace

    import edge_eco
    from edge_eco.bundle import read_bundle
    from edge_eco.manifest import parse_manifest
    from edge_eco.signing import GovernanceSigner, Trust, generate_key, read_public_key, sign_bundle
    from edge_eco.swap import swap_manifest

    eco, keys = folder / "eco", folder / "keys"
    if not eco.exists():  # the parent sets up once; the writer children reuse the folder
        shutil.copytree(ROOT / "models" / "clinc150", eco)
        keys.mkdir()
        generate_key(keys / "fleet.key")
        generate_key(keys / "device.key")
        sign_bundle(eco, keys / "fleet.key")
    fleet, device = read_public_key(keys / "fleet.key.pub"), read_public_key(keys / "device.key.pub")
    trust = Trust((fleet, device), True, keys / "device.key")
    _, base = read_bundle(ROOT / "models" / "clinc150")
    signer = [None]

    def version(i: int):
        return replace(base, description=f"{base.description} v{i} " + "x" * (i % 977),
                       models=tuple(replace(m, version=str(i)) if m.id == "home" else m for m in base.models))

    def write(i: int) -> None:
        if signer[0] is None:
            signer[0] = GovernanceSigner(trust)
        swap_manifest(eco, version(i), signer=signer[0])

    def check(acked: list[int]) -> None:
        got = parse_manifest((eco / "ecology.toml").read_text())
        last = acked[-1] if acked else -1
        ok = got == base or any(got == version(i) for i in range(max(last, 0), last + 2))
        assert ok, f"torn or stale manifest after ack {last}: home version {got.model('home').version}"
        edge_eco.open(eco, trust=Trust((fleet, device))).close()  # signature of exactly these bytes
    return write, check


def store_rows(folder: Path, *, power_safe: bool = False):
    """Target: issue 7's ``edge_eco.store.Store``: an outcome row and its feedback submitted, then
    ``flush()`` (which returns once both are committed: the acknowledgement). Feedback alone would
    be dropped as orphan (the store keeps feedback only for a recorded request)."""
    from edge_eco.store import Store

    db = folder / "outcomes.sqlite"
    store = [None]

    def write(i: int) -> None:
        if store[0] is None:
            store[0] = Store(db, power_safe=power_safe)
        store[0].submit("outcome", (f"r{i}", float(i), "direct", f"label-{i}", 0.9, "0" * 64, None, "{}", 1.0,
                                    b"\x80"))
        store[0].submit("feedback", (f"r{i}", f"label-{i}", float(i)))
        store[0].flush()

    def check(acked: list[int]) -> None:
        with Store(db) as s:  # opens (and migrates) cleanly after the kill
            have = {r[0] for r in s.query("SELECT o.request_id FROM outcomes o JOIN feedback f USING (request_id)")}
        lost = [i for i in acked if f"r{i}" not in have]
        assert not lost, f"{len(lost)} acknowledged rows lost (first {lost[:5]})"
    return write, check


TARGETS = {"store-swap": store_swap, "signed-swap": signed_swap, "store-rows": store_rows,
           "store-rows-power-safe": lambda f: store_rows(f, power_safe=True), "manifest-swap": manifest_swap, "manifest-swap-naive": lambda f: manifest_swap(f, naive=True),
           "outcome-rows": outcome_rows}


def _factory(target: str):
    if target in TARGETS:
        return TARGETS[target]
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(target: str, folder: str, start: int) -> None:
    write, _ = _factory(target)(Path(folder))
    out = os.fdopen(os.dup(1), "w")
    out.write("ready\n")
    out.flush()
    i = start
    while True:
        write(i)
        out.write(f"{i}\n")
        out.flush()
        i += 1


def run_trials(target: str, trials: int, seed: int = 0, max_delay_s: float = 0.4) -> dict:
    """Run ``trials`` kill -9 trials of ``target``; returns counts of passes and failures."""
    rng = random.Random(seed)
    failures: list[str] = []
    acked_total = 0
    with tempfile.TemporaryDirectory(prefix="edge_eco-crash-") as tmp:
        folder = Path(tmp)
        _, check = _factory(target)(folder)
        acked: list[int] = []
        for t in range(trials):
            start = acked[-1] + 1 if acked else 0
            proc = subprocess.Popen([sys.executable, __file__, "--child", target, str(folder), str(start)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            fd, buf = proc.stdout.fileno(), ""
            while "\n" not in buf:  # "ready": the random delay starts once the writer is writing
                chunk = os.read(fd, 65536).decode() if select.select([fd], [], [], 120)[0] else ""
                if not chunk:
                    break
                buf += chunk
            if not buf.startswith("ready\n"):
                proc.kill()
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                failures.append(f"trial {t}: the writer did not start (exit {proc.wait()}): {err[0]}")
                proc.stdout.close()
                proc.stderr.close()
                continue
            buf = buf[len("ready\n"):]
            deadline = time.monotonic() + rng.uniform(0.0, max_delay_s)
            while (left := deadline - time.monotonic()) > 0:
                if select.select([fd], [], [], left)[0]:
                    chunk = os.read(fd, 65536).decode()
                    if not chunk:
                        break
                    buf += chunk
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            while chunk := os.read(fd, 65536).decode():
                buf += chunk
            proc.stdout.close()
            proc.stderr.close()
            acked += [int(x) for x in buf.split("\n")[:-1] if x]  # only complete lines were acknowledged
            try:
                check(acked)
            except AssertionError as exc:
                failures.append(f"trial {t}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a folder that no longer opens is a failure too
                failures.append(f"trial {t}: {type(exc).__name__}: {exc}")
        acked_total = len(acked)
    return {"trials": trials, "acked": acked_total, "failures": failures}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help=f"one of {sorted(TARGETS)} or MODULE:FACTORY")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run_trials(args.target, args.trials, args.seed)
    print(f"crash trials {args.target}: {r['trials']} kill -9 trials, {r['acked']} writes acknowledged, "
          f"{len(r['failures'])} failures")
    for f in r["failures"][:10]:
        print(f"  {f}")
    return 0 if not r["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())

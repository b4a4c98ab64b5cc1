"""Population governance under concurrency, crashes and bad input (real SQLite, files, processes).

Challengers here are fake-backend models (numpy ``.npz``) of the conftest ecology: the
governance machinery is the same as for ONNX models, and each test runs in about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from conftest import FAKE_MODELS, FAKE_SPEC, _weights
from edge_eco.bundle import read_bundle, sha256_file
from edge_eco.cli import main as cli
from edge_eco.errors import ManifestError, RequestError, StoreError
from edge_eco.manifest import Governance
from edge_eco.population import Population
from edge_eco.tomlwrite import manifest_to_toml

ROOT = Path(__file__).resolve().parent.parent


def challenger(tmp: Path, mid: str, version: str, *, gain: float = 9.0, n_out: int | None = None,
               featurizer: str = "", parent: str = "") -> Path:
    """A challenger folder for model ``mid`` of the fake ecology (another weight gain = another model)."""
    folder = tmp / f"ch-{mid}-{version}"
    folder.mkdir()
    w, b = _weights(FAKE_MODELS[mid], FAKE_SPEC.dim, gain)
    if n_out is not None:
        w, b = w[:, :n_out], b[:n_out]
    np.savez(folder / f"{mid}-{version}.npz", weight=w, bias=b)
    labels = list(FAKE_MODELS[mid])
    text = (f'[model]\nid = "{mid}"\nversion = "{version}"\nrole = "specialist"\nbackend = "fake"\n'
            f'path = "{mid}-{version}.npz"\nsha256 = "{sha256_file(folder / f"{mid}-{version}.npz")}"\n'
            f'input = "hashed-text"\ndecline_label = "not_mine"\nlabels = {json.dumps(labels)}\n'
            f'[model.calibration]\ntemperature = 1.0\n{featurizer}'
            f'[lineage]\nparent = "{parent}"\n')
    (folder / "challenger.toml").write_text(text)
    return folder


def with_governance(root: Path, **kw) -> None:
    _, m = read_bundle(root)
    (root / "ecology.toml").write_text(manifest_to_toml(replace(m, governance=Governance(**kw))))


def staged_proposal(root: Path, tmp: Path, mid: str, version: str = "2") -> int:
    """Register a challenger and record a pending promote proposal for it (as the controller would)."""
    with Population(root) as pop:
        pop.add_challenger(challenger(tmp, mid, version), who="test")
        return pop.propose(mid, "promote", version, "test evidence", {"n": 0}, now_s=0.0)


def cli_proc(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "edge_eco.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# -- 1. concurrency ----------------------------------------------------------------------------
def test_concurrent_approvals_keep_both_changes_and_apply_a_proposal_once(fake_ecology, tmp_path):
    with_governance(fake_ecology, cooldown_s=0.0)
    for trial in range(2):
        root = tmp_path / f"b{trial}"
        shutil.copytree(fake_ecology, root)
        (tmp_path / f"m{trial}").mkdir()
        p_money = staged_proposal(root, tmp_path / f"m{trial}", "money")
        p_travel = staged_proposal(root, tmp_path / f"m{trial}", "travel")
        procs = [cli_proc("population", "approve", str(root), str(p)) for p in (p_money, p_travel, p_money)]
        results = [(p.wait(60), p.stderr.read()) for p in procs]
        _, m = read_bundle(root)
        assert (m.model("money").version, m.model("travel").version) == ("2", "2"), results
        assert sorted(rc for rc, _ in results) == [0, 0, 2], results
        assert any("is applied, not pending" in err for _, err in results)
        with Population(root) as pop:
            promotes = [(r[4], r[10]) for r in pop.audit() if r[3] == "promote"]
            assert sorted(promotes) == [("money", "done"), ("travel", "done")]
        assert not list((root / "population" / "archive" / "objects").glob("*.tmp"))


# -- 2. stale proposals, cool-down -------------------------------------------------------------
def test_a_proposal_made_against_another_champion_is_refused(fake_ecology, tmp_path):
    with_governance(fake_ecology, cooldown_s=3600.0)
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    _, m = read_bundle(fake_ecology)  # a hand edit: another champion version
    edited = replace(m, models=tuple(replace(x, version="1b") if x.id == "money" else x for x in m.models))
    original = (fake_ecology / "ecology.toml").read_text()
    (fake_ecology / "ecology.toml").write_text(manifest_to_toml(edited))
    with Population(fake_ecology) as pop:
        with pytest.raises(StoreError, match=r"champion of 'money' is now v1b, the proposal was made against v1; "
                                             "review again"):
            pop.approve(pid, who="test")
        assert pop.proposal(pid).status == "pending"
    (fake_ecology / "ecology.toml").write_text(original)
    with Population(fake_ecology) as pop:
        pop.approve(pid, who="test")
        pop.add_challenger(challenger(tmp_path, "money", "3"), who="test")
        p3 = pop.propose("money", "promote", "3", "better", {}, now_s=0.0)
        with pytest.raises(StoreError, match="cool-down of 3600 s has not passed"):
            pop.approve(p3, who="test")
        assert pop.manifest.model("money").version == "2"


# -- 3. kill between the swap and the audit entry ------------------------------------------------
KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import edge_eco.swap as swap
from edge_eco.population import Population
real = swap.write_atomic
def dying(path, data):
    if {before!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
    os.kill(os.getpid(), signal.SIGKILL)  # after the swap, before the audit entry is completed
swap.write_atomic = dying
Population({bundle!r}).approve({pid}, who="killed")
"""


@pytest.mark.parametrize("before", [False, True], ids=["after-swap", "before-swap"])
def test_a_kill_around_the_swap_is_reconciled(fake_ecology, tmp_path, before):
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    proc = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT), bundle=str(fake_ecology), pid=pid,
                                                               before=before)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _, m = read_bundle(fake_ecology)
    assert m.model("money").version == ("1" if before else "2")
    with Population(fake_ecology, readonly=True) as pop:  # what the killed process left
        assert [r[10] for r in pop.audit() if r[3] == "promote"] == ["applying"]
    with Population(fake_ecology) as pop:  # opening for a change reconciles
        (entry,) = [r for r in pop.audit() if r[3] == "promote"]
        assert entry[10] == ("failed" if before else "done")
        assert pop.proposal(pid).status == ("pending" if before else "applied")
        if before:
            pop.approve(pid, who="again")
            assert pop.manifest.model("money").version == "2"
        else:
            assert "completed after a crash" in entry[7]
            with pytest.raises(StoreError, match="applied, not pending"):
                pop.approve(pid, who="again")
        assert [(r[5], r[6]) for r in pop.audit() if r[3] == "promote" and r[10] == "done"] == [("1", "2")]


# -- 4, 5, 7: staging -------------------------------------------------------------------------------
def test_staged_folders_are_relative_and_all_challengers_of_a_capability_are_shadowed(fake_ecology, tmp_path):
    with_governance(fake_ecology, shadow_rate=1.0, shadow_cpu_share=1.0)
    with Population(fake_ecology) as pop:
        pop.add_challenger(challenger(tmp_path, "money", "2", gain=9.0), who="test")
        pop.add_challenger(challenger(tmp_path, "money", "3", gain=6.0), who="test")
        assert {r[0] for r in pop.store.query("SELECT folder FROM challengers")} == \
            {"population/staged/money-2", "population/staged/money-3"}
    copy = tmp_path / "copy"
    shutil.copytree(fake_ecology, copy)
    shutil.rmtree(fake_ecology)
    with edge_eco.open(copy) as eco, Population(copy) as pop:
        assert all(c.folder.is_relative_to(copy) for c, _, _ in pop.challengers())
        rec = pop.attach(eco)
        for text in ("what is my balance", "transfer money to savings", "what is my balance please"):
            a = eco.answer(text, local_only=True)
            eco.feedback(a.provenance["request_id"], "balance")
        rec.flush()
        shadowed = {r[0] for r in pop.store.query("SELECT challenger FROM shadow WHERE capability='money'")}
    assert {s.split(":")[0] for s in shadowed} == {"2", "3"}


def test_a_challenger_with_the_wrong_output_size_or_featurizer_is_refused(fake_ecology, tmp_path):
    with Population(fake_ecology) as pop:
        with pytest.raises(ManifestError, match="gives 2 outputs for 3 labels"):
            pop.add_challenger(challenger(tmp_path, "money", "2", n_out=2), who="test")
        (tmp_path / "f").mkdir()
        with pytest.raises(ManifestError, match=r"\[featurizer\].*differs from the ecology's"):
            pop.add_challenger(challenger(tmp_path / "f", "money", "2", featurizer="[featurizer]\nseed = 8\n"),
                               who="test")
        assert pop.challengers(None) == [] and pop.audit() == []


def test_shadow_errors_are_counted_and_shown(fake_ecology, tmp_path, capsys):
    with_governance(fake_ecology, shadow_rate=1.0, shadow_cpu_share=1.0)
    with Population(fake_ecology) as pop:
        ch = pop.add_challenger(challenger(tmp_path, "money", "2"), who="test")
    # a broken file staged behind the store's back: feature indices out of its range
    np.savez(ch.folder / "money-2.npz", weight=np.zeros((16, 3), np.float32), bias=np.zeros(3, np.float32))
    with edge_eco.open(fake_ecology) as eco, Population(fake_ecology) as pop:
        rec = pop.attach(eco)
        eco.answer("what is my balance", local_only=True)
        rec.flush()
    assert cli(["population", "status", str(fake_ecology)]) == 0
    out = capsys.readouterr().out
    assert "2 (1 errors)" in out and "shadow errors: money v2: 1, last: InferenceError" in out


# -- 6. feedback -------------------------------------------------------------------------------------
def test_feedback_needs_a_recorded_string_request_id(fake_ecology):
    with edge_eco.open(fake_ecology) as eco, Population(fake_ecology) as pop:
        rec = pop.attach(eco)
        a = eco.answer("what is my balance", local_only=True)
        for bad in (None, 7):
            with pytest.raises(RequestError, match="must be a string"):
                eco.feedback(bad, "balance")
        with pytest.raises(RequestError, match="no recorded request 'nope'"):
            eco.feedback("nope", "balance")
        eco.feedback(a.provenance["request_id"], "transfer")
        eco.feedback(a.provenance["request_id"], "balance")  # last wins
        rec.store.submit("feedback", ("orphan", "balance", 0.0))  # bypassing the check: the writer drops it
        rec.flush()
        assert rec.store.query("SELECT request_id, label FROM feedback") == [(a.provenance["request_id"], "balance")]
        assert rec.store.stats()["orphan_feedback"] == 1
    with edge_eco.open(fake_ecology) as eco, Population(fake_ecology) as pop:
        pop.attach(eco)
        eco.feedback(a.provenance["request_id"], "balance")  # recorded by an earlier session: found in the store


# -- 8. diversity CLI ----------------------------------------------------------------------------------
def test_diversity_cli_rejects_bad_limits_and_unlabelled_files(fake_ecology, tmp_path, capsys):
    reqs = tmp_path / "r.jsonl"
    reqs.write_text('{"text": "what is my balance"}\n')
    for limit in ("0", "-5"):
        with pytest.raises(SystemExit) as exc:
            cli(["diversity", str(fake_ecology), "--requests", str(reqs), "--limit", limit])
        assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert cli(["diversity", str(fake_ecology), "--requests", str(reqs)]) == 2
    assert "no labelled requests" in capsys.readouterr().err
    lines = [{"text": t, "label": lab} for m in FAKE_MODELS.values() for lab, t in m.items() if lab != "not_mine"] * 4
    reqs.write_text("\n".join(json.dumps(x) for x in lines + [{"text": "hello", "label": "nonsense"}]) + "\n")
    assert cli(["diversity", str(fake_ecology), "--requests", str(reqs), "--limit", "20"]) == 0
    assert "warning: 1 of 37 labelled requests skipped" in capsys.readouterr().out


# -- 9. read-only bundle ---------------------------------------------------------------------------------
def test_read_commands_work_on_a_read_only_bundle(fake_ecology, tmp_path):
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    with Population(fake_ecology) as pop:
        pop.approve(pid, who="test")
    base = Path(tempfile.mkdtemp(prefix="edge-eco-ro-"))
    try:
        shutil.copytree(fake_ecology, base / "fake")
        commands = "('status', 'audit', 'archive', 'challengers', 'proposals')"
        script = f"import os, sys; sys.path.insert(0, {str(ROOT)!r})\nimport edge_eco.cli, edge_eco.population\n"
        if os.geteuid() == 0:  # root ignores permissions: run the commands as nobody
            os.chmod(base, 0o755)
            for p in [base / "fake", *(base / "fake").rglob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            # Import what the commands use first: nobody may not read root's Python installation.
            script += "edge_eco.cli.build_parser(); import edge_eco.store, edge_eco.cli_population\n"
            script += "os.setgid(65534); os.setuid(65534)\n"
        else:
            for p in [*(base / "fake").rglob("*"), base / "fake"][::-1]:
                os.chmod(p, 0o555 if p.is_dir() else 0o444)
        script += (f"sys.exit(sum(edge_eco.cli.main(['population', c, {str(base / 'fake')!r}]) for c in {commands}))")
        before = sorted(p.name for p in (base / "fake" / "population").iterdir())
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "promote" in proc.stdout and "outcome memory: 0 decisions" in proc.stdout
        assert sorted(p.name for p in (base / "fake" / "population").iterdir()) == before  # nothing created
        write = script.rsplit("\n", 1)[0] + f"\nsys.exit(edge_eco.cli.main(['population', 'rollback', {str(base / 'fake')!r}, 'money']))"
        proc = subprocess.run([sys.executable, "-c", write], capture_output=True, text=True, timeout=60)
        print(proc.stderr)
        assert proc.returncode == 2 and proc.stderr.startswith("edge-eco population rollback: error: ")
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(base)


# -- 10. rollback from a damaged archive -------------------------------------------------------------------
def test_rollback_from_a_corrupt_or_missing_archive_object_names_it(fake_ecology, tmp_path, capsys):
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    with Population(fake_ecology) as pop:
        pop.approve(pid, who="test")
        old = pop.archive.get("money", "1").files[0]
    (fake_ecology / old.path).unlink()
    obj = fake_ecology / "population" / "archive" / "objects" / old.sha256
    obj.write_bytes(obj.read_bytes()[:-10] + b"corrupted!")
    before = (fake_ecology / "ecology.toml").read_bytes()
    assert cli(["population", "rollback", str(fake_ecology), "money"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-eco population rollback: error: archive object") and old.sha256 in err
    assert "is corrupt" in err
    assert not (fake_ecology / old.path).exists() and not list(fake_ecology.glob(".*.tmp"))
    assert (fake_ecology / "ecology.toml").read_bytes() == before
    obj.unlink()
    assert cli(["population", "rollback", str(fake_ecology), "money"]) == 2
    assert "is missing" in capsys.readouterr().err
    assert cli(["population", "rollback", str(fake_ecology), "money", "--to", "2"]) == 2
    assert "money v2 is already the champion" in capsys.readouterr().err


# -- 11. a damaged outcome database ---------------------------------------------------------------------
def _damage(db: Path) -> None:
    """4 KiB of (seeded) random bytes over page 2, the pointer map: quick_check then reports a line per page."""
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(np.random.default_rng(7).bytes(4096))


def test_a_corrupt_outcome_database_blocks_only_what_needs_it_and_rollback_still_works(fake_ecology, tmp_path,
                                                                                       capsys):
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    with Population(fake_ecology) as pop:
        pop.approve(pid, who="test")  # money v1 -> v2, both archived
    db = fake_ecology / "population" / "outcomes.db"
    _damage(db)
    for args in (["proposals", str(fake_ecology), "--review"], ["approve", str(fake_ecology), "1"]):
        assert cli(["population", *args]) == 2
        first, *advice = capsys.readouterr().err.rstrip("\n").split("\n")
        assert first.startswith(f"edge-eco population {args[0]}: error: outcome database {db} is corrupt: Failed")
        assert first.count("; ") == 3 and first.endswith(" more lines")  # 3 quick_check lines, then a count
        assert len(advice) == 2 and f"(mv {db} {db}.corrupt)" in advice[0]
    # the emergency path: restore the archived champion, say the audit entry could not be written
    assert cli(["population", "rollback", str(fake_ecology), "money"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "money: rolled back from v2 to archived champion v1"
    assert out[1].startswith("warning: the audit log could not be written (the outcome database is damaged); "
                             "not recorded: rollback money v2 -> v1 by ")
    assert read_bundle(fake_ecology)[1].model("money").version == "1"
    with edge_eco.open(fake_ecology) as eco:
        assert eco.answer("what is my balance", local_only=True).provenance["models"]["money"].startswith("1:")
    # moved aside as the error says: a fresh database takes the archive's index from index.json
    for name in ("outcomes.db", "outcomes.db-wal", "outcomes.db-shm"):
        if (db.parent / name).exists():
            (db.parent / name).rename(db.parent / f"{name}.corrupt")
    with Population(fake_ecology) as pop:
        assert sorted((a.version, a.was_champion) for a in pop.archive.list("money")) == [("1", True), ("2", True)]
        assert pop.audit() == []
        assert pop.rollback("money", who="test") == "2"


def test_rollback_with_a_corrupt_database_and_no_archive_index_says_why(fake_ecology, tmp_path, capsys):
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    with Population(fake_ecology) as pop:
        pop.approve(pid, who="test")
    (fake_ecology / "population" / "archive" / "index.json").unlink()  # an archive made before the file
    _damage(fake_ecology / "population" / "outcomes.db")
    before = (fake_ecology / "ecology.toml").read_bytes()
    assert cli(["population", "rollback", str(fake_ecology), "money"]) == 2
    assert "the outcome database is damaged and the archive has no index.json" in capsys.readouterr().err
    assert (fake_ecology / "ecology.toml").read_bytes() == before


# -- 12. cosmetics --------------------------------------------------------------------------------------
def test_audit_text_names_a_missing_parent(fake_ecology, tmp_path):
    with Population(fake_ecology) as pop:
        pop.add_challenger(challenger(tmp_path, "money", "2"), who="test")
        assert pop.audit()[0][7].endswith("(parent none)")

"""Model files changed on disk under a running process (edge_eco/ondisk.py).

1. A model file changed after the ecology was opened is hashed again before it loads and refused
   when it no longer matches; the same bytes under a new inode load.
2. Every write the runtime makes into a bundle (governance swaps, archive restores, staging,
   router files, signatures) creates a new file and renames it: a file another process may have
   memory-mapped is never rewritten in place. Checked by holding every file open before the
   operation and reading it back through the held descriptor afterwards.
3. A real ONNX Runtime session keeps answering after the runtime's own writes replaced its files
   (the mapping holds the old inode), in a child process that a SIGBUS would kill.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from conftest import DATA, MODELS, ROOT
from edge_eco.errors import IntegrityError
from edge_eco.ondisk import FileGuard
from edge_eco.population import Population
from edge_eco.routerfile import write_router
from edge_eco.signing import Trust, generate_key, sign_bundle
from test_governance import staged_proposal, with_governance, challenger


def _replace_via_rename(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


@pytest.fixture()
def clinc(tmp_path: Path) -> Path:
    dst = tmp_path / "clinc150"
    shutil.copytree(MODELS / "clinc150", dst)
    return dst


def test_a_model_changed_on_disk_after_open_is_refused_before_it_maps(clinc):
    with edge_eco.open(clinc) as eco:
        assert isinstance(eco.before_load.__self__, FileGuard)
        _replace_via_rename(clinc / "home.onnx.data", clinc / "travel.onnx.data")  # a valid model, the wrong one
        with pytest.raises(IntegrityError, match="'travel.onnx.data' changed on disk after the ecology was opened"):
            eco.predict_with("travel", "book a flight")
        assert "travel" not in eco.residency.resident()
        (clinc / "work.onnx").unlink()
        with pytest.raises(IntegrityError, match="'work.onnx' cannot be read at load"):
            eco.predict_with("work", "schedule a meeting")
        _replace_via_rename(MODELS / "clinc150" / "banking.onnx.data", clinc / "banking.onnx.data")  # same bytes
        assert eco.predict_with("banking", "what is my balance").label == "balance"
        a = eco.answer("book a flight to paris for tomorrow", local_only=True)  # the others answer
        assert "changed on disk" in a.provenance["model_errors"]["travel"]


def test_an_in_place_rewrite_with_its_mtime_set_back_is_refused(clinc):
    """A trial's case: the weights rewritten in place with the same size and the mtime restored;
    the model, not loaded at the time, answered from the damaged weights at its next load."""
    weights = clinc / "banking.onnx.data"
    with edge_eco.open(clinc) as eco:
        assert eco.predict_with("banking", "what is my balance").label == "balance"
        eco.residency.close()  # evicted: the next request loads it again
        before = os.stat(weights)
        with open(weights, "r+b") as fh:
            fh.write(bytes(before.st_size))  # zeros, same size, same inode
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (os.stat(weights).st_size, os.stat(weights).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        with pytest.raises(IntegrityError, match="'banking.onnx.data' changed on disk after the ecology was opened"):
            eco.predict_with("banking", "what is my balance")


def test_a_signed_bundle_loads_its_generalist_at_the_budget_that_works_unsigned(clinc, tmp_path):
    """The hash before each load of a signed bundle ran inside the load's measurement and left
    ~1 MiB of read buffers in the heap, charged to the model: the generalist was locked out of a
    10.4 MB budget that works unsigned (a trial; 101 of these 424 requests lost it before the fix).
    The check now runs before the measurement (Residency(check=...))."""
    from edge_eco.datasets import load_clinc150

    texts = [e.text for e in load_clinc150(DATA / "clinc150" / "data_full.json", "test")][::13]
    public = generate_key(tmp_path / "k")
    sign_bundle(clinc, tmp_path / "k")
    with edge_eco.open(clinc, trust=Trust(keys=(public,)), budget_bytes=10_400_000) as eco:
        lost = [t for t in texts if "generalist" in eco.answer(t, local_only=True).provenance.get("model_errors", {})]
        assert eco.residency.stats.loads >= 11 and "generalist" in eco.residency.stats.measured
    assert len(texts) == 424 and lost == []


class Held:
    """Every file under ``root`` opened for reading, with its inode and sha256, before an operation."""

    def __init__(self, root: Path) -> None:
        self.files = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.startswith("outcomes.db") and p.name != "governance.lock":
                fd = os.open(p, os.O_RDONLY)
                self.files[p] = (fd, os.fstat(fd).st_ino, hashlib.sha256(p.read_bytes()).hexdigest())

    def rewritten_in_place(self) -> list[str]:
        """Files whose old inode now holds other bytes (what a mapping of it would see)."""
        bad = []
        for p, (fd, ino, sha) in self.files.items():
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            if hashlib.sha256(b"".join(chunks)).hexdigest() != sha:
                bad.append(p.name)
            os.close(fd)
        return bad


def test_governance_staging_router_and_signing_never_rewrite_a_file_in_place(fake_ecology, tmp_path):
    with_governance(fake_ecology, cooldown_s=0.0)
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    generate_key(tmp_path / "k")
    sign_bundle(fake_ecology, tmp_path / "k")
    held = Held(fake_ecology)
    with Population(fake_ecology) as pop:
        (fake_ecology / "ecology.toml.sig").unlink()  # governance of an unsigned bundle here
        pop.approve(pid, who="test")
        (fake_ecology / "money.npz").unlink()  # the archived champion's file comes back by restore
        assert pop.rollback("money", who="test") == "1"
        staged = tmp_path / "again"
        staged.mkdir()
        pop.add_challenger(challenger(staged, "money", "2", gain=7.0), who="test")  # other bytes, same name
    sign_bundle(fake_ecology, tmp_path / "k")
    write_router(fake_ecology / "router.bin", "linear-softmax",
                 {"weight": np.ones((4, 3), np.int8), "scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)})
    assert held.rewritten_in_place() == []
    assert not list(fake_ecology.rglob("*.tmp"))


CHILD = """
import os, sys
sys.path.insert(0, {root!r})
import edge_eco
from edge_eco.swap import copy_atomic
bundle = {bundle!r}
eco = edge_eco.open(bundle)
before = eco.predict_with("banking", "what is my checking account balance").label
# the runtime's own replacement of the mapped weights (a restore of other bytes under the name)
copy_atomic(os.path.join(bundle, "travel.onnx.data"), os.path.join(bundle, "banking.onnx.data"))
after = eco.predict_with("banking", "what is my checking account balance").label  # still mapped
print(before, after, flush=True)
"""


def test_a_loaded_model_keeps_answering_after_the_runtime_replaced_its_file(clinc):
    r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), bundle=str(clinc))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # a SIGBUS would be returncode -7
    assert r.stdout.split() == ["balance", "balance"]


def test_a_cold_model_rewritten_in_place_is_refused_when_it_would_warm_again(clinc):
    """A trial's case: a model demoted to cold (its file pages dropped, its session kept) had its
    weights rewritten in place; warming it faulted the new bytes in and it answered 'oos' (declined,
    0.99) where it had answered 'balance'. Its files are now checked on the way back to hot."""
    with edge_eco.open(clinc, budget_bytes=int(2.6 * 2**20), excluded=frozenset({"generalist"})) as eco:
        for m, q in [("banking", "what is my balance"), ("travel", "book a flight"), ("home", "turn on the lights")]:
            assert eco.predict_with(m, q).label in ("balance", "book_flight", "smart_home")
        assert eco.stats()["cold"] == ["banking"]  # three 1 MiB specialists in 2.6 MiB: the oldest went cold
        with open(clinc / "banking.onnx.data", "r+b") as fh:  # same size, same inode: a mapping would see it
            fh.write((clinc / "credit_cards.onnx.data").read_bytes())
        with pytest.raises(IntegrityError, match="'banking.onnx.data' changed on disk after the ecology was opened"):
            eco.predict_with("banking", "what is my balance")
        st = eco.stats()
        assert "banking" not in st["resident"] and st["resident_bytes"] <= int(2.6 * 2**20)
        assert eco.predict_with("travel", "book a flight").label == "book_flight"  # the others still answer


def test_a_refused_permission_is_not_called_a_removal():
    """A trial's chmod 000 on a model file read "cannot be read at load (Permission denied): it was
    removed or replaced after the ecology was opened"."""
    import errno

    from edge_eco.ondisk import gone_since_open
    assert gone_since_open(PermissionError(errno.EACCES, "Permission denied")) == \
        ": its permissions changed after the ecology was opened"
    assert gone_since_open(FileNotFoundError(errno.ENOENT, "No such file or directory")) == \
        ": it was removed or replaced after the ecology was opened"

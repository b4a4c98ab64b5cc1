"""Governance changes of a signed ecology (real Ed25519 keys via PyNaCl, real processes killed).

A promote or rollback rewrites ``ecology.toml``; on a signed ecology the device's governance key
(named in its trust file) signs the new manifest, written with it so that the pair on disk
verifies at every instant. Without that key the change is refused before anything changes.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import edge_eco
from conftest import ROOT
from edge_eco.bundle import read_bundle
from edge_eco.cli import main as cli
from edge_eco.errors import SignatureError
from edge_eco.population import Population
from edge_eco.signing import SIGNATURE_NAME, Trust, generate_key, load_trust, sign_bundle
from test_governance import staged_proposal, with_governance

sys.path.insert(0, str(ROOT / "tools"))
from crash_trials import run_trials  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, bytes]]:
    d = tmp_path_factory.mktemp("keys")
    return {name: (d / f"{name}.key", generate_key(d / f"{name}.key")) for name in ("fleet", "device", "stranger")}


def trust_file(folder: Path, keys, *, trusted=("fleet", "device"), governance: str | None = "device") -> Path:
    lines = ["require_signature = true"]
    if governance:
        lines.append(f'governance_key = "{keys[governance][0]}"')
    for name in trusted:
        lines += ["[[keys]]", f'name = "{name}"', f'ed25519 = "{base64.b64encode(keys[name][1]).decode()}"']
    path = folder / f"trust-{'-'.join(trusted)}-{governance}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def signed(fake_ecology, keys, tmp_path) -> tuple[Path, int]:
    """The conftest ecology with no cool-down, a pending promote of money v2, signed by the fleet."""
    with_governance(fake_ecology, cooldown_s=0.0)
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    sign_bundle(fake_ecology, keys["fleet"][0])
    return fake_ecology, pid


def reader(keys) -> Trust:
    """What a serving process on the device trusts: the fleet key and the device's governance key."""
    return Trust((keys["fleet"][1], keys["device"][1]))


def snapshot(root: Path) -> dict:
    """Every file of the bundle (not the store) and the governance state: what must not change."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and "outcomes.db" not in p.name and p.name != "governance.lock"}
    with Population(root, readonly=True) as pop:
        return {"files": files, "audit": pop.audit(), "proposals": [(p.id, p.status) for p in pop.proposals()]}


def test_promote_and_rollback_re_sign_with_the_governance_key(signed, keys, tmp_path):
    root, pid = signed
    with Population(root, trust=trust_file(tmp_path, keys)) as pop:
        pop.approve(pid, who="test")
    sig = (root / SIGNATURE_NAME).read_text()
    assert "[[signatures]]" not in sig and base64.b64encode(keys["device"][1]).decode() in sig
    with edge_eco.open(root, trust=reader(keys)) as eco:
        assert eco.manifest.model("money").version == "2"
    with pytest.raises(SignatureError, match="not a trusted key"):  # the fleet alone does not trust the device
        edge_eco.open(root, trust=Trust((keys["fleet"][1],))).close()
    with Population(root, trust=trust_file(tmp_path, keys)) as pop:
        assert pop.rollback("money", who="test") == "1"
        assert [(r[3], r[10]) for r in pop.audit() if r[3] in ("promote", "rollback")] == \
            [("promote", "done"), ("rollback", "done")]
    with edge_eco.open(root, trust=reader(keys)) as eco:
        assert eco.manifest.model("money").version == "1"
        assert eco.predict_with("money", "what is my balance").label in eco.manifest.model("money").labels


@pytest.mark.parametrize("setup, message", [
    ("no trust", "ecology.toml is signed and a change would void its signature"),
    ("no governance key", "names no governance_key"),
    ("untrusted governance key", "is not one of the trusted keys"),
    ("manifest edited", "signature does not match ecology.toml"),
    ("signature removed", "requires a signed ecology"),
])
def test_a_change_without_a_usable_key_is_refused_and_changes_nothing(signed, keys, tmp_path, setup, message):
    root, pid = signed
    trust = {"no trust": None, "no governance key": trust_file(tmp_path, keys, governance=None),
             "untrusted governance key": trust_file(tmp_path, keys, trusted=("fleet",), governance="device")
             }.get(setup, trust_file(tmp_path, keys))
    if setup == "manifest edited":  # a change must never launder an edit by re-signing it
        p = root / "ecology.toml"
        p.write_text(p.read_text().replace("auto_apply", "# edited\nauto_apply", 1))
    if setup == "signature removed":
        (root / SIGNATURE_NAME).unlink()
    before = snapshot(root)
    with Population(root, trust=trust) as pop:
        with pytest.raises(SignatureError, match=f"promote refused, nothing changed.*{message}"):
            pop.approve(pid, who="test")
    assert snapshot(root) == before  # manifest, signature, model files, archive, audit, proposal


def test_rollback_without_the_key_is_refused_up_front(signed, keys, tmp_path):
    root, pid = signed
    with Population(root, trust=trust_file(tmp_path, keys)) as pop:
        pop.approve(pid, who="test")
    before = snapshot(root)
    with Population(root) as pop:
        with pytest.raises(SignatureError, match="rollback refused, nothing changed"):
            pop.rollback("money", who="test")
    assert snapshot(root) == before


def test_an_unsigned_ecology_under_an_optional_trust_changes_unsigned(fake_ecology, keys, tmp_path):
    with_governance(fake_ecology, cooldown_s=0.0)
    pid = staged_proposal(fake_ecology, tmp_path, "money")
    t = load_trust(trust_file(tmp_path, keys))
    with Population(fake_ecology, trust=Trust(t.keys, False, t.governance_key)) as pop:
        pop.approve(pid, who="test")
    assert not (fake_ecology / SIGNATURE_NAME).exists()
    assert read_bundle(fake_ecology)[1].model("money").version == "2"


def test_cli_approve_needs_the_trust_with_the_governance_key(signed, keys, tmp_path, capsys):
    root, pid = signed
    assert cli(["population", "approve", str(root), str(pid)]) == 2
    assert "promote refused, nothing changed" in capsys.readouterr().err
    assert cli(["population", "approve", str(root), str(pid), "--trust", str(trust_file(tmp_path, keys))]) == 0
    assert cli(["info", str(root), "--trust", str(trust_file(tmp_path, keys))]) == 0
    assert "signature verified" in capsys.readouterr().out


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from edge_eco import swap
from edge_eco.population import Population
real, calls = swap.write_atomic, [0]
def dying(path, data):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
swap.write_atomic = dying
import edge_eco.signing  # writes its signature through swap.write_atomic too
Population({bundle!r}, trust={trust!r}).approve({pid}, who="killed")
os.kill(os.getpid(), signal.SIGKILL)  # after every write, before the audit entry is completed
"""


@pytest.mark.parametrize("kill_at, version", [(1, "1"), (2, "1"), (3, "2"), (4, "2")],
                         ids=["before-any-write", "both-signatures-written", "manifest-written", "all-written"])
def test_a_kill_at_each_step_of_a_signed_swap_leaves_a_verifying_pair(signed, keys, tmp_path, kill_at, version):
    """Writes: 1 signature file with both signatures, 2 manifest, 3 signature file with the new one."""
    root, pid = signed
    trust = str(trust_file(tmp_path, keys))
    proc = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT), bundle=str(root), pid=pid,
                                                               kill_at=kill_at, trust=trust)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with edge_eco.open(root, trust=reader(keys)) as eco:  # opens: the signature covers these bytes
        assert eco.manifest.model("money").version == version
    assert ("[[signatures]]" in (root / SIGNATURE_NAME).read_text()) == (kill_at in (2, 3))
    with Population(root, trust=trust) as pop:  # reconciles the intent; the next change re-signs cleanly
        assert pop.proposal(pid).status == ("applied" if version == "2" else "pending")
        if version == "1":
            pop.approve(pid, who="again")
        else:
            pop.rollback("money", who="again")
    assert "[[signatures]]" not in (root / SIGNATURE_NAME).read_text()
    edge_eco.open(root, trust=reader(keys)).close()
    assert not list(root.glob(".ecology.toml*.tmp"))


def test_signed_swaps_survive_random_kill_9():
    r = run_trials("signed-swap", 3, seed=2, max_delay_s=0.5)
    assert r["failures"] == [] and r["acked"] > 0

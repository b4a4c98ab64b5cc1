"""Signed populations: a bundle signed with `edge-eco sign` opens under a trust that requires it;
any tampering, a wrong key or a missing signature refuses to open (real Ed25519 via PyNaCl)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

import edge_eco
from edge_eco.bundle import sha256_file
from edge_eco.cli import main
from edge_eco.errors import IntegrityError, ManifestError
from edge_eco.signing import SIGNATURE_NAME, SignatureError, Trust, generate_key, load_trust, sign_bundle

from conftest import MODELS

BUNDLE = MODELS / "clinc150"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, bytes, Path, bytes]:
    d = tmp_path_factory.mktemp("keys")
    return d / "fleet.key", generate_key(d / "fleet.key"), d / "other.key", generate_key(d / "other.key")


@pytest.fixture()
def signed(tmp_path: Path, keys) -> Path:
    dst = tmp_path / "clinc150"
    shutil.copytree(BUNDLE, dst)
    sign_bundle(dst, keys[0])
    return dst


def _swap_labels(folder: Path) -> None:
    """Swap two labels of the banking specialist: every file hash still matches."""
    p = folder / "ecology.toml"
    text = p.read_text()
    start = text.index('id = "banking"')
    i, j = text.index('"balance"', start), text.index('"bill_balance"', start)
    assert i < j
    p.write_text(text[:i] + '"bill_balance"' + text[i + 9:j] + '"balance"' + text[j + 14:])


def test_signed_bundle_opens_with_key_file_trust_file_and_trust_object(signed, keys, tmp_path):
    trust_file = tmp_path / "trust.toml"
    trust_file.write_text(f'require_signature = true\n[[keys]]\nname = "fleet"\n'
                          f'ed25519 = "{base64.b64encode(keys[1]).decode()}"\n')
    for trust in (Path(f"{keys[0]}.pub"), trust_file, Trust((keys[3], keys[1]))):
        with edge_eco.open(signed, trust=trust) as eco:
            assert eco.answer("what is my checking account balance", local_only=True).label == "balance"


def test_swapped_labels_break_the_signature(signed, keys):
    _swap_labels(signed)
    edge_eco.open(signed).close()  # without a trust the edit goes unnoticed: hashes all match
    with pytest.raises(SignatureError, match="signature does not match ecology.toml"):
        edge_eco.open(signed, trust=Trust((keys[1],)))


def test_tampered_model_is_refused_by_hash_or_signature(signed, keys):
    model = signed / "banking.onnx.data"
    old = sha256_file(model)
    raw = bytearray(model.read_bytes())
    raw[100] ^= 1  # a valid model with one different weight
    model.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="'banking.onnx.data' does not match its sha256"):
        edge_eco.open(signed, trust=Trust((keys[1],)))
    toml = signed / "ecology.toml"
    toml.write_text(toml.read_text().replace(old, sha256_file(model)))  # re-listed, but not re-signed
    with pytest.raises(SignatureError, match="altered after signing"):
        edge_eco.open(signed, trust=Trust((keys[1],)))


def test_wrong_key_is_refused(signed, keys):
    with pytest.raises(SignatureError, match="not a trusted key"):
        edge_eco.open(signed, trust=Trust((keys[3],)))


def test_missing_signature_is_refused_when_required(signed, keys):
    (signed / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError, match="requires a signed ecology"):
        edge_eco.open(signed, trust=Trust((keys[1],)))


def test_unsigned_opens_when_not_required(signed, keys):
    (signed / SIGNATURE_NAME).unlink()
    with edge_eco.open(signed) as eco:
        assert eco.answer("book a flight to paris", local_only=True).label == "book_flight"
    with edge_eco.open(signed, trust=Trust((keys[1],), require_signature=False)) as eco:
        assert not getattr(eco.before_load, "__name__", "") == "<lambda>"  # no per-load re-hash: a stat check


def test_a_bad_signature_is_refused_even_when_not_required(signed, keys):
    _swap_labels(signed)
    with pytest.raises(SignatureError):
        edge_eco.open(signed, trust=Trust((keys[1],), require_signature=False))


def test_malformed_signature_file(signed, keys):
    (signed / SIGNATURE_NAME).write_text('alg = "ed25519"\nkey = "abc"\nsignature = "!!"\n')
    with pytest.raises(SignatureError, match="not base64|bytes where 32"):
        edge_eco.open(signed, trust=Trust((keys[1],)))


def test_model_replaced_after_open_never_loads(signed, keys):
    with edge_eco.open(signed, trust=Trust((keys[1],))) as eco:
        shutil.copy(signed / "home.onnx.data", signed / "travel.onnx.data")  # a valid model, the wrong one
        with pytest.raises(IntegrityError, match="'travel.onnx.data' no longer matches"):
            eco.predict_with("travel", "book a flight")
        assert "travel" not in eco.residency.resident()
        assert eco.predict_with("banking", "what is my balance").label == "balance"


@pytest.mark.parametrize("text, message", [
    ("require_signature = true\n", "no key is trusted"),
    ("require_signature = 1\n", "must be true or false"),
    ('[[keys]]\ned25519 = "AAAA"\n', "bytes where 32"),
    ("colour = 1\n", "unknown field"),
    ("= broken", "not valid TOML"),
])
def test_trust_file_errors(tmp_path, text, message):
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_trust(tmp_path / "t.toml")


def test_cli_keygen_sign_info(tmp_path, capsys):
    dst = tmp_path / "eco"
    shutil.copytree(BUNDLE, dst)
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0
    assert main(["keygen", str(tmp_path / "k")]) == 2  # never overwrites a key
    assert main(["sign", str(dst), "--key", str(tmp_path / "k")]) == 0
    assert main(["info", str(dst), "--trust", str(tmp_path / "k.pub")]) == 0
    assert "signature verified" in capsys.readouterr().out
    (dst / "MODEL_CARD.md").unlink()  # not listed in the manifest: not covered
    _swap_labels(dst)
    assert main(["info", str(dst), "--trust", str(tmp_path / "k.pub")]) == 2
    assert "altered after signing" in capsys.readouterr().err


def test_sign_refuses_a_corrupt_bundle(tmp_path, keys):
    dst = tmp_path / "eco"
    shutil.copytree(BUNDLE, dst)
    (dst / "meta.onnx.data").write_bytes(b"x" * 10)
    with pytest.raises(IntegrityError):
        sign_bundle(dst, keys[0])
    assert not (dst / SIGNATURE_NAME).exists()


def test_a_request_routed_to_a_model_replaced_after_open_falls_back(signed, keys):
    """The replaced file is refused (IntegrityError) and the request is answered by the others."""
    with edge_eco.open(signed, trust=Trust((keys[1],))) as eco:
        shutil.copy(signed / "home.onnx.data", signed / "travel.onnx.data")
        a = eco.answer("book a flight to paris for tomorrow", local_only=True)
        assert "travel" in a.provenance.get("model_errors", {})
        assert "no longer matches" in a.provenance["model_errors"]["travel"]


def test_sign_refuses_a_public_key(signed, keys):
    with pytest.raises(ManifestError, match="public key"):
        sign_bundle(signed, Path(f"{keys[0]}.pub"))


def test_info_does_not_claim_a_signature_that_is_not_there(signed, keys, tmp_path, capsys):
    (signed / SIGNATURE_NAME).unlink()
    trust = tmp_path / "optional.toml"
    trust.write_text(f'require_signature = false\n[[keys]]\ned25519 = "{base64.b64encode(keys[1]).decode()}"\n')
    assert main(["info", str(signed), "--trust", str(trust)]) == 0
    out = capsys.readouterr().out
    assert "signature verified" not in out and "not signed" in out

"""Signed populations: Ed25519 signatures over ``ecology.toml`` and the trust that checks them.

The manifest lists every file of the bundle with its sha256, so one signature over its exact
bytes covers the whole population: an edited manifest (two labels swapped, a threshold moved)
fails the signature, an altered model fails its hash. The signature lives beside the manifest
in ``ecology.toml.sig``::

    alg = "ed25519"
    key = "<base64 public key that signed>"
    signature = "<base64 signature of b'edge_eco ecology.toml v1\\n' + the manifest's bytes>"

During a governance change the file may briefly hold two signatures (``[[signatures]]`` tables
of the same three fields), one over the manifest before and one over the manifest after; a
manifest opens when any of them, by a trusted key, covers its exact bytes (:func:`swap_signed`).

A :class:`Trust` says which public keys are trusted and whether a signature is required. With
``require_signature`` a bundle without a valid signature by a trusted key never opens, and each
model file is hashed again when it is loaded (a file swapped after open never loads). A present
but invalid signature is refused even when signatures are not required. PyNaCl (the ``signing``
extra) is imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from . import tomlread
from .errors import IntegrityError, ManifestError, SignatureError

__all__ = ["SIGNATURE_NAME", "GovernanceSigner", "SignatureError", "Trust", "as_trust", "generate_key",
           "load_trust", "read_public_key", "recheck_model_files", "sign_bundle", "signature_text",
           "swap_signed", "verified_manifest", "verify_manifest"]

SIGNATURE_NAME = "ecology.toml.sig"
_DOMAIN = b"edge_eco ecology.toml v1\n"  # signatures over manifests only, never over other bytes


@dataclass(frozen=True)
class Trust:
    """Trusted Ed25519 public keys (32 raw bytes each) and whether a signature is required.

    ``governance_key`` is the path of this device's own secret key, with which governance changes
    (promote, rollback) sign the manifest they write; its public key must be one of ``keys``.
    Without it, a change to a signed ecology (or under a required signature) is refused.
    """

    keys: tuple[bytes, ...] = ()
    require_signature: bool = True
    governance_key: Path | None = None

    def __post_init__(self) -> None:
        if any(not isinstance(k, bytes) or len(k) != 32 for k in self.keys):
            raise ManifestError("trust: every key must be a 32-byte Ed25519 public key")
        if self.require_signature and not self.keys:
            raise ManifestError("trust: a signature is required but no key is trusted")


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError as exc:
        raise ManifestError("signature checks need PyNaCl: pip install 'edge_eco[signing]'") from exc
    return nacl


def _b64(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"{what}: not base64") from exc
    if size is not None and len(raw) != size:
        raise ManifestError(f"{what}: {len(raw)} bytes where {size} are expected")
    return raw


def generate_key(secret_path: str | Path) -> bytes:
    """Write a new Ed25519 secret key (mode 0600) to ``secret_path`` and its public key to
    ``secret_path + '.pub'``; returns the public key.

    Raises:
        ManifestError: PyNaCl missing. OSError: the files cannot be written (or already exist).
    """
    nacl = _nacl()
    key = nacl.signing.SigningKey.generate()
    secret_path = Path(secret_path)
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(bytes(key)).decode() + "\n")
    public = bytes(key.verify_key)
    Path(f"{secret_path}.pub").write_text(base64.b64encode(public).decode() + "\n")
    return public


def read_public_key(path: str | Path) -> bytes:
    """The 32-byte public key in a ``.pub`` file written by :func:`generate_key`."""
    return _b64(Path(path).read_text(), f"public key {path}", 32)


def load_trust(path: str | Path) -> Trust:
    """Read a trust file (TOML: ``require_signature = true``, ``[[keys]] ed25519 = "<base64>"`` and
    an optional ``governance_key = "<secret key file>"``, relative to the trust file) or a single
    ``.pub`` key file (trusted, signature required).

    Raises:
        ManifestError: unreadable or malformed trust file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"trust file {path}: cannot read it ({exc})") from exc
    if path.suffix == ".pub":
        return Trust((_b64(text, f"public key {path}", 32),), True)
    try:
        data = tomlread.loads(text)
    except tomlread.TOMLDecodeError as exc:
        raise ManifestError(f"trust file {path}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"require_signature", "keys", "governance_key"}
    if unknown:
        raise ManifestError(f"trust file {path}: unknown field(s) {sorted(unknown)}")
    required = data.get("require_signature", True)
    if not isinstance(required, bool):
        raise ManifestError(f"trust file {path}: require_signature must be true or false")
    keys = []
    for i, k in enumerate(data.get("keys", [])):
        if not isinstance(k, dict) or set(k) - {"name", "ed25519"} or not isinstance(k.get("ed25519"), str):
            raise ManifestError(f"trust file {path}: keys[{i}] needs ed25519 = \"<base64>\" (and an optional name)")
        keys.append(_b64(k["ed25519"], f"trust file {path}: keys[{i}]", 32))
    gov = data.get("governance_key")
    if gov is not None and (not isinstance(gov, str) or not gov):
        raise ManifestError(f"trust file {path}: governance_key must be the path of a secret key file")
    return Trust(tuple(keys), required, None if gov is None else path.parent / gov)


def as_trust(trust: "Trust | str | Path | None") -> Trust | None:
    """``trust`` as a :class:`Trust`: a Trust, a trust/``.pub`` file path, or None."""
    if trust is None or isinstance(trust, Trust):
        return trust
    if isinstance(trust, (str, Path)):
        return load_trust(trust)
    raise ManifestError(f"trust must be a Trust or the path of a trust file, got {type(trust).__name__}")


def sign_bundle(folder: str | Path, secret_path: str | Path) -> Path:
    """Sign ``folder/ecology.toml`` with the secret key at ``secret_path``; writes
    ``ecology.toml.sig`` atomically and returns its path. The bundle is verified first (every
    file present and matching its sha256): a corrupt bundle is never signed.

    Raises:
        ManifestError, IntegrityError: the bundle is invalid. OSError: unreadable key.
    """
    from .bundle import MANIFEST_NAME, read_bundle

    root = Path(folder)
    data = (root / MANIFEST_NAME).read_bytes() if (root / MANIFEST_NAME).is_file() else None
    read_bundle(root, manifest_bytes=data)  # these exact bytes, with every file's sha256
    secret = Path(secret_path)
    if secret.suffix == ".pub":  # same encoding as a secret key: signing with it would "succeed"
        raise ManifestError(f"{secret} is a public key (.pub); sign with the secret key file keygen wrote")
    key = _secret_key(secret)
    out = root / SIGNATURE_NAME
    _write_durably(out, signature_text([(bytes(key.verify_key), key.sign(_DOMAIN + data).signature)]))
    return out


def _secret_key(secret: Path):
    """The nacl SigningKey in ``secret`` (checked against ``secret.pub`` when that exists)."""
    nacl = _nacl()
    key = nacl.signing.SigningKey(_b64(secret.read_text(), f"secret key {secret}", 32))
    pub = Path(f"{secret}.pub")
    if pub.is_file() and _b64(pub.read_text(), f"public key {pub}", 32) != bytes(key.verify_key):
        raise ManifestError(f"{secret} does not match its public key {pub}: is it a public key?")
    return key


def _write_durably(path: Path, text: str) -> None:
    from .swap import write_atomic  # temp file, fsync, rename, fsync the folder

    write_atomic(path, text.encode("utf-8"))


def signature_text(signatures: list[tuple[bytes, bytes]]) -> str:
    """The text of ``ecology.toml.sig`` for (public key, signature) pairs: the plain three fields
    for one, ``[[signatures]]`` tables for several (the transient state of a governance change)."""
    def fields(key: bytes, sig: bytes) -> str:
        return (f'alg = "ed25519"\nkey = "{base64.b64encode(key).decode()}"\n'
                f'signature = "{base64.b64encode(sig).decode()}"\n')
    if len(signatures) == 1:
        return fields(*signatures[0])
    return "\n".join("[[signatures]]\n" + fields(k, s) for k, s in signatures)


class GovernanceSigner:
    """Signs the manifests a governance change writes, with the trust's ``governance_key``.

    Raises (at construction):
        SignatureError: the trust names no governance key, the key cannot be read, or its public
            key is not trusted (the changed ecology would not open).
    """

    def __init__(self, trust: Trust, root_name: str = "ecology") -> None:
        if trust.governance_key is None:
            raise SignatureError(f"{root_name}: a governance change must re-sign ecology.toml and the trust "
                                 "configuration names no governance_key (this device's secret key)")
        try:
            self._key = _secret_key(Path(trust.governance_key))
        except (OSError, ManifestError) as exc:
            raise SignatureError(f"{root_name}: governance key {trust.governance_key} is unusable: {exc}") from exc
        self.public = bytes(self._key.verify_key)
        if self.public not in trust.keys:
            raise SignatureError(f"{root_name}: governance key {trust.governance_key} is not one of the trusted keys: "
                                 "an ecology it signs would not open")
        self.trust = trust

    def sign(self, data: bytes) -> tuple[bytes, bytes]:
        """(public key, signature) over manifest bytes ``data``."""
        return self.public, self._key.sign(_DOMAIN + data).signature

    def current(self, root: Path, data: bytes) -> list[tuple[bytes, bytes]]:
        """The trusted signatures in ``root``'s signature file that cover ``data`` (the manifest now).

        Raises:
            SignatureError: none does (unsigned, untrusted or altered): a change must not re-sign
                a manifest that does not verify.
        """
        verify_manifest(root, data, Trust(self.trust.keys, True))
        nacl = _nacl()
        good = []
        for key, sig in _entries(root):
            if key in self.trust.keys:
                try:
                    nacl.signing.VerifyKey(key).verify(_DOMAIN + data, sig)
                    good.append((key, sig))
                except nacl.exceptions.BadSignatureError:
                    pass
        return good


def swap_signed(root: Path, old: bytes, new: bytes, signer: GovernanceSigner,
                write_manifest) -> None:
    """Replace manifest ``old`` by ``new`` (``write_manifest()`` does the atomic write) so that
    the pair on disk verifies at every instant: the signature file first holds the signatures of
    both, then the manifest is replaced, then the old signature is dropped. A crash at any point
    leaves (old manifest, a signature of it) or (new manifest, a signature of it).

    Raises:
        SignatureError: the manifest on disk does not verify now. StoreError: a write failed.
    """
    before = signer.current(root, old)
    after = signer.sign(new)
    _write_durably(root / SIGNATURE_NAME, signature_text(before + [after]))
    write_manifest()
    _write_durably(root / SIGNATURE_NAME, signature_text([after]))


def verified_manifest(folder: str | Path, trust: Trust) -> tuple[bytes, bool]:
    """Read ``folder/ecology.toml`` once and check its signature under ``trust``.

    Returns:
        (the manifest's bytes, to be parsed as they are; whether they were signed).

    Raises:
        ManifestError: no such folder or manifest. SignatureError: see :func:`verify_manifest`.
    """
    from .bundle import MANIFEST_NAME

    root = Path(folder)
    try:
        data = (root / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise ManifestError(f"{root}: no readable {MANIFEST_NAME} ({exc.strerror})") from exc
    return data, verify_manifest(root, data, trust)


def recheck_model_files(root: Path, manifest, model_id: str) -> None:
    """Hash a model's files again just before it is loaded (its graph, its ``.data`` weights and
    its tokenizer), so a file replaced after the bundle was opened never loads.

    Raises:
        IntegrityError: a file is missing or no longer matches the (signed) manifest.
    """
    from .bundle import sha256_file
    from .ondisk import model_files

    for f in model_files(manifest, model_id):
        try:
            digest = sha256_file(root / f.path)
        except OSError as exc:
            raise IntegrityError(f"{root.name}: {f.path!r} cannot be read at load ({exc.strerror})") from exc
        if digest != f.sha256:
            raise IntegrityError(f"{root.name}: {f.path!r} no longer matches its sha256 in the signed manifest: "
                                 "replaced after the ecology was opened")


def verify_manifest(root: Path, data: bytes, trust: Trust) -> bool:
    """Check the signature of manifest bytes ``data`` of bundle ``root`` under ``trust``.

    Returns:
        True when a valid signature by a trusted key covers ``data``; False when the bundle is
        unsigned and ``trust`` does not require a signature.

    Raises:
        SignatureError: no signature where one is required; a malformed signature file; a key
            that is not trusted; a signature that does not verify (manifest or signature edited).
    """
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        if trust.require_signature:
            raise SignatureError(f"{root.name}: no {SIGNATURE_NAME}: this runtime requires a signed ecology "
                                 "(edge-eco sign)")
        return False
    entries = _entries(root)
    untrusted = [k for k, _ in entries if k not in trust.keys]
    if len(untrusted) == len(entries):
        raise SignatureError(f"{root.name}: signed by key {base64.b64encode(untrusted[0]).decode()[:12]}..., which is "
                             "not a trusted key")
    nacl = _nacl()
    for key, signature in entries:
        if key not in trust.keys:
            continue
        try:
            nacl.signing.VerifyKey(key).verify(_DOMAIN + data, signature)
            return True
        except nacl.exceptions.BadSignatureError:
            continue
    raise SignatureError(f"{root.name}: the signature does not match ecology.toml: the manifest (or the "
                         "signature) was altered after signing")


def _entries(root: Path) -> list[tuple[bytes, bytes]]:
    """(public key, signature) pairs of ``root``'s signature file: one, or several during a change.

    Raises:
        SignatureError: the file is unreadable or malformed.
    """
    sig_path = root / SIGNATURE_NAME
    try:
        sig = tomlread.loads(sig_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlread.TOMLDecodeError) as exc:
        raise SignatureError(f"{root.name}: {SIGNATURE_NAME} is unreadable or malformed: {exc}") from exc
    tables = sig.get("signatures") if set(sig) == {"signatures"} else [sig]
    if not isinstance(tables, list) or not tables:
        raise SignatureError(f"{root.name}: {SIGNATURE_NAME} needs alg = \"ed25519\", key and signature")
    out = []
    for t in tables:
        if not isinstance(t, dict) or t.get("alg") != "ed25519" or not isinstance(t.get("key"), str) \
                or not isinstance(t.get("signature"), str):
            raise SignatureError(f"{root.name}: {SIGNATURE_NAME} needs alg = \"ed25519\", key and signature")
        try:
            out.append((_b64(t["key"], "signature key", 32), _b64(t["signature"], "signature", 64)))
        except ManifestError as exc:
            raise SignatureError(f"{root.name}: {SIGNATURE_NAME}: {exc}") from exc
    return out

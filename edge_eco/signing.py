"""Signed populations: Ed25519 signatures over ``ecology.toml`` and the trust that checks them.

The manifest lists every file of the bundle with its sha256, so one signature over its exact
bytes covers the whole population: an edited manifest (two labels swapped, a threshold moved)
fails the signature, an altered model fails its hash. The signature lives beside the manifest
in ``ecology.toml.sig``::

    alg = "ed25519"
    key = "<base64 public key that signed>"
    signature = "<base64 signature of b'edge_eco ecology.toml v1\\n' + the manifest's bytes>"

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
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, ManifestError, SignatureError

__all__ = ["SIGNATURE_NAME", "SignatureError", "Trust", "as_trust", "generate_key", "load_trust",
           "read_public_key", "recheck_model_files", "sign_bundle", "verified_manifest", "verify_manifest"]

SIGNATURE_NAME = "ecology.toml.sig"
_DOMAIN = b"edge_eco ecology.toml v1\n"  # signatures over manifests only, never over other bytes


@dataclass(frozen=True)
class Trust:
    """Trusted Ed25519 public keys (32 raw bytes each) and whether a signature is required."""

    keys: tuple[bytes, ...] = ()
    require_signature: bool = True

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
    """Read a trust file (TOML: ``require_signature = true`` and ``[[keys]] ed25519 = "<base64>"``)
    or a single ``.pub`` key file (trusted, signature required).

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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"trust file {path}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"require_signature", "keys"}
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
    return Trust(tuple(keys), required)


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

    nacl = _nacl()
    root = Path(folder)
    data = (root / MANIFEST_NAME).read_bytes() if (root / MANIFEST_NAME).is_file() else None
    read_bundle(root, manifest_bytes=data)  # these exact bytes, with every file's sha256
    secret = Path(secret_path)
    if secret.suffix == ".pub":  # same encoding as a secret key: signing with it would "succeed"
        raise ManifestError(f"{secret} is a public key (.pub); sign with the secret key file keygen wrote")
    key = nacl.signing.SigningKey(_b64(secret.read_text(), f"secret key {secret}", 32))
    pub = Path(f"{secret}.pub")
    if pub.is_file() and _b64(pub.read_text(), f"public key {pub}", 32) != bytes(key.verify_key):
        raise ManifestError(f"{secret} does not match its public key {pub}: is it a public key?")
    sig = key.sign(_DOMAIN + data).signature
    body = (f'alg = "ed25519"\nkey = "{base64.b64encode(bytes(key.verify_key)).decode()}"\n'
            f'signature = "{base64.b64encode(sig).decode()}"\n')
    out, tmp = root / SIGNATURE_NAME, root / (SIGNATURE_NAME + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


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

    entry = manifest.model(model_id)
    wanted = {entry.file.path} | ({entry.tokenizer} if entry.tokenizer else set())
    for f in (entry.file,) + manifest.files:
        if f.path in wanted or f.path.startswith(entry.file.path + "."):
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
    try:
        sig = tomllib.loads(sig_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SignatureError(f"{root.name}: {SIGNATURE_NAME} is unreadable or malformed: {exc}") from exc
    if sig.get("alg") != "ed25519" or not isinstance(sig.get("key"), str) or not isinstance(sig.get("signature"), str):
        raise SignatureError(f"{root.name}: {SIGNATURE_NAME} needs alg = \"ed25519\", key and signature")
    try:
        key = _b64(sig["key"], "signature key", 32)
        signature = _b64(sig["signature"], "signature", 64)
    except ManifestError as exc:
        raise SignatureError(f"{root.name}: {SIGNATURE_NAME}: {exc}") from exc
    if key not in trust.keys:
        raise SignatureError(f"{root.name}: signed by key {base64.b64encode(key).decode()[:12]}..., which is not "
                             "a trusted key")
    nacl = _nacl()
    try:
        nacl.signing.VerifyKey(key).verify(_DOMAIN + data, signature)
    except nacl.exceptions.BadSignatureError as exc:
        raise SignatureError(f"{root.name}: the signature does not match ecology.toml: the manifest (or the "
                             "signature) was altered after signing") from exc
    return True

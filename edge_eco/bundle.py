"""Read an ecology bundle from disk: the manifest plus a sha256 check of every listed file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import IntegrityError, ManifestError
from .manifest import Manifest, parse_manifest

MANIFEST_NAME = "ecology.toml"
_CHUNK = 64 << 10  # one reused read buffer, below malloc's mmap threshold (no new bytes object per chunk)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_bundle(folder: str | Path, *, verify: bool = True,
                manifest_bytes: bytes | None = None) -> tuple[Path, Manifest]:
    """Parse ``folder/ecology.toml`` and check that every file it lists is present and intact.

    ``manifest_bytes``: the manifest's bytes as already read (and signature-checked) by the
    caller, parsed instead of reading the file again.

    Raises:
        ManifestError: no such folder or manifest, or the manifest is invalid.
        IntegrityError: a listed file is missing, empty, or its sha256 does not match.
    """
    root = Path(folder)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"{root} is not an ecology folder (no such directory)")
    if manifest_bytes is None and not path.is_file():
        raise ManifestError(f"{root} has no {MANIFEST_NAME}")
    try:
        text = path.read_text(encoding="utf-8") if manifest_bytes is None else manifest_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text") from exc
    try:
        manifest = parse_manifest(text)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if verify:
        for entry in manifest.all_files():
            f = root / entry.path
            if not f.is_file():
                raise IntegrityError(f"{root.name}: file {entry.path!r} listed in {MANIFEST_NAME} is missing")
            if f.stat().st_size == 0:
                raise IntegrityError(f"{root.name}: file {entry.path!r} is empty")
            digest = sha256_file(f)
            if digest != entry.sha256:
                raise IntegrityError(f"{root.name}: file {entry.path!r} does not match its sha256 "
                                     f"(expected {entry.sha256[:16]}..., found {digest[:16]}...): "
                                     "truncated, corrupt or replaced")
        _check_external_data_listed(root, manifest)
    return root, manifest


def _check_external_data_listed(root: Path, manifest: Manifest) -> None:
    """Every weight file an ONNX graph pulls in must be listed (and so hash-checked) too."""
    from .artifacts import preflight
    from .errors import ModelLoadError

    listed = {f.path for f in manifest.all_files()}
    for m in manifest.models:
        if not m.file.path.endswith(".onnx"):
            continue
        try:
            used = preflight(root / m.file.path)
        except ModelLoadError:
            continue  # refused when it loads; the rest of the population still opens
        folder = m.file.path.rpartition("/")[0]
        for name in used:
            rel = f"{folder}/{name}" if folder else name
            if rel not in listed:
                raise IntegrityError(f"{root.name}: {m.file.path!r} uses external data {rel!r}, which "
                                     f"{MANIFEST_NAME} does not list (its sha256 would never be checked)")

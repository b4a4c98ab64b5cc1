"""Atomic manifest swaps: the ecology's ``ecology.toml`` is replaced whole or not at all.

A swap writes the new text to a temporary file in the same folder, fsyncs it, renames it over
``ecology.toml`` (``os.replace``: atomic on POSIX), then fsyncs the folder so the rename itself
is durable. A crash at any point leaves the old manifest or the new one, never a torn one; at
worst a stale ``.ecology.toml.*.tmp`` file, which the next swap removes.

On a signed ecology the swap is given a :class:`~edge_eco.signing.GovernanceSigner` and writes
the new signature with the manifest (:func:`edge_eco.signing.swap_signed`): the pair on disk
verifies at every instant. Every write creates a new file and renames it: a file the runtime
may have memory-mapped is never truncated or rewritten in place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .bundle import MANIFEST_NAME, sha256_file
from .errors import IntegrityError, ManifestError, StoreError
from .manifest import Manifest, parse_manifest
from .tomlwrite import manifest_to_toml

if TYPE_CHECKING:
    from .signing import GovernanceSigner


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync dir).

    Raises:
        StoreError: the file system refused a step (the old file is then untouched).
    """
    _replace(path, data)


def _replace(path: Path, data: bytes) -> None:
    """Temp file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"atomic write of {path} failed: {exc}") from exc


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` as a new file: a temp file beside ``dest``, fsync, rename, fsync
    the folder. A crash leaves no partial file under ``dest``'s name, and a process that has the
    old ``dest`` memory-mapped keeps reading the old bytes (its inode is never rewritten).

    Raises:
        StoreError: the copy failed (``dest`` is then untouched).
    """
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        raise StoreError(f"copying {src} to {dest} failed: {exc}") from exc
    _replace(Path(dest), data)


def clean_stale(folder: Path) -> None:
    """Remove temporary files left by a swap that crashed before its rename (manifest, signature)."""
    for stale in folder.glob(f".{MANIFEST_NAME}.*.tmp"):  # also matches .ecology.toml.sig.<pid>.tmp
        stale.unlink(missing_ok=True)


def swap_manifest(root: Path, new: Manifest, intent: Callable[[str, str], None] | None = None,
                  signer: "GovernanceSigner | None" = None) -> tuple[str, str]:
    """Make ``new`` the manifest of the bundle at ``root``, after checking it opens.

    The new text is re-parsed and every file it lists is verified (present, sha256) before the
    swap, so a swap can never install a manifest that does not open. ``intent(before, after)``
    (the two sha256) is called after these checks and just before the write: the caller records
    its write-ahead intent there (:mod:`edge_eco.changes`); if it raises, nothing is swapped.
    With ``signer`` the manifest on disk must verify under its trust first, and the new one is
    signed with it, written with the manifest as one step (see the module docstring).

    Returns:
        (sha256 of the manifest text before, after).

    Raises:
        ManifestError, IntegrityError: ``new`` is invalid or lists a missing/corrupt file.
        SignatureError: with ``signer``, the manifest on disk does not verify (nothing changed).
        StoreError: the write failed (the old manifest stands).
    """
    text = manifest_to_toml(new)
    if parse_manifest(text) != new:
        raise ManifestError("manifest does not survive a write/read round trip")
    path = root / MANIFEST_NAME
    old = path.read_bytes()
    before = hashlib.sha256(old).hexdigest()
    clean_stale(root)
    if signer is not None:
        signer.current(root, old)  # refuse before the intent: a change never re-signs what does not verify
    for entry in new.all_files():  # verified against the new text before the live file is touched
        f = root / entry.path
        if not f.is_file() or sha256_file(f) != entry.sha256:
            raise IntegrityError(f"{entry.path}: missing or does not match its sha256; swap refused")
    after = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if intent is not None:
        intent(before, after)
    if signer is None:
        write_atomic(path, text.encode("utf-8"))
    else:
        from .signing import swap_signed

        swap_signed(root, old, text.encode("utf-8"), signer, lambda: write_atomic(path, text.encode("utf-8")))
    return before, after


__all__ = ["write_atomic", "copy_atomic", "swap_manifest", "clean_stale"]

"""Model files changed on disk after an ecology was opened: checked before every (re)load.

``edge_eco.open`` hashes every file once. A model evicted and loaded again later would map
whatever is on disk by then, so each model's files are remembered by (device, inode, size,
mtime, ctime) when the bundle is opened, and before every load a ``stat`` compares them: a file that
changed is hashed again and, unless it still matches the manifest's sha256, the load is refused
with an :class:`~edge_eco.errors.IntegrityError` instead of handing the bytes to a runtime.
The stamp is :func:`~edge_eco.artifacts.file_identity` (the ctime in it: an mtime can be set back).

The same check runs before a *cold* model (its file pages dropped, its session kept) is used
again: its pages would fault back in from whatever the file holds by then.

What this cannot cover: a file truncated or rewritten *in place* while a hot model has it
memory-mapped. Truncated, the kernel faults on the missing pages (SIGBUS, the process dies) before
any check can run; rewritten, the model answers from the new bytes until it is unloaded.
The runtime's own writes (swaps, restores, staging, router fits, builds) never do that: they
write a new file and rename it over the old one, and a mapping keeps the old inode.
Shell: reads the file system.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .artifacts import file_identity
from .errors import IntegrityError
from .manifest import FileEntry, Manifest

Stamp = tuple[int, int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)


def model_files(manifest: Manifest, model_id: str) -> list[FileEntry]:
    """The listed files a model loads: its graph, its ``.data`` weights, its tokenizer."""
    entry = manifest.model(model_id)
    wanted = {entry.file.path} | ({entry.tokenizer} if entry.tokenizer else set())
    return [f for f in (entry.file,) + manifest.files if f.path in wanted or f.path.startswith(entry.file.path + ".")]


def _stamp(path: Path) -> Stamp:
    return file_identity(os.stat(path))


def stamps(root: Path) -> dict[str, Stamp]:
    """Stamps of the regular files directly in ``root`` (taken *before* the bundle is hashed, so
    a file changed while it was being hashed reads as changed later)."""
    out = {}
    with os.scandir(root) as it:
        for e in it:
            if e.is_file(follow_symlinks=True):
                try:
                    out[e.name] = _stamp(Path(e.path))
                except OSError:
                    pass
    return out


class FileGuard:
    """Refuses to load a model whose files changed on disk since the bundle was opened and no
    longer match their sha256 (see the module docstring)."""

    def __init__(self, root: Path, manifest: Manifest, opened: dict[str, Stamp]) -> None:
        self.root, self.manifest, self._stamps = root, manifest, dict(opened)
        self._files: dict[str, list[tuple[FileEntry, str]]] = {}  # per model: (entry, path) (a load's hot path)

    def check(self, model_id: str) -> None:
        """Raise IntegrityError when a file of ``model_id`` changed and no longer matches."""
        from .bundle import sha256_file

        files = self._files.get(model_id)
        if files is None:
            files = self._files[model_id] = [(f, os.path.join(self.root, f.path))
                                             for f in model_files(self.manifest, model_id)]
        for f, path in files:
            try:
                now = file_identity(os.stat(path))
                if now == self._stamps.get(f.path):
                    continue
                digest = sha256_file(path)
            except OSError as exc:
                raise IntegrityError(f"{self.root.name}: {f.path!r} cannot be read at load "
                                     f"({exc.strerror}){gone_since_open(exc)}") from exc
            if digest != f.sha256:
                raise IntegrityError(f"{self.root.name}: {f.path!r} changed on disk after the ecology was opened "
                                     "and no longer matches its sha256: not loaded")
            self._stamps[f.path] = now  # the same bytes under a new inode (a restore, a copy)


def gone_since_open(exc: OSError) -> str:
    """What an error reading a model file at load says happened since open: nothing more for a
    permission refused (the file is there; a trial's chmod 000 was called "removed or replaced")."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ": its permissions changed after the ecology was opened"
    return ": it was removed or replaced after the ecology was opened"


__all__ = ["FileGuard", "gone_since_open", "model_files", "stamps"]

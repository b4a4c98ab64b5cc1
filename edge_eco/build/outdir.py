"""The bundle folder a build writes into: refuse a folder of someone else's files, and in a bundle
folder remove only what the previous build wrote (so a rebuild keeps no stale model of an earlier
population and never deletes a user's file)."""

from __future__ import annotations

from pathlib import Path

from .. import tomlread
from ..errors import BuildError

BUILD_FILES = ("ecology.toml", "build.json", "MODEL_CARD.md")


def _listed_paths(node) -> list[str]:
    """Every string ``path`` value anywhere in a parsed manifest."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "path" and isinstance(value, str):
                found.append(value)
            else:
                found += _listed_paths(value)
    elif isinstance(node, list):
        for value in node:
            found += _listed_paths(value)
    return found


def clear_out(out: Path) -> None:
    """Create ``out`` or empty it of what an earlier build wrote there.

    Args:
        out: the bundle folder of the build.

    Raises:
        BuildError: ``out`` is a file, or a non-empty folder that is not an edge_eco bundle (no
        ``ecology.toml``), or its ``ecology.toml`` cannot be read.
    """
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file, not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    manifest = out / "ecology.toml"
    if not manifest.is_file():
        if any(out.iterdir()):
            raise BuildError(f"--out {out} is a non-empty folder that is not an edge_eco bundle (no ecology.toml); "
                             "refusing to write into it (choose a new or empty folder)")
        return
    try:
        listed = _listed_paths(tomlread.loads(manifest.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomlread.TOMLDecodeError) as exc:
        raise BuildError(f"--out {out}: its ecology.toml cannot be read ({exc}); refusing to overwrite the "
                         "folder (choose a new or empty folder)") from exc
    root = out.resolve()
    for name in listed + list(BUILD_FILES):
        target = (out / name)
        try:
            inside = target.resolve().parent == root
        except OSError:
            continue
        if inside and target.is_file() and not target.is_symlink():
            target.unlink()

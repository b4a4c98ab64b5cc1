"""Defects a fresh-clone trial of ``edge-eco build`` / ``assign`` / ``run --plan`` found (issue 58)."""

from __future__ import annotations

import pytest

from edge_eco.build.outdir import clear_out
from edge_eco.errors import BuildError


def test_out_refuses_a_folder_of_user_files_and_clears_only_what_a_build_wrote(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.md").write_text("keep me")
    with pytest.raises(BuildError, match="not an edge_eco bundle"):
        clear_out(user)
    assert (user / "notes.md").read_text() == "keep me"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "ecology.toml").write_text('name = "x"\n[[models]]\nid = "a"\npath = "a.onnx"\n'
                                         '[router]\npath = "router.bin"\n[[files]]\npath = "a.onnx.data"\n')
    for name in ("a.onnx", "a.onnx.data", "router.bin", "build.json", "MODEL_CARD.md", "mine.json", "other.onnx"):
        (bundle / name).write_text("x")
    clear_out(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == ["mine.json", "other.onnx"]
    clear_out(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir()
    clear_out(tmp_path / "new" / "deep")  # an empty folder is fine

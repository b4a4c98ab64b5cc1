"""Atomic manifest swaps: a process killed at random points mid-swap leaves the old or the new
manifest, never a torn one, and the ecology opens.

The killed process runs the swap's write path (:func:`edge_eco.swap.write_atomic`: temp file,
write, fsync, rename, fsync of the folder) in a loop; each trial kills it with SIGKILL after a
random delay and checks the manifest on disk."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

import edge_eco
from edge_eco.bundle import read_bundle
from edge_eco.errors import IntegrityError
from edge_eco.manifest import Calibration, FileEntry, parse_manifest
from edge_eco.swap import swap_manifest, write_atomic
from edge_eco.tomlwrite import manifest_to_toml

ROOT = Path(__file__).resolve().parent.parent

def _swapper(path: Path, texts: list[bytes]) -> int:
    """Fork a child that swaps ``path`` between ``texts`` forever (until killed); returns its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os-level calls, no threads, no imports
        os.close(r)
        os.write(w, b"r")
        i = 0
        try:
            while True:
                write_atomic(path, texts[i % 2])
                i += 1
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    return pid


def _two_manifests(tmp_path: Path):
    root = tmp_path / "clinc150"
    shutil.copytree(ROOT / "models" / "clinc150", root)
    _, a = read_bundle(root)
    home = a.model("home")
    # B: another calibration and version of one model, and a longer text (a torn write would show)
    b = replace(a, description=a.description + " (swapped)" * 200,
                models=tuple(replace(m, version="9", calibration=Calibration(0.5)) if m.id == "home" else m
                             for m in a.models))
    assert home.version != "9"
    return root, a, b


def test_killed_mid_swap_leaves_old_or_new_never_torn(tmp_path):
    root, a, b = _two_manifests(tmp_path)
    ta, tb = manifest_to_toml(a), manifest_to_toml(b)
    (root / "ecology.toml").write_text(ta)  # the shipped text may be formatted otherwise (a kill before the first swap)
    rng = random.Random(7)
    seen = {"a": 0, "b": 0}
    started, trials = time.monotonic(), 0
    while trials < 60 and time.monotonic() - started < 30:
        pid = _swapper(root / "ecology.toml", [ta.encode(), tb.encode()])
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        text = (root / "ecology.toml").read_text()
        assert text in (ta, tb), f"trial {trials}: torn manifest ({len(text)} bytes)"
        seen["a" if text == ta else "b"] += 1
        assert parse_manifest(text) in (a, b)
        if trials % 20 == 0:
            with edge_eco.open(root) as eco:
                assert eco.answer("play some jazz", local_only=True).label
        trials += 1
    print(f"{trials} trials, old/new manifest found {seen}")
    assert trials >= 20 and seen["a"] and seen["b"]


def test_a_swap_to_a_manifest_with_a_missing_file_is_refused_and_changes_nothing(tmp_path):
    root, a, _ = _two_manifests(tmp_path)
    before = (root / "ecology.toml").read_bytes()
    bad = replace(a, files=a.files + (FileEntry("nope.onnx.data", "0" * 64),))
    with pytest.raises(IntegrityError, match="nope.onnx.data"):
        swap_manifest(root, bad)
    assert (root / "ecology.toml").read_bytes() == before
    assert not list(root.glob(".ecology.toml.*"))

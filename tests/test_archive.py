"""Archive: content-addressed files, lineage, byte budget with eviction order, restore."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from edge_eco.archive import Archive
from edge_eco.bundle import sha256_file
from edge_eco.errors import StoreError
from edge_eco.manifest import Calibration, FileEntry, ModelEntry
from edge_eco.store import Store


def _version(root, version: str, size: int) -> tuple[ModelEntry, tuple[FileEntry, ...]]:
    name = f"m-{version}.bin"
    (root / name).write_bytes(os.urandom(size))
    f = FileEntry(name, sha256_file(root / name))
    entry = ModelEntry(id="m", version=version, role="specialist", backend="fake", file=f, input="hashed-text",
                       labels=("a", "b"), calibration=Calibration(1.5))
    return entry, (f,)


def test_budget_evicts_never_champions_then_least_diverse_and_keeps_lineage(tmp_path):
    root = tmp_path / "bundle"
    root.mkdir()
    with Store(tmp_path / "o.db") as store:
        archive = Archive(tmp_path / "archive", store, budget_bytes=3500)
        e1, f1 = _version(root, "1", 1000)
        e2, f2 = _version(root, "2", 1000)
        e3, f3 = _version(root, "3", 1000)
        archive.put(root, e1, f1, lineage={"parent": None, "metrics": {"acc": 0.9}}, was_champion=True)
        archive.put(root, e2, f2, lineage={"parent": "m:1", "data_fingerprint": "ab" * 32}, was_champion=False,
                    diversity=0.5)
        archive.put(root, e3, f3, lineage={"parent": "m:1"}, was_champion=True, diversity=0.1)
        assert archive.bytes_used() == 3000
        e4, f4 = _version(root, "4", 1000)
        archive.put(root, e4, f4, lineage={"parent": "m:3"}, was_champion=True, diversity=0.9)
        status = {a.version: a.evicted for a in archive.list()}
        assert status == {"1": False, "2": True, "3": False, "4": False}  # the never-champion goes first
        assert archive.bytes_used() == 3000
        assert archive.get("m", "2").parent == "m:1" and archive.get("m", "2").data_fingerprint == "ab" * 32
        assert archive.get("m", "1").entry == e1 and archive.get("m", "1").metrics == {"acc": 0.9}
        e5, f5 = _version(root, "5", 1000)
        archive.put(root, e5, f5, lineage={}, was_champion=True, diversity=0.2)
        # among champions: lowest diversity first (1 has none = 0.0, then 3 at 0.1)
        assert {a.version for a in archive.list() if a.evicted} == {"1", "2"}
        with pytest.raises(StoreError, match="evicted"):
            archive.restore(root, "m", "2")
        (root / "m-3.bin").unlink()
        restored = archive.restore(root, "m", "3")
        assert restored.entry == e3 and sha256_file(root / "m-3.bin") == f3[0].sha256
        (root / "m-4.bin").write_bytes(b"tampered")
        with pytest.raises(StoreError, match="other content"):
            archive.restore(root, "m", "4")
        assert replace(e4, version="4") == archive.get("m", "4").entry

"""The preflight remembers files that passed by identity (artifacts.preflight), and forgets them
when they change: a corrupted copy is refused again, never served from the memory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edge_eco import artifacts
from edge_eco.errors import ModelLoadError

from conftest import MODELS


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch):
    """Files copied now have a ctime of now, which no test can set back: remember them at once."""
    monkeypatch.setattr(artifacts, "_SETTLED_NS", 0)


def _copy_settled(tmp_path: Path, model: str = "banking") -> Path:
    """A specialist's graph and its weights, with mtimes an hour old."""
    src = MODELS / "clinc150"
    graph = src / f"{model}.onnx"
    out = tmp_path / graph.name
    shutil.copyfile(graph, out)
    for name in artifacts.preflight(graph):
        shutil.copyfile(src / name, tmp_path / name)
        os.utime(tmp_path / name, ns=(0, os.stat(tmp_path / name).st_mtime_ns - 3600 * 10**9))
    os.utime(out, ns=(0, os.stat(out).st_mtime_ns - 3600 * 10**9))
    return out


def test_a_settled_file_is_walked_once(tmp_path, monkeypatch):
    path = _copy_settled(tmp_path)
    external = artifacts.preflight(path)
    assert external, "the specialists keep their weights as external data"
    walks = []
    monkeypatch.setattr(artifacts, "_check_onnx", lambda *a: walks.append(a) or [])
    assert artifacts.preflight(path) == external
    assert walks == []


def test_a_changed_graph_is_walked_again_and_refused(tmp_path):
    path = _copy_settled(tmp_path)
    artifacts.preflight(path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated in place: same inode
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        artifacts.preflight(path)


def test_truncated_weights_are_refused_after_the_graph_passed(tmp_path):
    path = _copy_settled(tmp_path)
    (name,) = artifacts.preflight(path)
    weights = tmp_path / name
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="truncated"):
        artifacts.preflight(path)


def test_a_rewrite_with_its_mtime_set_back_is_walked_again(tmp_path):
    """A same-size rewrite in place, mtime restored (a trial's case): the ctime still moves."""
    path = _copy_settled(tmp_path)
    (name,) = artifacts.preflight(path)
    before = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # zeros over its second half
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        artifacts.preflight(path)


def test_a_fresh_file_is_not_remembered(tmp_path, monkeypatch):
    """Modified within the timestamp clock's reach of the check: a same-size rewrite could keep
    its identity, so every preflight walks it (git's racy-clean rule)."""
    monkeypatch.setattr(artifacts, "_SETTLED_NS", 2_000_000_000)
    path = _copy_settled(tmp_path)  # its ctime is now, whatever its mtime says
    artifacts.preflight(path)
    walks = []
    real = artifacts._check_onnx
    monkeypatch.setattr(artifacts, "_check_onnx", lambda *a: walks.append(1) or real(*a))
    artifacts.preflight(path)
    assert walks == [1]

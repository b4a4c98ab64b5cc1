"""A model whose file passes the bundle's sha256 check but that the backend refuses (a tester's
case: models/clinc150 with home.onnx replaced by a Git LFS pointer, its hash updated in
ecology.toml). Before, the two runners-up's "not mine" made the answer `oos` at confidence 1.0
(never sent remote), `edge-eco run` reported `errors 0` and `edge-eco info` "the bundle opens"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge_eco
from edge_eco.bundle import sha256_file
from edge_eco.fallback import RemoteAnswer

from conftest import MODELS

EDGE_ECO = str(Path(sys.executable).parent / "edge-eco")
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e9ca24d17e9393\nsize 12345\n")
SHOPPING = "add milk to my shopping list"  # the intact bundle: shopping_list_update 0.946, direct from home


def _break(folder: Path, *model_files: str) -> Path:
    toml = folder / "ecology.toml"
    for name in model_files:
        old = sha256_file(folder / name)
        (folder / name).write_text(LFS_POINTER)
        toml.write_text(toml.read_text().replace(old, sha256_file(folder / name)))
    return folder


@pytest.fixture(scope="module")
def no_home(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken") / "clinc150"
    shutil.copytree(MODELS / "clinc150", folder)
    return _break(folder, "home.onnx")


class _Remote:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def infer(self, texts, *, timeout_s=None):
        self.sent.extend(texts)
        return [RemoteAnswer("shopping_list_update", 0.9, "stub", "1", 0.1) for _ in texts]

    def close(self) -> None:
        pass


def test_the_others_declines_do_not_make_the_reject_label_confident(no_home):
    with edge_eco.open(no_home) as eco:
        a = eco.answer(SHOPPING, local_only=True)
        generalist = eco.predict_with("generalist", SHOPPING)
    assert a.provenance["route"]["candidates"][0] == "home"
    assert "Git LFS pointer" in a.provenance["model_errors"]["home"]
    # The next two candidates declined (confidently) and the local generalist was asked: with
    # home's niche unknown, the reject label has no confidence and the generalist's answer stands.
    declined = [v for v in a.provenance["votes"] if v[3]]
    assert len(declined) == 2 and min(v[2] for v in declined) > 0.99
    assert (a.label, a.path) == ("shopping_list_update", "coalition")
    assert a.confidence == pytest.approx(generalist.confidence) and a.confidence < 0.99
    assert ("generalist", "shopping_list_update") in [(v[0], v[1]) for v in a.provenance["votes"]]
    assert "home" not in a.provenance["models"]  # it did not answer


def test_with_the_generalist_broken_too_the_request_goes_remote(tmp_path):
    folder = tmp_path / "clinc150"
    shutil.copytree(MODELS / "clinc150", folder)
    _break(folder, "home.onnx", "generalist.onnx")
    remote = _Remote()
    with edge_eco.open(folder, remote_client=remote) as eco:
        offline = eco.answer(SHOPPING, local_only=True)
        online = eco.answer(SHOPPING)
    assert set(offline.provenance["model_errors"]) == {"home", "generalist"}
    assert (offline.label, offline.confidence, offline.path) == ("oos", 0.0, "coalition")
    assert offline.provenance["remote"] == {"skipped": "local_only"}
    assert (online.label, online.path) == ("shopping_list_update", "remote") and remote.sent == [SHOPPING]


def test_a_confident_generalist_keeps_the_request_local(no_home):
    remote = _Remote()
    with edge_eco.open(no_home, remote_client=remote) as eco:
        a = eco.answer(SHOPPING)
    assert (a.label, a.path) == ("shopping_list_update", "coalition") and a.confidence >= eco.policy.fallback_threshold
    assert remote.sent == []


def test_run_reports_model_errors_per_model(no_home, tmp_path):
    rows = [(SHOPPING, "shopping_list_update"), ("play the song called baby shark", "play_music"),
            ("tell me a joke about cats", "tell_joke")]
    requests, out = tmp_path / "req.jsonl", tmp_path / "report.json"
    requests.write_text("".join(json.dumps({"text": t, "label": gold}) + "\n" for t, gold in rows))
    done = subprocess.run([EDGE_ECO, "run", str(no_home), "--requests", str(requests), "--local-only",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and list(report["model_errors"]) == ["home"]
    assert report["model_errors"]["home"]["requests"] == 2  # the two home requests; the joke is small_talk's
    assert report["model_errors"]["home"]["first_error"].startswith("line 1: ModelLoadError: home.onnx")
    assert "model error: home failed in 2 requests" in done.stdout


def test_info_loads_every_model_and_names_the_broken_one(no_home):
    done = subprocess.run([EDGE_ECO, "info", str(no_home)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "model home FAILS: ModelLoadError: home.onnx: is a Git LFS pointer" in done.stdout
    assert "1 of 11 models cannot load or run (home)" in done.stderr
    intact = subprocess.run([EDGE_ECO, "info", str(MODELS / "clinc150")], capture_output=True, text=True,
                            timeout=120)
    assert intact.returncode == 0, intact.stderr
    assert "all 11 models load and run" in intact.stdout

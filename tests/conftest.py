"""Shared fixtures. Data comes from ../shared/data (or $EDGE_ECO_DATA); models from models/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edge_eco.bundle import sha256_file
from edge_eco.featurizer import FeaturizerSpec, featurize_reference
from edge_eco.manifest import (Calibration, FileEntry, Manifest, ModelEntry, Policy, RouterSpec)
from edge_eco.routerfile import write_router
from edge_eco.tomlwrite import manifest_to_toml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DATA = Path(os.environ.get("EDGE_ECO_DATA", ROOT.parent / "shared" / "data"))
CLINC = DATA / "clinc150" / "data_full.json"


@pytest.fixture(scope="session")
def clinc_test() -> list[tuple[str, str]]:
    """All 5,500 CLINC150 test queries (4,500 in scope + 1,000 oos) as (text, label)."""
    data = json.loads(CLINC.read_text())
    return [tuple(x) for x in data["test"] + data["oos_test"]]


# A tiny ecology for flow tests, built from prototype sentences with the fake (numpy) backend.
FAKE_SPEC = FeaturizerSpec(seed=7, dim=1 << 10)
FAKE_MODELS = {
    "money": {"balance": "what is my account balance", "transfer": "transfer money to savings",
              "not_mine": "book a flight to paris set an alarm"},
    "travel": {"book_flight": "book a flight to paris", "alarm": "set an alarm for six",
               "not_mine": "what is my account balance transfer money"},
    "generalist": {"balance": "what is my account balance", "transfer": "transfer money to savings",
                   "book_flight": "book a flight to paris", "alarm": "set an alarm for six",
                   "oos": "tell me a joke about the weather"},
}


def _weights(protos: dict[str, str], dim: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((dim, len(protos)), np.float32)
    for c, text in enumerate(protos.values()):
        idx, val = featurize_reference(FAKE_SPEC, text.encode())
        w[idx, c] += gain * val
    return w, np.zeros(len(protos), np.float32)


def make_fake_ecology(folder: Path, *, policy: Policy = Policy(direct_threshold=0.6, fallback_threshold=0.3),
                      remote: str = "allowed") -> Path:
    """Write a 3-model fake-backend ecology (money, travel specialists + generalist) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for mid, protos in FAKE_MODELS.items():
        w, b = _weights(protos, FAKE_SPEC.dim, 12.0)
        np.savez(folder / f"{mid}.npz", weight=w, bias=b)
        role = "generalist" if mid == "generalist" else "specialist"
        entries.append(ModelEntry(
            id=mid, version="1", role=role, backend="fake", file=FileEntry(f"{mid}.npz", sha256_file(folder / f"{mid}.npz")),
            input="hashed-text", labels=tuple(protos), decline_label=None if role == "generalist" else "not_mine",
            calibration=Calibration(temperature=1.0)))
    route_protos = {"money": FAKE_MODELS["money"]["balance"] + " " + FAKE_MODELS["money"]["transfer"],
                    "travel": FAKE_MODELS["travel"]["book_flight"] + " " + FAKE_MODELS["travel"]["alarm"],
                    "generalist": FAKE_MODELS["generalist"]["oos"]}
    w, b = _weights(route_protos, FAKE_SPEC.dim, 10.0)
    scale = np.abs(w).max(axis=0) / 127.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    write_router(folder / "router.bin", "linear-softmax", {"weight": q, "scale": scale.astype(np.float32), "bias": b})
    m = Manifest(name="fake", version="1", description="test ecology", reject_label="oos", featurizer=FAKE_SPEC,
                 policy=Policy(**{**policy.__dict__, "remote": remote}), remote=None,
                 router=RouterSpec(FileEntry("router.bin", sha256_file(folder / "router.bin")), "linear-softmax",
                                   tuple(FAKE_MODELS)),
                 models=tuple(entries), files=())
    (folder / "ecology.toml").write_text(manifest_to_toml(m))
    return folder


@pytest.fixture()
def fake_ecology(tmp_path: Path) -> Path:
    return make_fake_ecology(tmp_path / "fake")

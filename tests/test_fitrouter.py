"""edge-eco fit-router: the per-model correctness router, fitted from real validation outcomes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_eco
from edge_eco.bundle import read_bundle
from edge_eco.datasets import load_clinc150

from conftest import CLINC, ROOT
scipy = pytest.importorskip("scipy", reason="fit-router needs the build extra (scipy)")


def test_fit_stacked_recovers_a_known_logistic_model():
    import scipy.sparse as sp

    from edge_eco.fitrouter import fit_stacked

    rng = np.random.default_rng(0)
    n, d = 4000, 20
    x = sp.csr_matrix(rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.3))
    z = rng.normal(size=n)
    w_true = np.zeros(d)
    w_true[:3] = (1.5, -2.0, 1.0)
    logit = 2.0 * z + x @ w_true - 0.5
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    a, b, w = fit_stacked(x, z, y, l2=1e-4)
    assert abs(a - 2.0) < 0.25 and abs(b + 0.5) < 0.2
    assert np.allclose(w[:3], w_true[:3], atol=0.3) and np.abs(w[3:]).max() < 0.3


def test_fit_router_installs_a_correctness_router_that_the_runtime_uses(tmp_path):
    from edge_eco.fitrouter import FILE_NAME, fit_router

    folder = tmp_path / "eco"
    shutil.copytree(ROOT / "models" / "clinc150", folder)
    val = load_clinc150(CLINC, "val")[::31]  # 100 requests
    report = fit_router(folder, val, lam=0.05, reject_share=0.18)
    _, m = read_bundle(folder)
    assert m.router.kind == "correctness" and m.router.file.path == FILE_NAME and m.router.lam == 0.05
    assert "router.bin" in {f.path for f in m.files}  # the domain router stays, verified, to refit from
    assert report["requests"] == len(val) and 0.5 <= report["direct_threshold"] <= 0.99
    assert "generalist" not in m.router.candidates and len(m.router.candidates) == 10  # asked when all decline
    assert 0.9 < report["cost_mib"]["banking"] < 1.1  # 1 MiB of int8 weights
    with edge_eco.open(folder) as c, edge_eco.open(folder, use_native=False) as py:
        assert c._route_mode == 1
        for ex in val[:60]:
            a, b = c.answer(ex.text, local_only=True), py.answer(ex.text, local_only=True)
            assert (a.label, a.path, a.provenance["route"]) == (b.label, b.path, b.provenance["route"])
            assert all(0.0 < p < 1.0 for p in a.provenance["route"]["probs"])
    # Refitting reads the domain router it was stacked on, not its own output.
    again = fit_router(folder, val, lam=0.05, reject_share=0.18)
    assert again["top_choice_correct"] == report["top_choice_correct"]
    assert read_bundle(folder)[1].router == m.router


@pytest.mark.parametrize("share", ["1.5", "-0.5", "nan", "0", "1"])
def test_a_reject_share_outside_0_1_is_refused_before_the_bundle_changes(share, tmp_path, capsys):
    # A share of 1.5 or -0.5 gave negative sample weights: the fit overflowed and a router fitted
    # to nonsense was installed in the bundle.
    from edge_eco.cli import main
    from edge_eco.fitrouter import fit_and_install

    folder = tmp_path / "eco"
    shutil.copytree(ROOT / "models" / "clinc150", folder)
    before = {f: (folder / f).read_bytes() for f in ("ecology.toml", "correctness.bin")}
    with pytest.raises(SystemExit) as exit_:
        main(["fit-router", str(folder), "--requests", str(CLINC), "--split", "val", "--reject-share", share])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--reject-share: must be a share strictly between 0 and 1" in err
    with pytest.raises(ValueError, match="reject_share must be a share strictly between 0 and 1"):
        fit_and_install(folder, load_clinc150(CLINC, "val")[:5], reject_share=float(share))
    assert {f: (folder / f).read_bytes() for f in before} == before

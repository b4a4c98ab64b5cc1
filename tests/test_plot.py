"""Tests of the routing-curve plot (edge_eco.plot). matplotlib comes with the dev extra."""

from __future__ import annotations

import sys

import pytest

from edge_eco.errors import EdgeEcoError
from edge_eco.plot import plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVES = {
    "oracle": ([0.0, 0.25, 0.5, 0.75, 1.0], [0.5, 0.75, 1.0, 1.0, 0.75]),
    "random": ([0.0, 0.5, 1.0], [0.5, 0.62, 0.75]),
}


def test_writes_a_png(tmp_path):
    out = plot_curves(CURVES, 0.5, 0.75, tmp_path / "routing.png", "routing: CLINC150 test")
    data = (tmp_path / "routing.png").read_bytes()
    assert out == tmp_path / "routing.png"
    assert data.startswith(PNG_SIGNATURE)
    assert 5_000 < len(data) < 2_000_000          # a 700x450 line plot, not an empty image


def test_accepts_a_str_path(tmp_path):
    plot_curves({"one": ([0.0, 1.0], [0.5, 0.75])}, 0.5, 0.75, str(tmp_path / "a.png"), "t")
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("curves, match", [
    ({}, "at least one curve"),
    ({"bad": ([0.0, 1.0], [0.5])}, "'bad': 2 rates but 1 accuracies"),
])
def test_bad_curves(tmp_path, curves, match):
    with pytest.raises(ValueError, match=match):
        plot_curves(curves, 0.5, 0.75, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    # None in sys.modules makes the import raise ImportError, as if matplotlib were absent.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EdgeEcoError, match=r"pip install 'edge_eco\[bench\]'") as info:
        plot_curves(CURVES, 0.5, 0.75, tmp_path / "x.png", "t")
    assert isinstance(info.value.__cause__, ImportError)
    assert not (tmp_path / "x.png").exists()

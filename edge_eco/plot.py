"""Plots for the bench commands: routing curves as a PNG. Shell (writes a file).

matplotlib is an optional dependency (the ``bench`` extra), imported only when a plot is asked
for. The figure is drawn on an Agg canvas directly, without pyplot, so no global backend or
figure registry is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import EdgeEcoError


def plot_curves(curves: dict[str, tuple[list[float], list[float]]], weak_acc: float,
                strong_acc: float, path: str | os.PathLike, title: str) -> Path:
    """Write a PNG of accuracy against remote-call percentage, one line per named curve.

    Args:
        curves: name -> (call rates as fractions in [0, 1], accuracies), e.g. from
            ``routing_metrics.summarise`` (``rates``, ``accuracy``).
        weak_acc: local-only accuracy, drawn as a horizontal dashed line.
        strong_acc: remote-only accuracy, drawn as a horizontal dashed line.
        path: where the PNG goes (its folder must exist).
        title: the figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        EdgeEcoError: matplotlib is not installed.
        ValueError: no curves, or a curve whose rates and accuracies differ in length.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    for name, (rates, accs) in curves.items():
        if len(rates) != len(accs) or len(rates) == 0:
            raise ValueError(f"curve {name!r}: {len(rates)} rates but {len(accs)} accuracies "
                             "(expected the same, non-zero number)")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EdgeEcoError("matplotlib is needed for --plot: pip install 'edge_eco[bench]'") from exc

    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (rates, accs) in curves.items():
        ax.plot([100.0 * float(r) for r in rates], [float(a) for a in accs], label=name, linewidth=1.6)
    ax.axhline(float(weak_acc), linestyle="--", color="0.45", linewidth=1.0,
               label=f"local only ({float(weak_acc):.3f})")
    ax.axhline(float(strong_acc), linestyle="--", color="0.1", linewidth=1.0,
               label=f"remote only ({float(strong_acc):.3f})")
    ax.set_xlim(0.0, 100.0)
    ax.set_xlabel("remote calls (%)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def plot_bars(groups: dict[str, dict[str, float]], path: str | os.PathLike, title: str) -> Path:
    """Write a PNG of grouped bars: one group per key of ``groups``, one bar per series in it.

    Raises:
        EdgeEcoError: matplotlib is not installed.
        ValueError: no groups.
    """
    if not groups:
        raise ValueError("plot_bars needs at least one group")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EdgeEcoError("matplotlib is needed for --plot: pip install 'edge_eco[bench]'") from exc
    series = list(dict.fromkeys(s for g in groups.values() for s in g))  # a series may skip some groups
    fig = Figure(figsize=(max(7.0, 0.6 * len(groups)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    for j, s in enumerate(series):
        ax.bar([i + j * width for i in range(len(groups))], [g.get(s, 0.0) for g in groups.values()],
               width=width, label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels(list(groups), rotation=45, ha="right", fontsize="small")
    ax.axhline(1.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_title(title)
    # beside the axes, not over the bars (it had covered the last groups' bars)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out

"""Shared pieces of the tasks' reports: bootstrap intervals, table cells and plots.

Every interval here is a percentile bootstrap over the units that were sampled independently (a
dialogue, a prompt), so turns of one dialogue are never treated as independent draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Estimate:
    """A statistic with its bootstrap interval.

    Attributes:
        value: The statistic on the data as observed (NaN when there is none).
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of resampled units.
    """

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """Plain data for JSON reports."""
        return asdict(self)


def ratio_replicates(numerators: Sequence[float], denominators: Sequence[float], *, samples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``samples`` bootstrap replicates of ``sum(num) / sum(den)``, resampling units with replacement."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) == 0 or den.sum() <= 0:
        return np.full(samples, np.nan)
    idx = rng.integers(0, len(num), size=(samples, len(num)))
    return num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)


def estimate(value: float, replicates: np.ndarray, n: int, confidence: float) -> Estimate:
    """An :class:`Estimate` from a value and its bootstrap replicates (percentile interval)."""
    alpha = (1.0 - confidence) / 2.0
    finite = replicates[np.isfinite(replicates)]
    if not finite.size or not np.isfinite(value):
        return Estimate(float(value), float("nan"), float("nan"), n)
    return Estimate(float(value), float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)), n)


def ratio_estimate(numerators: Sequence[float], denominators: Sequence[float], *, samples: int, confidence: float,
                   rng: np.random.Generator) -> tuple[Estimate, np.ndarray]:
    """``sum(num) / sum(den)`` with its interval, and the replicates (to combine several estimates)."""
    den = float(np.sum(denominators))
    value = float(np.sum(numerators)) / den if den > 0 else float("nan")
    reps = ratio_replicates(numerators, denominators, samples=samples, rng=rng)
    return estimate(value, reps, len(numerators), confidence), reps


def fmt(x: float | None, digits: int = 2) -> str:
    """A number for a table (``n/a`` for a missing one)."""
    if x is None or x != x:
        return "n/a"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def cell(stat: dict[str, float] | Estimate, *, bold: bool = False, digits: int = 3) -> str:
    """``value [low, high]`` for a markdown table, the value bold when asked."""
    s = stat.as_dict() if isinstance(stat, Estimate) else stat
    if s["value"] is None or s["value"] != s["value"]:
        return "n/a"
    value = f"{s['value']:.{digits}f}"
    value = f"**{value}**" if bold else value
    if s.get("low") is None or s["low"] != s["low"]:
        return value
    return f"{value} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pyplot():
    """Matplotlib's pyplot on the non-interactive backend (reports are written as PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(ax: Any, matrix: Sequence[Sequence[float]], xlabels: Sequence[str], ylabels: Sequence[str], title: str,
            *, vmin: float = 0.0, vmax: float = 1.0) -> None:
    """A labelled heat map with each cell's value written in it."""
    data = np.array(matrix, dtype=float)
    image = ax.imshow(data, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    middle = (vmin + vmax) / 2
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, fmt(v), ha="center", va="center", color="white" if not v == v or v < middle else "black")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def grouped_bars(ax: Any, rows: dict[str, dict[str, dict[str, float]]], groups: Sequence[str],
                 group_labels: Sequence[str], title: str, ylabel: str) -> None:
    """Bars per group for every row, with the rows' intervals as error bars."""
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(groups))
    for i, (label, stats) in enumerate(rows.items()):
        vals = np.array([stats[g]["value"] if stats[g]["value"] is not None else np.nan for g in groups], dtype=float)
        low = np.array([stats[g].get("low", np.nan) for g in groups], dtype=float)
        high = np.array([stats[g].get("high", np.nan) for g in groups], dtype=float)
        err = np.nan_to_num(np.stack([vals - low, high - vals]).clip(min=0))
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, np.nan_to_num(vals), width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, group_labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def line_panels(panels: dict[str, dict[str, Sequence[tuple[float, float]]]], path: str | Path, *,
                xlabel: str = "step", columns: int = 4) -> None:
    """A grid of line plots written to ``path``: one panel per key of ``panels``, one line per label in it.

    Args:
        panels: ``title -> {line label -> [(x, y), ...]}``; nothing is written when it is empty.
        path: The PNG file.
        xlabel: The x axis of every panel.
        columns: Panels per row at most.
    """
    if not panels:
        return
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, points in lines.items():
            ax.plot(*zip(*points), marker="o", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> None:
    """Writes a figure as PNG and frees it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)

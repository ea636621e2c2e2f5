"""Shared pieces of the tasks' reports: bootstrap intervals, table cells and plots.

Every interval here is a percentile bootstrap over the units that were sampled independently (a
topic with all its dialogues, a prompt), so turns of one dialogue, or dialogues of one topic, are
never treated as independent draws.
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


@dataclass
class ClusterDraw:
    """Bootstrap draws of whole clusters (topics, requests), shared by the statistics of one report.

    Every statistic computed from the same draw resamples the same clusters, so figures of one
    row (student types) and of different rows (played on the same clusters) stay paired.

    Attributes:
        ids: The distinct cluster ids, in first-seen order.
        index: ``(samples, len(ids))`` positions into ``ids``, drawn with replacement.
    """

    ids: list[Any]
    index: np.ndarray

    @classmethod
    def draw(cls, clusters: Sequence[Any], *, samples: int, rng: np.random.Generator) -> ClusterDraw:
        """Draws ``samples`` resamples of the distinct ids in ``clusters``."""
        ids = list(dict.fromkeys(clusters))
        return cls(ids, rng.integers(0, len(ids), size=(samples, len(ids))) if ids else np.zeros((samples, 0), int))


def clustered_ratio(numerators: Sequence[float], denominators: Sequence[float], clusters: Sequence[Any],
                    draw: ClusterDraw, *, confidence: float) -> tuple[Estimate, np.ndarray]:
    """``sum(num) / sum(den)`` with a bootstrap interval that resamples whole clusters.

    Units of one cluster (dialogues of one topic) are drawn together, so units that agree because
    they share a cluster do not count as independent evidence.

    Args:
        numerators: Per unit (e.g. good turns of a dialogue).
        denominators: Per unit (e.g. turns of that dialogue).
        clusters: The cluster id of each unit (must be among ``draw.ids``).
        draw: The shared cluster draws.
        confidence: Level of the interval.

    Returns:
        The estimate (``n`` = clusters present) and its replicates.
    """
    position = {c: i for i, c in enumerate(draw.ids)}
    num, den = np.zeros(len(draw.ids)), np.zeros(len(draw.ids))
    for x, d, c in zip(numerators, denominators, clusters):
        num[position[c]] += x
        den[position[c]] += d
    total = den.sum()
    value = float(num.sum() / total) if total > 0 else float("nan")
    if not len(draw.ids) or total <= 0:
        return Estimate(value, float("nan"), float("nan"), 0), np.full(len(draw.index), np.nan)
    d_rep = den[draw.index].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(d_rep > 0, num[draw.index].sum(1) / np.where(d_rep > 0, d_rep, 1), np.nan)
    return estimate(value, reps, int((den > 0).sum()), confidence), reps


def unit_sums(clusters: Sequence[Any], numerators: Sequence[float],
              denominators: Sequence[float] | None = None) -> dict[str, list[float]]:
    """``{cluster: [sum of numerators, sum of denominators]}`` of one figure of one row.

    Reports store these under ``units`` so that ``algorithms.compare`` can pool several training
    seeds with a bootstrap that resamples seeds and, within each, clusters (a figure is the ratio
    of the sums; a denominator of 1 per unit makes it a mean).
    """
    out: dict[str, list[float]] = {}
    denominators = [1.0] * len(numerators) if denominators is None else denominators
    for c, x, d in zip(clusters, numerators, denominators):
        pair = out.setdefault(str(c), [0.0, 0.0])
        pair[0] += float(x)
        pair[1] += float(d)
    return out


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

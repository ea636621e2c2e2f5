r"""Short variants of a run side by side, so a choice of defaults is a measurement.

Run the variants with Hydra's multirun (one after the other, never two jobs at once on a small
machine), each with a learning curve, then tabulate the folder::

    python -m algorithms.opsd -m env=tutoring algorithm.steps=20 algorithm.eval.every=5 \
        algorithm.lr=1e-4,3e-4 algorithm.head_lr_mult=2,5 hydra.sweep.dir=runs/sweep/lr
    python -m algorithms.sweep runs/sweep/lr                     # sweep.md, sweep.png in that folder
    python -m algorithms.sweep runs/sweep/lr --metrics 'questions_per_turn/*' 'satisfaction/*/mean'

Every run folder under the given folder (any depth) that has a ``history.jsonl`` is a variant,
named by the command-line overrides it was started with. The table has one column per variant and
one row per learning-curve figure (``curve/<metric>`` at the last evaluation, with the step of its
best value in brackets), plus wall time; ``sweep.png`` plots the chosen figures over steps.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path
from typing import Any

import yaml

from algorithms.runs import read_history
from envs.tasks.reporting import fmt, line_panels, markdown_table

LOWER_IS_BETTER = ("*degenerate*", "*cut_at_limit*")  # figures whose best point is their minimum
DEFAULT_METRICS = ("questions_per_turn/*", "style/*", "satisfaction/*/mean", "quality/*/degenerate_share",
                   "q/*", "q_own", "delta_diag", "pss/*", "lottery/*/mean")


def variant_name(run: Path, root: Path) -> str:
    """The overrides a run was started with (from its first ``.hydra/*/overrides.yaml``), else its folder."""
    found = sorted((run / ".hydra").glob("*/overrides.yaml")) or sorted((run / ".hydra").glob("overrides.yaml"))
    if found:
        overrides = yaml.safe_load(found[0].read_text()) or []
        shared = [o for o in overrides if not o.startswith(("hydra.", "resume=", "evaluate="))]
        if shared:
            return " ".join(shared)
    return str(run.relative_to(root))


def collect(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Variant name -> its history rows, for every run folder under ``root``."""
    runs = sorted(p.parent for p in root.rglob("history.jsonl"))
    if not runs:
        raise FileNotFoundError(f"No run folders (with history.jsonl) under {root}.")
    return {variant_name(run, root): read_history(run) for run in runs}


def curve_series(history: list[dict[str, Any]], patterns: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """``metric -> [(step, value)]`` of the learning-curve figures that match ``patterns``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        for key, value in row.items():
            if not key.startswith("curve/") or not isinstance(value, (int, float)) or value != value:
                continue
            name = key[len("curve/"):]
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                series.setdefault(name, []).append((int(row["step"]), float(value)))
    return series


def tabulate(variants: dict[str, list[dict[str, Any]]], patterns: tuple[str, ...]) -> str:
    """The markdown table: one column per variant, one row per figure (last value, best step).

    The best point is the largest value, or the smallest for the figures in ``LOWER_IS_BETTER``.
    """
    series = {name: curve_series(history, patterns) for name, history in variants.items()}
    metrics = sorted({m for s in series.values() for m in s})
    rows = []
    for metric in metrics:
        cells = []
        for s in series.values():
            points = s.get(metric)
            if not points:
                cells.append("n/a")
                continue
            lower = any(fnmatch.fnmatch(metric, p) for p in LOWER_IS_BETTER)
            best = (min if lower else max)(points, key=lambda p: p[1])
            cells.append(f"{fmt(points[-1][1], 3)} (best {fmt(best[1], 3)} @ {best[0]})")
        rows.append([metric] + cells)
    steps = [str(h[-1]["step"]) if h else "0" for h in variants.values()]
    learn = [fmt(sum(r.get("perf/learn_s", 0) + r.get("perf/idle_s", 0) for r in h) / 60, 1) for h in variants.values()]
    rows += [["steps"] + steps, ["training minutes (rollouts + updates)"] + learn]
    shared, own = split_overrides(list(variants))
    header = ["figure (last curve point)"] + [f"[{i + 1}]" for i in range(len(own))]
    legend = [f"[{i + 1}] {name or '(the shared settings only)'}" for i, name in enumerate(own)]
    lead = ["Variants" + (f" (all with: {shared}):" if shared else ":"), ""]
    return "\n".join(lead + legend + [""] + markdown_table(header, rows)) + "\n"


def split_overrides(names: list[str]) -> tuple[str, list[str]]:
    """The overrides every variant shares, and each variant's own ones (a name is space-separated overrides).

    >>> split_overrides(["env=a lr=1", "env=a lr=2"])
    ('env=a', ['lr=1', 'lr=2'])
    """
    tokens = [name.split() for name in names]
    common = [t for t in tokens[0] if all(t in other for other in tokens[1:])] if len(tokens) > 1 else []
    return " ".join(common), [" ".join(t for t in ts if t not in common) for ts in tokens]


def plot(variants: dict[str, list[dict[str, Any]]], patterns: tuple[str, ...], path: Path) -> None:
    """One panel per figure, one line per variant."""
    series = [curve_series(history, patterns) for history in variants.values()]
    metrics = sorted({m for s in series for m in s})
    line_panels({metric: {f"[{i + 1}]": s[metric] for i, s in enumerate(series) if metric in s} for metric in metrics},
                path)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m algorithms.sweep``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder holding the variants' run folders")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        help="glob patterns over the curve/ figures (default: a headline set)")
    return parser


def main() -> None:
    """Command line: ``python -m algorithms.sweep <folder> [--metrics glob ...]``."""
    args = build_parser().parse_args()
    variants = collect(args.folder)
    markdown = tabulate(variants, tuple(args.metrics))
    (args.folder / "sweep.md").write_text(markdown)
    plot(variants, tuple(args.metrics), args.folder / "sweep.png")
    print(markdown)
    print(f"[sweep] wrote {args.folder / 'sweep.md'} and sweep.png")


if __name__ == "__main__":
    main()

"""Several finished runs of one task side by side, from their ``eval.json`` reports.

    python -m algorithms.compare runs/opsd/rubric runs/opsd/no_rubric runs/opsd/mt --labels rubric,no-rubric,MT-OPSD

The task of the first run (its ``config.yaml``) decides the tables: for the persona critic, the
paper's Table 2 (Q_own, Delta_base, Delta_diag), every run's own-facet diagonal and the diagonal
wins between multi-head runs; for persona math (RLVR vs PerMix), accuracy per lottery persona, PSS
and fidelity of every run's rows; for tutoring, every run's rows with satisfaction per student type and
the style judge's figures. The markdown is printed and, with ``--out``, written to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from algorithms.tasks.math import math_markdown, plot_accuracy
from algorithms.tasks.persona import compare_runs as compare_persona
from algorithms.tasks.reporting import fmt, markdown_table
from configs.trust import ALLOW_KEY, load_saved_config


def _tutoring(reports: dict[str, dict[str, Any]]) -> str:
    table = []
    for label, report in reports.items():
        for name, row in report["rows"].items():
            sat = row["satisfaction"]
            table.append([label, name] + [fmt(sat[t]["value"], 3) for t in report["student_types"]]
                         + [fmt(sat["mean"]["value"], 3)] + [fmt(row["style"][s]) for s in report["styles"]]
                         + [fmt(row["questions_per_turn"])])
    first = next(iter(reports.values()))
    header = (["Run", "Row"] + [f"{t} stu." for t in first["student_types"]] + ["Mean"]
              + [f"{s} judge" for s in first["styles"]] + ["questions / turn"])
    return "\n".join(markdown_table(header, table)) + "\n"


def compare(run_dirs: list[Path], labels: list[str] | None = None, plot: Path | None = None,
            allow_targets: list[str] | None = None) -> str:
    """Markdown tables comparing the runs' evaluations (see the module docstring).

    Args:
        run_dirs: Finished run folders of one task (each with ``eval.json``).
        labels: A name per run (default: the folder names).
        plot: For math runs, also draw accuracy per evaluation persona of every run's rows here.
        allow_targets: Unregistered ``_target_`` classes the runs' ``config.yaml`` may name (nothing is
            called here, but a config naming anything else is refused as everywhere else).
    """
    labels = labels or [d.name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(run_dirs)} runs but {len(labels)} labels.")
    saved = [load_saved_config(run / "config.yaml", {ALLOW_KEY: allow_targets or []}) for run in run_dirs]
    reports = {}
    for label, run in zip(labels, run_dirs):
        path = run / "eval.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run} has no eval.json; evaluate it first with the trainer that made it: "
                                    f"python -m algorithms.opsd evaluate={run} (or algorithms.rlvr)")
        reports[label] = json.loads(path.read_text())["report"]
    target = str(saved[0].env.get("_target_", ""))
    if target.endswith("PersonaTask"):
        return compare_persona(reports)
    if target.endswith("MathTask"):
        if plot is not None:
            plot_accuracy({f"{run} {name}": row for run, report in reports.items()
                           for name, row in report["rows"].items()}, plot)
        return math_markdown(reports)
    return _tutoring(reports)


def main() -> None:
    """Command line: ``python -m algorithms.compare <run> <run> ... [--labels a,b] [--out file.md]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with eval.json)")
    parser.add_argument("--labels", default=None, help="comma-separated names for the runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the markdown here (and, for math runs, the accuracy plot next to it as .png)")
    parser.add_argument("--allow-targets", default="",
                        help="comma-separated _target_ classes the runs' config.yaml may name besides the registered "
                             "plug-ins (your own students or judges)")
    args = parser.parse_args()
    plot = args.out.with_suffix(".png") if args.out else None
    allow = [t for t in args.allow_targets.split(",") if t]
    markdown = compare(args.runs, args.labels.split(",") if args.labels else None, plot=plot, allow_targets=allow)
    print(markdown)
    if args.out:
        args.out.write_text(markdown)


if __name__ == "__main__":
    main()

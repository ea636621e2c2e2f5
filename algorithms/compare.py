"""Finished runs side by side, pooled over training seeds, from their ``<split>.json`` reports.

    python -m algorithms.opsd -m env=tutoring seed=0,1,2 algorithm.eval.split=test   # 3 seeds, reported on test
    python -m algorithms.compare runs/opsd/<sweep> --split test
    python -m algorithms.compare runs/opsd/rubric runs/opsd/no_rubric --labels rubric,no-rubric

Each argument is one *configuration*: a run folder, or a multirun folder (``-m``) whose runs are
grouped by their config with ``seed`` left out, one configuration per group. For every figure a
report lists under ``units`` (satisfaction per student type, Q_own, accuracy...), the first table
gives the mean over a configuration's seeds with a bootstrap interval that resamples seeds and,
within each seed, the report's independent units (topics, requests, questions), so the interval
carries the seed-to-seed spread as well as the sampling of units. With several configurations,
the differences against the first one follow (unpaired: seeds and units are drawn apart), after a
line naming the config keys in which the configurations differ. When the configurations include
exactly one that keeps the feedback from the teacher (``env.teacher_feedback=false``) and others
that show it, the **feedback gain** of each (with minus without, every figure and row) follows.

Then the task of the first run (its ``config.yaml``) decides the per-run tables: for the persona
critic, the paper's Table 2 (Q_own, Delta_base, Delta_diag), every run's own-facet diagonal and the
diagonal wins between multi-head runs; for persona math, accuracy per persona, PSS and fidelity;
for tutoring, satisfaction per student type and the style judge's figures. The markdown is printed
and, with ``--out``, written to a file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from configs.trust import ALLOW_KEY, load_saved_config
from envs.tasks.math import math_markdown, plot_accuracy
from envs.tasks.persona import compare_runs as compare_persona
from envs.tasks.reporting import Estimate, estimate, fmt, markdown_table

# Keys that say how a run was started, not what it is: two seeds of one configuration differ only here.
_RUN_ONLY = ("seed", "resume", "evaluate", "overwrite", ALLOW_KEY)
FEEDBACK_KEY = "env.teacher_feedback"


@dataclass
class Configuration:
    """One configuration: its label and one run folder per training seed.

    Attributes:
        label: The name in the tables.
        runs: The run folders.
        configs: Their saved configs (vetted by :func:`configs.trust.load_saved_config`).
        reports: Their ``report`` of the chosen split's JSON.
    """

    label: str
    runs: list[Path]
    configs: list[Any] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)


def _plain(cfg: Any) -> dict[str, Any]:
    """The config as plain containers with the per-invocation keys left out."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in _RUN_ONLY:
        plain.pop(key, None)
    if isinstance(plain.get("algorithm"), dict):
        plain["algorithm"].pop("stop_after", None)
        if isinstance(plain["algorithm"].get("eval"), dict):  # the end-of-run report's split: compare reads --split
            plain["algorithm"]["eval"].pop("split", None)
    return plain


def _identity(cfg: Any) -> str:
    """The config as a string with the per-invocation keys left out (equal for seeds of one configuration)."""
    return json.dumps(_plain(cfg), sort_keys=True, default=str)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value of nested dicts (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def differing_keys(configs: list[Configuration]) -> dict[str, list[Any]]:
    """The dotted config keys whose values differ between configurations, with each one's value (None: absent)."""
    flats = [_flat(_plain(c.configs[0])) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return {k: [f.get(k) for f in flats] for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1}


def feedback_baseline(configs: list[Configuration]) -> str | None:
    """The label of the one configuration whose teacher never sees the feedback (``env.teacher_feedback=false``).

    None unless exactly one configuration keeps the feedback away and at least one other shows it:
    then the others' differences against it are the feedback gain.
    """
    shown = [bool(OmegaConf.select(c.configs[0], FEEDBACK_KEY, default=False)) for c in configs]
    without = [c.label for c, s in zip(configs, shown) if not s]
    return without[0] if len(without) == 1 and any(shown) else None


def configurations(paths: list[Path], labels: list[str] | None = None,
                   allow_targets: list[str] | None = None) -> list[Configuration]:
    """Turns the command line's folders into configurations (see the module docstring)."""
    out: list[Configuration] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            runs = [path]
        else:
            runs = sorted(p.parent for p in path.glob("*/config.yaml"))
            if not runs:
                raise FileNotFoundError(f"{path} is neither a run folder (config.yaml) nor a multirun folder of runs.")
        groups: dict[str, Configuration] = {}
        for run in runs:
            cfg = load_saved_config(run / "config.yaml", {ALLOW_KEY: allow_targets or []})
            group = groups.setdefault(_identity(cfg), Configuration(path.name, []))
            group.runs.append(run)
            group.configs.append(cfg)
        if len(groups) > 1:
            for i, group in enumerate(groups.values()):
                group.label = f"{path.name}/{i}:{group.runs[0].name}"
        out += list(groups.values())
    if labels is not None:
        if len(labels) != len(out):
            raise ValueError(f"{len(out)} configurations ({', '.join(c.label for c in out)}) but {len(labels)} labels.")
        for config, label in zip(out, labels):
            config.label = label
    return out


def seed_pooled(per_seed: list[dict[str, list[float]]], *, samples: int, confidence: float,
                rng: np.random.Generator) -> tuple[Estimate, np.ndarray]:
    """The mean over seeds of a ratio figure, with a two-level bootstrap interval.

    Args:
        per_seed: For each seed, ``{unit: [numerator sum, denominator sum]}`` (a report's ``units``).
        samples: Bootstrap replicates.
        confidence: Level of the interval.
        rng: Random generator.

    Returns:
        The estimate (value: mean of the seeds' ratios; ``n``: seeds) and the replicates. Each
        replicate draws seeds with replacement and, for each drawn seed, its units with replacement.
    """
    ratios, boot = [], []
    for units in per_seed:
        pairs = np.array([v for v in units.values() if v[1] > 0], dtype=float).reshape(-1, 2)
        if not len(pairs):
            continue
        ratios.append(pairs[:, 0].sum() / pairs[:, 1].sum())
        idx = rng.integers(0, len(pairs), size=(samples, len(pairs)))
        boot.append(pairs[idx, 0].sum(1) / pairs[idx, 1].sum(1))  # (samples,)
    if not ratios:
        return Estimate(float("nan"), float("nan"), float("nan"), 0), np.full(samples, np.nan)
    boot_arr = np.stack(boot)  # (S, samples)
    pick = rng.integers(0, len(ratios), size=(samples, len(ratios)))  # seeds drawn per replicate
    reps = boot_arr[pick, np.arange(samples)[:, None]].mean(1)
    return estimate(float(np.mean(ratios)), reps, len(ratios), confidence), reps


def pooled_figures(configs: list[Configuration], *, samples: int = 2000, confidence: float = 0.95,
                   seed: int = 0, gain_from: str | None = None) -> dict[str, Any]:
    """Every figure of every row of every configuration, pooled over its seeds, and the differences.

    Args:
        configs: The configurations (the first is the baseline of ``differences``).
        samples: Bootstrap replicates.
        confidence: Level of the intervals.
        seed: Seeds the bootstrap.
        gain_from: Also give every other configuration minus this one, from the same replicates
            (the feedback gain, :func:`feedback_baseline`).

    Returns:
        ``{"figures": {figure: {row: {label: {"value", "low", "high", "n", "seeds": [...]}}}},
        "differences": {figure: {row: {label: estimate of (label - first label)}}}, "baseline": first
        label, "confidence"}``, plus ``"gain"`` (the same shape as ``differences``) with ``gain_from``.
    """
    rng = np.random.default_rng(seed)
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    replicates: dict[tuple[str, str, str], np.ndarray] = {}
    for config in configs:
        names = sorted({f for r in config.reports for f in r.get("units", {})})
        for figure in names:
            rows = list(dict.fromkeys(row for r in config.reports for row in r["units"].get(figure, {})))
            for row in rows:
                per_seed = [r["units"][figure][row] for r in config.reports if row in r["units"].get(figure, {})]
                est, reps = seed_pooled(per_seed, samples=samples, confidence=confidence, rng=rng)
                seeds = [sum(v[0] for v in u.values()) / max(sum(v[1] for v in u.values()), 1e-12) for u in per_seed]
                figures.setdefault(figure, {}).setdefault(row, {})[config.label] = {**est.as_dict(), "seeds": seeds}
                replicates[(figure, row, config.label)] = reps

    def against(base: str | None) -> dict[str, dict[str, dict[str, Any]]]:
        differences: dict[str, dict[str, dict[str, Any]]] = {}
        for (figure, row, label), reps in replicates.items():
            if label == base or (figure, row, base) not in replicates:
                continue
            value = figures[figure][row][label]["value"] - figures[figure][row][base]["value"]
            diff = estimate(value, reps - replicates[(figure, row, base)], 0, confidence).as_dict()
            differences.setdefault(figure, {}).setdefault(row, {})[label] = diff
        return differences

    first = configs[0].label if configs else None
    pooled = {"figures": figures, "differences": against(first), "confidence": confidence, "baseline": first}
    if gain_from is not None:
        pooled["gain"], pooled["gain_from"] = against(gain_from), gain_from
    return pooled


def _interval(e: dict[str, Any], digits: int = 3) -> str:
    if e["value"] is None or e["value"] != e["value"]:
        return "n/a"
    if e.get("low") is None or e["low"] != e["low"]:
        return fmt(e["value"], digits)
    return f"{fmt(e['value'], digits)} [{fmt(e['low'], digits)}, {fmt(e['high'], digits)}]"


def pooled_markdown(pooled: dict[str, Any], unit: str) -> str:
    """The pooled figures as markdown: one table per figure, rows x configurations."""
    lines = [f"Mean over training seeds with {pooled['confidence']:.0%} bootstrap intervals that resample seeds "
             f"and, within each seed, {unit}s; per-seed values in brackets after the count.", ""]
    for figure, rows in pooled["figures"].items():
        labels = list(dict.fromkeys(label for by_label in rows.values() for label in by_label))
        table = [[row] + [(f"{_interval(by_label[label])} (n={by_label[label]['n']}: "
                           f"{', '.join(fmt(v, 3) for v in by_label[label]['seeds'])})") if label in by_label else ""
                          for label in labels] for row, by_label in rows.items()]
        lines += [f"**{figure}**", ""] + markdown_table(["Row"] + labels, table) + [""]
    if pooled["differences"]:
        lines += [f"Differences against {pooled['baseline']} (same figure and row):", ""]
        lines += differences_table(pooled["differences"], pooled["baseline"]) + [""]
    if pooled.get("gain"):
        lines += [f"**Feedback gain**: each configuration whose teacher sees the feedback minus {pooled['gain_from']}, "
                  f"whose teacher does not (`{FEEDBACK_KEY}=false`):", ""]
        lines += differences_table(pooled["gain"], pooled["gain_from"]) + [""]
    return "\n".join(lines)


def differences_table(differences: dict[str, Any], baseline: str) -> list[str]:
    """Differences as markdown rows: figure, row, configuration, difference with its interval."""
    table = [[figure, row, label, _interval(d)] for figure, rows in differences.items()
             for row, by_label in rows.items() for label, d in by_label.items()]
    return markdown_table(["Figure", "Row", "Configuration", f"minus {baseline}"], table)


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


def compare(paths: list[Path], labels: list[str] | None = None, plot: Path | None = None,
            allow_targets: list[str] | None = None, split: str = "eval", samples: int = 2000) -> str:
    """Markdown tables comparing configurations over their seeds, then run by run (see the module docstring).

    Args:
        paths: Run folders or multirun folders of one task.
        labels: A name per configuration (default: the folder names).
        plot: For math runs, also draw accuracy per evaluation persona of every run's rows here.
        allow_targets: Unregistered ``_target_`` classes the runs' ``config.yaml`` may name (nothing is
            called here, but a config naming anything else is refused as everywhere else).
        split: Which report to read: ``eval`` (``eval.json``) or ``test`` (``test.json``).
        samples: Bootstrap replicates of the pooled intervals.
    """
    configs = configurations(paths, labels, allow_targets)
    per_run: dict[str, dict[str, Any]] = {}
    for config in configs:
        for run in config.runs:
            path = run / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{run} has no {split}.json; evaluate it on that split with the trainer that made it: "
                    f"python -m algorithms.opsd evaluate={run} algorithm.eval.split={split} (or algorithms.rlvr)")
            report = json.loads(path.read_text())["report"]
            config.reports.append(report)
            per_run[config.label if len(config.runs) == 1 else f"{config.label}/{run.name}"] = report
    unit = next((r.get("unit") for r in per_run.values() if r.get("unit")), "unit")
    markdown = f"Split: {split}.\n\n"
    if len(configs) > 1:
        keys = differing_keys(configs)
        markdown += ("The configurations differ in: " + "; ".join(
            f"`{k}` ({', '.join(json.dumps(v, default=str) for v in values)})" for k, values in keys.items())
            if keys else "The configurations have identical configs.") + "\n\n"
    if any(r.get("units") for r in per_run.values()):
        pooled = pooled_figures(configs, samples=samples, gain_from=feedback_baseline(configs))
        markdown += pooled_markdown(pooled, unit) + "\n"
    target = str(configs[0].configs[0].env.get("_target_", ""))
    if target.endswith("PersonaTask"):
        return markdown + compare_persona(per_run)
    if target.endswith("MathTask"):
        if plot is not None:
            plot_accuracy({f"{run} {name}": row for run, report in per_run.items()
                           for name, row in report["rows"].items()}, plot)
        return markdown + math_markdown(per_run)
    return markdown + _tutoring(per_run)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m algorithms.compare``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="finished run folders, or multirun folders whose runs are seeds of one configuration")
    parser.add_argument("--labels", default=None, help="comma-separated names for the configurations")
    parser.add_argument("--split", default="eval", choices=("eval", "test"),
                        help="which evaluation to read (eval.json or test.json; default eval)")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap replicates of the pooled intervals")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the markdown here (and, for math runs, the accuracy plot next to it as .png)")
    parser.add_argument("--allow-targets", default="",
                        help="comma-separated _target_ classes the runs' config.yaml may name besides the registered "
                             "plug-ins (your own students or judges)")
    return parser


def main() -> None:
    """Command line: ``python -m algorithms.compare <run or sweep> ... [--labels a,b] [--split test] [--out f.md]``."""
    args = build_parser().parse_args()
    plot = args.out.with_suffix(".png") if args.out else None
    allow = [t for t in args.allow_targets.split(",") if t]
    markdown = compare(args.runs, args.labels.split(",") if args.labels else None, plot=plot, allow_targets=allow,
                       split=args.split, samples=args.samples)
    print(markdown)
    if args.out:
        args.out.write_text(markdown)


if __name__ == "__main__":
    main()

"""Pairwise win rates of benchmark rows against the equal blend and each fixed head (000 Table 3).

Every row of a benchmark plays the same held-out episodes with the same seeds, so the first
generated turn of two rows follows the same prefix. A *challenger* (a router, Persona-judge, a
reranker...) is compared with each *opponent* (the equal blend, every fixed head) on that first
turn: the task builds what the pairwise judge may see (:meth:`envs.tasks.Task.comparison`;
for the persona critic, the request and the two responses only) and the judge gives the
challenger's preference on ``{-1, -0.5, 0, 0.5, 1}``. The win rate counts a win as 1 and a tie as
1/2 (the paper's numbers are multiples of 0.005, which fits that rule), with a bootstrap interval
over episodes; the share of decisive verdicts is reported beside it, and the judge's slot-A pick
rate when it shows the two in a random order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.tasks.base import EpisodeRecord, Task
from envs.tasks.reporting import cell, markdown_table, ratio_estimate


def win_scores(preferences: Sequence[float]) -> np.ndarray:
    """1 for a preference above 0 (a win), 1/2 for a tie, 0 for a loss."""
    p = np.asarray(preferences, dtype=float)
    return np.where(p > 0, 1.0, np.where(p < 0, 0.0, 0.5))


def first_turn_preferences(task: Task, judge: Any, challenger: Sequence[EpisodeRecord],
                           opponent: Sequence[EpisodeRecord]) -> list[float]:
    """The judge's preference for the challenger's first turn over the opponent's, episode by episode."""
    pairs = [(a, b) for a, b in zip(challenger, opponent) if a.actions and b.actions]
    if any(a.options != b.options for a, b in pairs):
        raise ValueError("Win rates need the rows to play the same episodes in the same order.")
    comparisons = [task.comparison(a.observations[0], a.start, a.actions[0], b.actions[0],
                                   a.feedback[0] if a.feedback else "", b.feedback[0] if b.feedback else "")
                   for a, b in pairs]
    return [float(x) for x in judge.compare_batch(comparisons)] if comparisons else []


def win_rates(task: Task, judge: Any, rows: dict[str, list[EpisodeRecord]], challengers: Sequence[str],
              opponents: Sequence[str], *, bootstrap: int, confidence: float, seed: int) -> dict[str, Any]:
    """Win rate (wins + ties / 2) of every challenger row against every opponent row.

    Returns:
        ``{"rates": {challenger: {opponent: {"value", "low", "high", "n", "decisive"}}},
        "slot_a_rate": float | None}``.
    """
    rng = np.random.default_rng(seed)
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for name in challengers:
        rates[name] = {}
        for other in opponents:
            prefs = first_turn_preferences(task, judge, rows[name], rows[other])
            scores = win_scores(prefs)
            n = len(scores)
            est, _ = ratio_estimate(scores, np.ones(n), samples=bootstrap, confidence=confidence, rng=rng)
            rates[name][other] = {"value": est.value, "low": est.low, "high": est.high, "n": n,
                                  "decisive": float(np.mean(np.abs(prefs) >= 0.5)) if n else float("nan")}
    slot = getattr(judge, "slot_a_rate", None)
    return {"rates": rates, "slot_a_rate": None if slot is None or slot != slot else float(slot)}


def win_rate_markdown(results: dict[str, Any], judge_name: str, confidence: float) -> str:
    """The win-rate table (challengers by opponents) and the judge's position-bias check."""
    rates = results["rates"]
    if not rates:
        return ""
    opponents = list(next(iter(rates.values())))
    lines = ["", f"Win rate on the first turn (same prefix; wins + ties/2, {confidence:.0%} bootstrap interval "
                 f"over episodes) by the pairwise judge {judge_name}:", ""]
    lines += markdown_table(["Policy", *(f"vs {o}" for o in opponents)],
                            [[name, *(cell(rates[name][o]) for o in opponents)] for name in rates])
    decisive = [r["decisive"] for row in rates.values() for r in row.values() if r["n"]]
    if decisive:
        lines += ["", f"Decisive verdicts (|preference| >= 0.5): {np.mean(decisive):.2f} of the comparisons."]
    if results.get("slot_a_rate") is not None:
        lines += [f"Slot-A pick rate of the judge (position bias; 0.5 is none): {results['slot_a_rate']:.3f}."]
    return "\n".join(lines) + "\n"

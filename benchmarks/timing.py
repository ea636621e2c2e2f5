"""Timing helpers shared by the speed benchmarks: interleaved rounds and ratios paired within a round.

This machine's speed drifts by 10-20% over minutes, so configurations timed one after another put
the drift into the ratios between them. Timing them in rounds of alternating order, and taking the
median over rounds of the ratio within a round, keeps it out.
"""

from __future__ import annotations

import argparse
import statistics


def interleaved(configs: list, repeats: int, measure) -> list[list]:
    """Every config's ``measure(config, repeat)`` over ``repeats`` rounds that alternate direction.

    Round r runs every config once, forwards when r is even and backwards when odd (A B C, C B A,
    ...). A slow drift of the machine's speed then reaches every config alike, where timing one
    config after another would put it into the ratios between them.

    Returns:
        One list per config, its measurements in round order.
    """
    rounds: list[list] = [[None] * repeats for _ in configs]
    for r in range(repeats):
        order = range(len(configs)) if r % 2 == 0 else reversed(range(len(configs)))
        for i in order:
            rounds[i][r] = measure(configs[i], r)
    return rounds


def paired_ratio(base: list[float], other: list[float]) -> float:
    """The median over rounds of ``base[r] / other[r]``: how much slower ``other`` is, round by round."""
    return statistics.median(b / o for b, o in zip(base, other))


def rounds_count(text: str) -> int:
    """An argparse type for a number of timing rounds: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number of rounds, at least 1; got {text!r}")
    return value

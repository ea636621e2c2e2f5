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


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of ``numerators[r] / denominators[r]``.

    Pass one head's tokens/s over K heads' tokens/s, or K heads' step times over one head's: either
    way the result is how much slower K heads are, paired round by round.
    """
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def count_of_at_least_one(text: str) -> int:
    """An argparse type for a number of rounds or timed repeats: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number, at least 1; got {text!r}")
    return value

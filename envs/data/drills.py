"""Short arithmetic drills with a one-number answer: a verifiable task a 135M model can partly solve.

Generated word problems (``envs.data.math.make_problems``) are too hard for the embedded model to
learn from: it answers about one in eight right at the rollout temperature, so most GRPO groups
hold no right answer. These drills keep the ``#### <number>`` answer form and the persona prefix
of the math env but ask one short question each, of one of these kinds:

``add``, ``subtract``, ``multiply``
    "What is 14 + 27?"; subtraction never goes below zero; multiplication uses factors up to 9
    (level 1), 12 (level 2) or 20 (level 3).
``compare``
    "Which is larger, 47 or 74?": the answer is the larger number.
``next``
    "What number comes next: 3, 7, 11, 15, ...?": an arithmetic sequence with a positive step.

Operands grow with the level: up to 9, 20 and 99 for levels 1, 2 and 3. Splits never share a
drill: a hash of each drill's kind and operands puts it on the eval, test or training side (the
rule of ``envs.data.math``), and each stream keeps only its own side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.data.math import MathProblem, draw_distinct
from envs.data.splits import SPLITS, read_split

DRILL_KINDS = ("add", "subtract", "multiply", "compare", "next")
DRILL_LEVELS = {1: 9, 2: 20, 3: 99}  # largest operand per level
# The drills the math env serves by default. The embedded model answers level 2's add, subtract,
# multiply and compare drills right 31-62% of the time at temperature 0.5 (docs/rlvr.md), so GRPO's
# groups disagree and carry a signal; it never gets "next" right (0%), and level 1 holds too few
# distinct held-out drills per kind for an evaluation.
DEFAULT_DRILL_LEVEL = 2
MAX_DRILLS = 2000  # the most drills a stream serves when no number is asked for
DRILL_PATIENCE = 2000  # ... and it ends once this many proposals in a row were repeats or another side's
DEFAULT_DRILL_KINDS = ("add", "subtract", "multiply", "compare")
_FACTORS = {1: 9, 2: 12, 3: 20}


def _draw(kind: str, level: int, rng: np.random.Generator) -> tuple[str, int, str, str]:
    """``(question, answer, solution, key)`` of one drill; ``key`` names its arithmetic for the split."""
    top = DRILL_LEVELS[level]
    if kind in ("add", "subtract"):
        a, b = (int(x) for x in rng.integers(1, top + 1, size=2))
        if kind == "subtract":
            a, b = max(a, b), min(a, b)
            return f"What is {a} - {b}?", a - b, f"{a} - {b} = {a - b}", f"{a}-{b}"
        return f"What is {a} + {b}?", a + b, f"{a} + {b} = {a + b}", f"{a}+{b}"
    if kind == "multiply":
        a, b = (int(x) for x in rng.integers(2, _FACTORS[level] + 1, size=2))
        return f"What is {a} x {b}?", a * b, f"{a} x {b} = {a * b}", f"{a}*{b}"
    if kind == "compare":
        a, b = (int(x) for x in rng.choice(np.arange(1, top + 1), size=2, replace=False))
        big = max(a, b)
        return f"Which is larger, {a} or {b}?", big, f"{big} > {min(a, b)}", f"{a}?{b}"
    if kind == "next":
        start, step = int(rng.integers(1, top + 1)), int(rng.integers(1, max(2, top // 3) + 1))
        terms = [start + i * step for i in range(4)]
        shown = ", ".join(map(str, terms))
        return (f"What number comes next: {shown}, ...?", terms[-1] + step,
                f"The step is {step}, so {terms[-1]} + {step} = {terms[-1] + step}", f"{start}:{step}")
    raise ValueError(f"unknown drill kind {kind!r}; the kinds are {DRILL_KINDS}")


def checked_kinds(kinds: Sequence[str], key: str = "drill kinds") -> tuple[str, ...]:
    """``kinds`` as a tuple, refused with a message naming ``key`` unless it is a non-empty list of drill kinds."""
    kinds = tuple(kinds)
    if not kinds or any(k not in DRILL_KINDS for k in kinds):
        raise ValueError(f"{key} must be a non-empty list of {list(DRILL_KINDS)}, got {list(kinds)!r}")
    return kinds


def make_drills(num: int | None, level: int = DEFAULT_DRILL_LEVEL, seed: int = 0, split: str = "train", *,
                kinds: tuple[str, ...] = DEFAULT_DRILL_KINDS, max_attempts: int | None = None) -> list[MathProblem]:
    """``num`` distinct drills of ``split``, the kinds cycling, deterministic in all arguments.

    Args:
        num: Number of drills. None: every distinct drill the stream finds, up to
            :data:`MAX_DRILLS` (a level's space is small: level 2's multiplications run out after
            about 60 per split side, and the kinds cycle, so the stream ends there).
        level: Operand size, a key of :data:`DRILL_LEVELS`.
        seed: Seed of the stream.
        split: One of the contract's splits (``router_*`` draw from the training side).
        kinds: The kinds to cycle through.
        max_attempts: Give up after this many candidates (default ``200 * num + 1000``).

    Raises:
        ValueError: For an unknown level, kind or split, or when too few distinct drills exist.
    """
    if level not in DRILL_LEVELS:
        raise ValueError(f"drill level must be one of {sorted(DRILL_LEVELS)}, got {level!r}")
    kinds = checked_kinds(kinds)
    read_split(split, "envs.data.drills.make_drills")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, level, SPLITS.index(split), 0x6472696C6C])

    def draw(i: int) -> tuple[str, str, MathProblem]:
        kind = kinds[i % len(kinds)]
        question, answer, work, key = _draw(kind, level, rng)
        return question, f"drill|{kind}|{key}", MathProblem(
            f"drill-L{level}-{kind}-{split}-s{seed}-{i}", question, str(answer), "drill", level,
            f"{work}\n#### {answer}", key)

    if num is None:
        return draw_distinct(MAX_DRILLS, split, max_attempts, f"level-{level} {split} drills", draw,
                             patience=DRILL_PATIENCE)
    return draw_distinct(num, split, max_attempts, f"level-{level} {split} drills", draw)

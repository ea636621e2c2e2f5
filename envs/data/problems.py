"""The math problems of a split, from any of the three sources (generated, drills, GSM8K)."""

from __future__ import annotations

from collections.abc import Sequence

from envs.data.drills import DEFAULT_DRILL_KINDS, DEFAULT_DRILL_LEVEL, make_drills
from envs.data.math import DEFAULT_DIFFICULTY, MathProblem, load_gsm8k, make_problems
from envs.data.splits import read_split


def problems_for_split(split: str = "train", *, task: str = "generated", num: int | None = None,
                       difficulty: int | None = None, seed: int = 0, gsm8k_max_steps: int | None = None,
                       drill_kinds: Sequence[str] = DEFAULT_DRILL_KINDS) -> list[MathProblem]:
    """The problems of one contract split (``train, router_train, router_val, eval``).

    Args:
        split: The split.
        task: ``"generated"`` (:func:`make_problems`), ``"drill"`` (``envs.data.drills``, one short
            question each; ``difficulty`` is the drill level) or ``"gsm8k"`` (``eval`` and ``test`` read
            alternate problems of the test file, every other split the train file).
        num: Number of problems. Generated: default 2,000 (200 for ``eval`` and ``test``). Drills:
            default every distinct drill on the split's side, up to 2,000 (258 train, 130 eval and
            102 test at level 2). GSM8K: the first ``num`` of the file (or slice); default all.
        difficulty: Level of the generated problems or drills (None: that source's default level,
            ``DEFAULT_DIFFICULTY`` or ``DEFAULT_DRILL_LEVEL``).
        seed: Seed of the generated stream.
        gsm8k_max_steps: Keep only GSM8K problems with at most this many calculator steps.
        drill_kinds: The drill kinds served (``envs.data.drills.DRILL_KINDS``).
    """
    read_split(split, "envs.data.problems.problems_for_split")
    if task == "generated":
        count = num if num is not None else (200 if split in ("eval", "test") else 2000)
        return make_problems(count, DEFAULT_DIFFICULTY if difficulty is None else difficulty, seed, split)
    if task == "drill":  # default: every drill of the level and kinds on the split's side (up to MAX_DRILLS)
        return make_drills(num, DEFAULT_DRILL_LEVEL if difficulty is None else difficulty, seed, split,
                           kinds=tuple(drill_kinds))
    if task == "gsm8k":
        problems = load_gsm8k("test" if split in ("eval", "test") else "train", max_steps=gsm8k_max_steps)
        if split in ("eval", "test"):  # GSM8K's test file, halved: even positions eval, odd positions test
            problems = problems[0 if split == "eval" else 1::2]
        return problems[:num] if num is not None else problems
    raise ValueError(f"task must be 'generated', 'drill' or 'gsm8k', got {task!r}")

"""Checks on math answers, written apart from the verifiable reward (``envs.math_reward``).

The reward takes the number after the *last* ``####`` marker, or else the last number of the
answer. A policy could learn to hedge: list several candidates and put one last, or repeat the
marker. These checks read the answer another way and import nothing from the reward's code:

``committed``
    The answer states exactly one final value: every number that follows an answer cue
    (``####``, "answer is", "answer:", "result is", a closing ``=``) is the same value.
``first_cue_correct``
    The number right after the *first* answer cue (or, with no cue, the last number of the
    final sentence) equals the reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_NUMBER = r"[-\u2212]?\$?\d[\d,]*(?:\.\d+)?|[-\u2212]?\.\d+"
_CUE = re.compile(r"(?:####|\banswer\s*(?:is|:)|\bresult\s*(?:is|:)|=)\s*\**\s*(" + _NUMBER + r")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def _value(token: str) -> float | None:
    """A number token as a float (thousands commas and ``$`` dropped); None when it does not parse."""
    cleaned = token.replace("\u2212", "-").replace("$", "").replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class AnswerCheck:
    """The independent reading of one answer.

    Attributes:
        cued: The values that follow an answer cue, in order.
        first: The value this check takes as the answer (None: no number at all).
    """

    cued: tuple[float, ...]
    first: float | None

    @property
    def committed(self) -> bool:
        """Exactly one distinct value follows the answer cues (at least one cue)."""
        return len({round(v, 9) for v in self.cued}) == 1


def check_answer(text: str) -> AnswerCheck:
    """Reads ``text``: the values after its answer cues and the value taken as its answer."""
    cued = tuple(v for v in (_value(m.group(1)) for m in _CUE.finditer(text)) if v is not None)
    if cued:
        return AnswerCheck(cued, cued[0])
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if _ANY_NUMBER.search(s)]
    tokens = _ANY_NUMBER.findall(sentences[-1]) if sentences else []
    values = [v for v in map(_value, tokens) if v is not None]
    return AnswerCheck((), values[-1] if values else None)


def check_answers(answers: Sequence[str], references: Sequence[float | int | str]) -> dict[str, float]:
    """Row figures: share of answers whose independent reading is right, and share that commit to one value.

    Raises:
        ValueError: When the lists differ in length.
    """
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not answers:
        return {"first_cue_correct": float("nan"), "committed": float("nan")}
    checks = [check_answer(a) for a in answers]
    right = [c.first is not None and (r := _value(str(ref))) is not None and math.isclose(c.first, r, abs_tol=1e-6)
             for c, ref in zip(checks, references)]
    return {"first_cue_correct": sum(right) / len(right), "committed": sum(c.committed for c in checks) / len(checks)}

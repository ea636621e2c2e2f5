"""Judge contracts: what a judge reads (``JudgeDialogue``) and returns (``TurnJudgement``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from envs.students.base import STUDENT_TYPES

LABELS = ("good", "neutral", "bad")
LABEL_SCORE = {"good": 1.0, "neutral": 0.0, "bad": -1.0}
STYLES = STUDENT_TYPES  # a style is named after the student type it suits
_STYLE_ALIASES = {"direct_instruction": "direct", "direct-instruction": "direct", "elicit": "interactive"}


def normalize_style(style: str) -> str:
    """Map a style name (``direct``, ``direct_instruction``, ``interactive``) to ``STYLES``."""
    key = str(style).strip().lower()
    key = _STYLE_ALIASES.get(key, key)
    if key not in STYLES:
        raise ValueError(f"style must be one of {STYLES} (or 'direct_instruction'), got {style!r}")
    return key


@dataclass
class JudgeDialogue:
    """A tutoring dialogue handed to a judge.

    Attributes:
        topic: what the session is about.
        messages: chat messages with roles ``"teacher"`` and ``"student"`` (``"system"`` ignored),
            in the same format as ``TutoringEnv`` observations.
        marked_from: index (among teacher turns, from 0) of the first teacher turn to judge;
            earlier turns are context only. ``TutoringEnv`` marks only the newest turn.
    """

    topic: str
    messages: list[dict[str, str]]
    marked_from: int = 0

    @classmethod
    def last_turn(cls, topic: str, messages: list[dict[str, str]]) -> "JudgeDialogue":
        """Judge only the newest teacher turn; everything before it is context."""
        n_teacher = sum(m["role"] == "teacher" for m in messages)
        return cls(topic, list(messages), max(0, n_teacher - 1))

    def marked_turns(self, *, need_reply: bool = False) -> list[int]:
        """Message indices of the teacher turns to judge.

        With ``need_reply`` (satisfaction), a teacher turn without a student reply after it is
        skipped, since there is nothing to read the reaction from.
        """
        marked, k = [], 0
        for i, message in enumerate(self.messages):
            if message["role"] != "teacher":
                continue
            if k >= self.marked_from:
                has_reply = i + 1 < len(self.messages) and self.messages[i + 1]["role"] == "student"
                if has_reply or not need_reply:
                    marked.append(i)
            k += 1
        return marked


@dataclass
class TurnJudgement:
    """One label per marked teacher turn (``"good"``, ``"neutral"`` or ``"bad"``).

    ``fallback`` is True when the labels are neutral placeholders because the judge's reply
    could not be used.
    """

    labels: list[str]
    rationale: str = ""
    fallback: bool = False

    @property
    def scores(self) -> list[float]:
        """+1 good, 0 neutral, -1 bad."""
        return [LABEL_SCORE[label] for label in self.labels]

    @property
    def good_rate(self) -> float:
        """Good turns over all marked turns (0.0 when nothing was marked)."""
        return sum(label == "good" for label in self.labels) / len(self.labels) if self.labels else 0.0


@runtime_checkable
class StyleJudge(Protocol):
    """Labels each marked teacher turn for how well it follows one teaching style."""

    def judge_batch(self, dialogues: Sequence[JudgeDialogue], style: str) -> list[TurnJudgement]:
        """One judgement per dialogue, labelling its marked teacher turns for ``style``."""
        ...


@runtime_checkable
class SatisfactionJudge(Protocol):
    """Labels each marked teacher turn from the student's very next reply, blind to the preference."""

    def judge_batch(self, dialogues: Sequence[JudgeDialogue]) -> list[TurnJudgement]:
        """One judgement per dialogue, labelling each marked teacher turn from the reply after it."""
        ...


@dataclass
class FallbackCounter:
    """How many judge replies were unusable (and replaced by neutral labels)."""

    calls: int = 0
    fallbacks: int = 0
    reasons: list[str] = field(default_factory=list)

    def record(self, reason: str | None) -> None:
        """Counts one call; ``reason`` (not None) marks it as a fallback and says why."""
        self.calls += 1
        if reason is not None:
            self.fallbacks += 1
            if len(self.reasons) < 50:
                self.reasons.append(reason)

"""The contract every student simulator follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

STUDENT_TYPES = ("direct", "interactive")
"""Hidden learning-style preferences: told the material vs. drawn out with questions."""
REACTIONS = ("frustrated", "rude", "anxious")
"""How a student shows that the teaching does not suit them, drawn once per dialogue."""


@dataclass
class StudentContext:
    """Everything a simulator may use to write the student's next turn.

    Attributes:
        topic: what the tutoring session is about.
        student_type: hidden preference, one of ``STUDENT_TYPES``. Never shown to the teacher.
        reaction: how a mismatch shows, one of ``REACTIONS``. Never shown to the teacher.
        messages: the dialogue so far as chat messages with roles ``"teacher"`` and
            ``"student"`` (a leading ``"system"`` message, if any, is ignored by simulators);
            the last message is the teacher turn to answer.
        rng: generator for any randomness, so replies are reproducible under a seed.
    """

    topic: str
    student_type: str
    reaction: str
    messages: list[dict[str, str]]
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @property
    def last_teacher_turn(self) -> str:
        """The newest teacher turn (empty when there is none)."""
        for message in reversed(self.messages):
            if message["role"] == "teacher":
                return message["content"]
        return ""


@runtime_checkable
class StudentSimulator(Protocol):
    """Writes the student's next turn for a batch of dialogues.

    ``reply_batch`` is the whole contract: one call answers every dialogue in the batch (in
    order), so a model-backed student can send them to its backend together. Subclass
    ``StudentBase`` to also get the one-dialogue convenience ``reply(ctx)``.
    """

    def reply_batch(self, dialogues: Sequence[StudentContext]) -> list[str]:
        """One student reply per dialogue, in order."""
        ...


class StudentBase:
    """Mixin that supplies ``reply`` on top of ``reply_batch``."""

    def reply_batch(self, dialogues: Sequence[StudentContext]) -> list[str]:  # pragma: no cover
        """One student reply per dialogue, in order."""
        raise NotImplementedError

    def reply(self, dialogue: StudentContext) -> str:
        """The reply to a single dialogue."""
        return self.reply_batch([dialogue])[0]


def check_labels(student_type: str, reaction: str) -> None:
    """Raise ``ValueError`` for an unknown student type or reaction."""
    if student_type not in STUDENT_TYPES:
        raise ValueError(f"student_type must be one of {STUDENT_TYPES}, got {student_type!r}")
    if reaction not in REACTIONS:
        raise ValueError(f"reaction must be one of {REACTIONS}, got {reaction!r}")

"""Adapters between environments and the trainers: prompts, privileged contexts, batches.

A trainer needs four things from an environment that returns language feedback: the personas (or
teaching styles) that get one head each, a batch of live episodes, the prompt the policy sees for
an observation, and the privileged prompt the frozen teacher sees, which differs from the policy's
only by one block that holds the persona and the feedback. :class:`TutoringTask` provides them for
``pluralgym/Tutoring-v0``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.chat import chat_counters
from envs.data import load_tutoring_topics
from envs.tutoring import MAX_TURNS, TutoringBatch

Messages = list[dict[str, str]]

_ROLES = {"system": "system", "teacher": "assistant", "student": "user"}
EMPTY_TURN = "Okay."  # stands in for a sampled turn that is empty once decoded (the env rejects blanks)

PRIVILEGED_BLOCK = (
    "(Hindsight notes for the teacher's next turn, never shown to the student. Use the {label} style. "
    "{description} The student's actual reaction to that turn was: \"{feedback}\")"
)


@dataclass(frozen=True)
class Persona:
    """One persona or teaching style, trained into its own head.

    Attributes:
        name: Short identifier, also the head name (e.g. ``"interactive"``).
        label: How the teacher context names it (e.g. ``"INTERACTIVE"``).
        description: One or two sentences describing the style.
    """

    name: str
    label: str
    description: str


def count_questions(text: str) -> int:
    """Number of questions in a teacher turn (each run of '?' counts once)."""
    return len(re.findall(r"\?+", text))


def split_topics(topics: Sequence[str], heldout_every: int) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: every ``heldout_every``-th topic is held out."""
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be at least 2, got {heldout_every}.")
    heldout = [t for i, t in enumerate(topics) if i % heldout_every == heldout_every - 1]
    train = [t for t in topics if t not in heldout]
    return train, heldout


class TutoringTask:
    """The tutoring environment seen by the OPSD trainer and the evaluations.

    Args:
        personas: The teaching styles, one head each (``name``, ``label``, ``description``).
        student: The student simulator shared by all dialogues.
        satisfaction_judge: The satisfaction judge that gives the env's reward.
        style_judge: The per-style judge used by evaluations.
        max_turns: Teacher turns per episode.
        heldout_every: Every n-th topic is reserved for evaluation.
        env_kwargs: Further ``TutoringEnv`` arguments (``max_action_chars``, ...). ``topics`` here
            replaces the shipped list before the split.
    """

    def __init__(
        self,
        personas: Sequence[dict[str, str] | Persona],
        student: Any,
        satisfaction_judge: Any,
        style_judge: Any = None,
        max_turns: int = MAX_TURNS,
        heldout_every: int = 5,
        env_kwargs: dict[str, Any] | None = None,
    ):
        self.personas = [p if isinstance(p, Persona) else Persona(**p) for p in personas]
        if len({p.name for p in self.personas}) != len(self.personas) or not self.personas:
            raise ValueError(f"Personas need distinct names, got {[p.name for p in self.personas]}.")
        self.student = student
        self.satisfaction_judge = satisfaction_judge
        self.style_judge = style_judge
        self.max_turns = max_turns
        env_kwargs = {k: v for k, v in dict(env_kwargs or {}).items() if v is not None}
        topics = env_kwargs.pop("topics", None) or load_tutoring_topics()
        self.train_topics, self.heldout_topics = split_topics(list(topics), heldout_every)
        self.env_kwargs = env_kwargs

    @property
    def persona_names(self) -> list[str]:
        """The personas' names, one per head."""
        return [p.name for p in self.personas]

    def make_batch(self, num: int, *, heldout: bool = False, **overrides: Any) -> TutoringBatch:
        """A batch of ``num`` dialogues over the training (or held-out) topics."""
        kwargs = dict(self.env_kwargs, topics=self.heldout_topics if heldout else self.train_topics)
        kwargs.update(overrides)
        return TutoringBatch(num, student=self.student, satisfaction_judge=self.satisfaction_judge,
                             max_turns=self.max_turns, **kwargs)

    @staticmethod
    def policy_messages(obs: Messages) -> Messages:
        """The policy's prompt: the observation with teacher turns as assistant and student turns as user."""
        return [{"role": _ROLES[m["role"]], "content": m["content"]} for m in obs]

    @staticmethod
    def actions(texts: Sequence[str]) -> list[str]:
        """Sampled teacher turns as env actions: stripped, an empty one replaced by ``EMPTY_TURN``."""
        return [text.strip() or EMPTY_TURN for text in texts]

    def chat_counters(self) -> dict[str, int]:
        """Traffic counters of the chat models behind the student and the judges (empty when none)."""
        return chat_counters(self.student, self.satisfaction_judge, self.style_judge)

    @staticmethod
    def step_metrics(texts: Sequence[str]) -> dict[str, list[float]]:
        """Per-turn figures the trainer logs for each persona: questions asked per turn."""
        return {"questions_per_turn": [float(count_questions(t)) for t in texts]}

    def teacher_messages(self, obs: Messages, persona: Persona, feedback: str) -> Messages:
        """The privileged prompt: the policy's prompt plus one final block with the style and the reaction.

        The block is a system message placed right before the teacher's turn: a small model
        follows a style cue there far more than one buried in the opening system message (on the
        embedded 135M model, 0.03 vs 0.50 questions per sampled turn for the two styles, against
        0.19 vs 0.28 with the cue in the opening message; 32 dialogues each).
        """
        block = PRIVILEGED_BLOCK.format(label=persona.label, description=persona.description, feedback=feedback)
        return self.policy_messages(obs) + [{"role": "system", "content": block}]

"""Pairwise judges: is one candidate turn better than another written from the same prefix?

Router learning (``router.method=pairwise``) compares each head's candidate with the equal blend's.
A judge returns the first candidate's preference over the second on the five levels
``PREFERENCE_LEVELS`` (positive: the first is better). Two come with the project:

- :class:`HeuristicPairwiseJudge` (offline): the difference of the satisfaction verdicts on the
  student's answers to the two candidates;
- :class:`LLMPairwiseJudge`: a chat model reads the prefix, both candidates (in a random A/B order,
  undone afterwards) and the student's answers, and gives a five-level verdict.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from envs.chat import ChatBacked
from envs.judges.base import LABEL_SCORE, FallbackCounter, JudgeDialogue
from envs.judges.heuristic import satisfaction_label
from envs.judges.llm import format_dialogue

PREFERENCE_LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)
Messages = list[dict[str, str]]


@dataclass
class PairwiseComparison:
    """Two candidate teacher turns written from the same dialogue prefix, with the student's answers.

    Attributes:
        topic: The session's topic.
        prefix: The dialogue so far (roles ``system`` / ``teacher`` / ``student``).
        first: The first candidate turn (a head's).
        second: The second candidate turn (the baseline's, e.g. the equal blend's).
        first_reply: The student's answer to ``first`` ("" when not available).
        second_reply: The student's answer to ``second``.
    """

    topic: str
    prefix: Messages
    first: str
    second: str
    first_reply: str = ""
    second_reply: str = ""


@runtime_checkable
class PairwiseJudge(Protocol):
    """Scores the first candidate against the second, on ``PREFERENCE_LEVELS`` (positive: first is better)."""

    def compare_batch(self, comparisons: Sequence[PairwiseComparison]) -> list[float]:
        """The first candidate's preference over the second, one of ``PREFERENCE_LEVELS`` per comparison."""
        ...


class HeuristicPairwiseJudge:
    """Offline pairwise judge: half the difference of the two answers' satisfaction scores.

    Each answer is labelled by the rule-based satisfaction reader (good +1, neutral 0, bad -1), so
    the verdict ``(score_first - score_second) / 2`` falls on ``{-1, -0.5, 0, 0.5, 1}``.
    """

    def compare_batch(self, comparisons: Sequence[PairwiseComparison]) -> list[float]:
        """Half the difference of the two answers' satisfaction scores, per comparison."""
        out = []
        for c in comparisons:
            first = LABEL_SCORE[satisfaction_label(c.first_reply)[0]]
            second = LABEL_SCORE[satisfaction_label(c.second_reply)[0]]
            out.append((first - second) / 2.0)
        return out


PAIRWISE_SYSTEM = ("You referee tutoring sessions: you weigh two possible teacher turns against each other "
                   "and say which one helped the student more. Your whole answer is one JSON object.")

PAIRWISE_TEMPLATE = """The session is about: {topic}

What has been said so far:
{dialogue}

From this point, two different next turns were tried out, and the student answered each of them.

Option A (teacher): {a}
Student's answer to option A: {reply_a}

Option B (teacher): {b}
Student's answer to option B: {reply_b}

This student learns best in one particular way, which they do not spell out and which you are not
told; the only evidence is how they answer. An answer showing curiosity, energy or genuine
reasoning about the material means the turn suited them. A flat, confused, irritated or nervous
answer, or a wish to learn it some other way, means it did not. Judge which option served this
student better as the next step of the lesson; ignore length and polish.

Pick "verdict" from exactly these five: "A much better", "A slightly better", "tie",
"B slightly better", "B much better".
Answer with this JSON shape only: {{"reason": "one or two sentences", "verdict": "..."}}"""

VERDICTS = {"a much better": 1.0, "a slightly better": 0.5, "tie": 0.0, "b slightly better": -0.5,
            "b much better": -1.0}


def parse_verdict(data: Any) -> tuple[float | None, str | None]:
    """Preference of option A over B from a parsed JSON reply; ``(None, why)`` when unusable."""
    if not isinstance(data, dict):
        return None, f"reply is {type(data).__name__}, not a JSON object"
    verdict = data.get("verdict")
    if isinstance(verdict, (int, float)) and not isinstance(verdict, bool) and float(verdict) in PREFERENCE_LEVELS:
        return float(verdict), None
    key = " ".join(str(verdict or "").strip().strip('".').lower().replace(">", " ").split())
    if key in VERDICTS:
        return VERDICTS[key], None
    return None, f"unknown verdict {verdict!r}"


class LLMPairwiseJudge(ChatBacked):
    """Pairwise judge run by a chat model (any ``envs.chat.ChatClient``) through ``chat_json_batch``.

    The two candidates are shown as A and B in a random order per comparison (from ``seed``), so a
    model that favours one position cannot favour the head; the verdict is mapped back to the first
    candidate's side. An unusable reply counts as a tie and is recorded in ``counter``.

    Args:
        client: The chat client; default ``LocalChatClient()`` on first use.
        max_tokens: Reply length bound.
        temperature: Sampling temperature.
        seed: Seeds the A/B order.
    """

    def __init__(self, client: Any = None, max_tokens: int | None = 300, temperature: float | None = 0.0,
                 seed: int = 0):
        super().__init__(client, max_tokens, temperature)
        self.rng = random.Random(seed)
        self.counter = FallbackCounter()

    def build_conversation(self, c: PairwiseComparison, swap: bool) -> Messages:
        """The chat request comparing the two candidates, shown as A and B (swapped when ``swap``)."""
        a, b = (c.second, c.first) if swap else (c.first, c.second)
        ra, rb = (c.second_reply, c.first_reply) if swap else (c.first_reply, c.second_reply)
        dialogue = format_dialogue(JudgeDialogue(c.topic, c.prefix), [])
        user = PAIRWISE_TEMPLATE.format(topic=c.topic, dialogue=dialogue, a=a, b=b,
                                        reply_a=ra or "(no answer)", reply_b=rb or "(no answer)")
        return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]

    def compare_batch(self, comparisons: Sequence[PairwiseComparison]) -> list[float]:
        """The first candidate's preference per comparison, the A/B order drawn at random and undone."""
        if not comparisons:
            return []
        swaps = [self.rng.random() < 0.5 for _ in comparisons]
        conversations = [self.build_conversation(c, s) for c, s in zip(comparisons, swaps)]
        replies = self.client.chat_json_batch(conversations, default={}, max_tokens=self.max_tokens,
                                              temperature=self.temperature)
        out = []
        for reply, swap in zip(replies, swaps):
            ok = getattr(reply, "ok", True)
            value, error = parse_verdict(getattr(reply, "data", reply)) if ok else (None, "malformed JSON reply")
            self.counter.record(error)
            value = 0.0 if value is None else value
            out.append(-value if swap else value)
        return out

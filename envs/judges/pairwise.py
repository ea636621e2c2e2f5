"""Pairwise judges: is one candidate turn better than another written from the same prefix?

Router learning (``router.method=pairwise``) compares each head's candidate with the equal blend's.
A judge returns the first candidate's preference over the second on the five levels
``PREFERENCE_LEVELS`` (positive: the first is better). Two come with the project:

- :class:`HeuristicPairwiseJudge` (offline): the difference of the satisfaction verdicts on the
  student's answers to the two candidates; for a comparison without answers (single-turn tasks,
  where the judge sees only the question), the difference of how well each response takes up the
  question;
- :class:`LLMPairwiseJudge`: a chat model reads the prefix, both candidates (in a random A/B order,
  undone afterwards) and the student's answers, and gives a five-level verdict; without answers it
  judges which response fits the question better (000 App. B.5) and counts how often it picks the
  first slot (a position-bias check).

The task decides what a judge may see (:meth:`envs.tasks.Task.comparison`); for the persona
critic that is the request and the two responses only, so the judge is blind to the persona.
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
from envs.turns.quality import assess_turn, content_stems

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

    @property
    def has_replies(self) -> bool:
        """Whether the reader's answers to the candidates are part of the comparison."""
        return bool(self.first_reply or self.second_reply)


def question_comparison(observation: Messages, first: str, second: str) -> PairwiseComparison:
    """A comparison that shows only the last message (the question) and the two answers: no system text, no feedback."""
    question = str(observation[-1]["content"])
    return PairwiseComparison(question, [{"role": "user", "content": question}], first, second)


def question_fit(question: str, response: str) -> float:
    """Offline proxy of how well a response takes up a question, in [0, 1].

    The share of the question's content words (crude stems) that the response uses, and 0 for a
    response the degenerate-turn detector flags (repetition, filler, cut off, off the subject). It
    measures engagement with what was asked and basic coherence, nothing of correctness or voice.
    """
    asked = content_stems(question)
    if assess_turn(response, question).degenerate:
        return 0.0
    if not asked:
        return 0.5
    return len(asked & content_stems(response)) / len(asked)


@runtime_checkable
class PairwiseJudge(Protocol):
    """Scores the first candidate against the second, on ``PREFERENCE_LEVELS`` (positive: first is better)."""

    def compare_batch(self, comparisons: Sequence[PairwiseComparison]) -> list[float]:
        """The first candidate's preference over the second, one of ``PREFERENCE_LEVELS`` per comparison."""
        ...


class HeuristicPairwiseJudge:
    """Offline pairwise judge.

    With the reader's answers (tutoring): each answer is labelled by the rule-based satisfaction
    reader (good +1, neutral 0, bad -1), and the verdict ``(score_first - score_second) / 2`` falls
    on ``{-1, -0.5, 0, 0.5, 1}``. Without them (the persona critic's question-only comparisons): the
    difference ``d`` of the two :func:`question_fit` scores, a tie below ``tie_margin``, a slight
    preference below ``clear_margin`` and a clear one above.

    Args:
        tie_margin: Fit differences smaller than this are ties.
        clear_margin: Fit differences at least this large are "much better".
    """

    def __init__(self, tie_margin: float = 0.1, clear_margin: float = 0.3):
        if not 0 <= tie_margin <= clear_margin:
            raise ValueError(f"Need 0 <= tie_margin <= clear_margin, got {tie_margin} and {clear_margin}.")
        self.tie_margin, self.clear_margin = tie_margin, clear_margin

    def compare_batch(self, comparisons: Sequence[PairwiseComparison]) -> list[float]:
        """The first candidate's preference over the second, per comparison."""
        out = []
        for c in comparisons:
            if c.has_replies:
                first = LABEL_SCORE[satisfaction_label(c.first_reply)[0]]
                second = LABEL_SCORE[satisfaction_label(c.second_reply)[0]]
                out.append((first - second) / 2.0)
                continue
            d = question_fit(c.topic, c.first) - question_fit(c.topic, c.second)
            level = 0.0 if abs(d) < self.tie_margin else 0.5 if abs(d) < self.clear_margin else 1.0
            out.append(level if d >= 0 else -level)
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

QUESTION_SYSTEM = ("You compare two answers to the same question and say which one suits that question "
                   "better. Your whole answer is one JSON object.")

QUESTION_TEMPLATE = """Question:
{topic}

Answer A:
{a}

Answer B:
{b}

Decide which answer is the better fit for this particular question. Weigh whether it takes up what
was actually asked, whether it says something of substance rather than filler, whether its depth
suits the question, whether its voice and framing suit it, and whether it holds together. Two
correct answers can still differ in fit, so call it a tie only when they are truly equal. Do not
favour the longer answer or penalise the shorter one for its length.

Give your reason first, in one or two sentences, then pick "verdict" from exactly these five:
"A much better", "A slightly better", "tie", "B slightly better", "B much better".
Answer with this JSON shape only: {{"reason": "...", "verdict": "..."}}"""

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
        self.slots = {"A": 0, "B": 0, "tie": 0}  # decisive picks by position, before the swap is undone

    @property
    def slot_a_rate(self) -> float:
        """Share of decisive verdicts that picked whatever was shown first (0.5 without position bias)."""
        decisive = self.slots["A"] + self.slots["B"]
        return self.slots["A"] / decisive if decisive else float("nan")

    def build_conversation(self, c: PairwiseComparison, swap: bool) -> Messages:
        """The chat request comparing the two candidates, shown as A and B (swapped when ``swap``)."""
        a, b = (c.second, c.first) if swap else (c.first, c.second)
        if not c.has_replies:  # the question and the two answers only
            user = QUESTION_TEMPLATE.format(topic=c.topic, a=a, b=b)
            return [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": user}]
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
            self.slots["A" if value > 0 else "B" if value < 0 else "tie"] += 1
            out.append(-value if swap else value)
        return out

"""Judges that ask a chat model for JSON labels through ``envs.chat.ChatClient``.

Each dialogue becomes one request; a batch goes to the client in one ``chat_json_batch`` call.
The model must answer ``{"critique": "...", "labels": ["good" | "neutral" | "bad", ...]}`` with
one label per marked teacher turn. The label check goes to the client as its ``validate`` hook,
so the client neither caches nor counts as usable a reply that fails it. A reply that is not valid
JSON, has the wrong number of labels or an unknown label, or whose request failed, is replaced by
all-``"neutral"`` labels and counted in ``judge.counter`` (``calls``, ``fallbacks``, ``reasons``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from envs.chat import ChatBacked
from envs.judges.base import (
    LABELS,
    FallbackCounter,
    JudgeDialogue,
    TurnJudgement,
    normalize_style,
)

# --- prompts ---------------------------------------------------------------------------------

STYLE_SYSTEM = "You grade teaching style strictly and even-handedly. Reply with a JSON object and nothing else."

STYLE_DEFINITIONS = {
    "direct": (
        "DIRECT INSTRUCTION: the teacher's main move is to hand the material over, by explaining, "
        "stating, describing, narrating or summarising it so the student can take it in.\n"
        "Counts as GOOD: the turn is mostly telling or explaining. A short comprehension check at "
        "the end (\"does that make sense?\", \"got it?\") does not change that.\n"
        "Counts as BAD: the turn mostly exists to make the student answer a genuine question or "
        "reason something out themselves instead of being told."
    ),
    "interactive": (
        "INTERACTIVE: the teacher's main move is to draw the student out, by asking a genuine "
        "question, inviting them to reason, predict or explain, or keeping a back-and-forth going so "
        "the student does the thinking.\n"
        "Counts as GOOD: the point of the turn is to get the student to think and respond, not just "
        "to inform them.\n"
        "Counts as BAD: the turn mostly explains, states or narrates, even if a question is tacked "
        "on at the end; the student is on the receiving end rather than drawn out."
    ),
}

STYLE_TEMPLATE = """Topic of the tutoring session: {topic}

You check a single teaching style, {style_name}.

{style_def}

The teacher turns you must grade carry the tags {tags}. Read the entire dialogue first and write a
one- or two-sentence critique of how consistently the teacher kept to {style_name} (where it did,
where it did not). Then give each tagged teacher turn one label:
- "good": {style_name} is clearly the turn's main move (see the GOOD rule).
- "bad": the turn's main move is some other approach (see the BAD rule).
- "neutral": the turn is too short or procedural to tell, such as a bare "okay, nice".
Grade what the teacher wrote, not how the student took it, and be demanding: "good" only when
{style_name} really is what the turn is doing.

Dialogue:
{dialogue}

Answer with exactly this JSON shape and {n} labels in order: {{"critique": "...", "labels": [...]}}"""

SATISFACTION_SYSTEM = ("You grade tutoring conversations strictly and even-handedly. "
                       "Reply with a JSON object and nothing else.")

SATISFACTION_TEMPLATE = """Topic of the tutoring session: {topic}

The student learns best in one particular way, which you are not told. When a teacher turn suits
them they come alive: curious, energetic, digging into the material. When it does not, they may
stay polite but go flat, or become confused, frustrated, anxious or short with the teacher. They
seldom say what they want, so judge their ENERGY and UNDERSTANDING, not their manners.

For every tagged teacher turn ({tags}), read only the student's reply that comes right after it.
Start from "neutral" and move away only on a clear signal:
- "good": unmistakable enthusiasm for, or real grasp of, what was just taught: an eager follow-up
  on the topic itself, visible interest ("oh, that's neat", "ahh, now I get it"), an answer that
  shows they reasoned it out, or building on the idea. Mere cooperation is not enough.
- "bad": the student checks out or struggles: lost, confused, a wrong or empty answer, annoyed,
  snappy or nervous, or a flat brush-off ("ok", "sure", "i guess", "dunno"). Also "bad": the
  student asks to learn it some other way ("could we act it out?", "can I see a real one?",
  "can we do an activity instead?"), however friendly or excited the wording, because it means
  this turn did not work for them.
- "neutral": anything in between, such as a polite acknowledgement or a short on-task reply
  without visible energy. Being agreeable is neutral, not good.

Remember: a request for a different activity, example or format means the turn missed, so it is
"bad" even when phrased with curiosity. Keep "good" for real excitement about the content.

Dialogue:
{dialogue}

Answer with exactly this JSON shape and {n} labels in order: {{"critique": "...", "labels": [...]}}"""

DEFAULT_REPLY = {"critique": "", "labels": []}


def format_dialogue(dialogue: JudgeDialogue, marked: Sequence[int]) -> str:
    """Render the dialogue as text, tagging marked teacher turns ``[T1]``, ``[T2]``, ..."""
    tags = {index: f"[T{k + 1}]" for k, index in enumerate(marked)}
    lines = []
    for i, message in enumerate(dialogue.messages):
        if message["role"] == "teacher":
            tag = f" {tags[i]}" if i in tags else ""
            lines.append(f"Teacher{tag}: {message['content']}")
        elif message["role"] == "student":
            lines.append(f"Student: {message['content']}")
    return "\n".join(lines)


def _tags(n: int) -> str:
    return ", ".join(f"[T{k + 1}]" for k in range(n))


def parse_labels(data: Any, n: int) -> tuple[list[str] | None, str, str | None]:
    """Pull ``n`` labels out of a parsed JSON reply; returns (labels or None, critique, error)."""
    if not isinstance(data, dict):
        return None, "", f"reply is {type(data).__name__}, not a JSON object"
    critique = str(data.get("critique", data.get("rationale", "")) or "")
    labels = data.get("labels")
    if not isinstance(labels, list):
        return None, critique, "no 'labels' list"
    cleaned = [str(label).strip().strip('"').lower() for label in labels]
    if len(cleaned) != n:
        return None, critique, f"expected {n} labels, got {len(cleaned)}"
    unknown = [label for label in cleaned if label not in LABELS]
    if unknown:
        return None, critique, f"unknown labels {unknown}"
    return cleaned, critique, None


def label_problem(data: Any, n: int) -> str | None:
    """Why a parsed reply does not hold ``n`` valid labels, or None (the client's validate hook)."""
    return parse_labels(data, n)[2]


class _LLMJudge(ChatBacked):
    def __init__(self, client: Any = None, max_tokens: int | None = 400, temperature: float | None = 0.0) -> None:
        super().__init__(client, max_tokens, temperature)
        self.counter = FallbackCounter()

    def _run(self, dialogues: Sequence[JudgeDialogue], build, need_reply: bool) -> list[TurnJudgement]:
        marks = [d.marked_turns(need_reply=need_reply) for d in dialogues]
        todo = [i for i, m in enumerate(marks) if m]
        results = [TurnJudgement([], "no teacher turn to judge") for _ in dialogues]
        if not todo:
            return results
        conversations = [build(dialogues[i], marks[i]) for i in todo]
        checks = [functools.partial(label_problem, n=len(marks[i])) for i in todo]
        replies = self.client.chat_json_batch(
            conversations,
            default=dict(DEFAULT_REPLY),
            validate=checks,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        for i, reply in zip(todo, replies):
            n = len(marks[i])
            if getattr(reply, "ok", True):
                labels, critique, error = parse_labels(getattr(reply, "data", reply), n)
            else:
                labels, critique, error = None, "", getattr(reply, "error", None) or "malformed JSON reply"
            self.counter.record(error)
            if labels is None:
                results[i] = TurnJudgement(["neutral"] * n, f"fallback: {error}", fallback=True)
            else:
                results[i] = TurnJudgement(labels, critique)
        return results


class LLMStyleJudge(_LLMJudge):
    """Per-style teaching-style judge (``style`` = ``"direct"`` or ``"interactive"``) run by a chat model.

    Args:
        client: an ``envs.chat.ChatClient``; default ``LocalChatClient()`` on first use.
        max_tokens, temperature: passed to the client.
    """

    def build_conversation(self, dialogue: JudgeDialogue, marked: Sequence[int], style: str) -> list[dict]:
        """The chat request that asks the model to label the marked turns for ``style``."""
        style = normalize_style(style)
        name = "DIRECT INSTRUCTION" if style == "direct" else "INTERACTIVE"
        user = STYLE_TEMPLATE.format(
            topic=dialogue.topic,
            style_name=name,
            style_def=STYLE_DEFINITIONS[style],
            tags=_tags(len(marked)),
            dialogue=format_dialogue(dialogue, marked),
            n=len(marked),
        )
        return [{"role": "system", "content": STYLE_SYSTEM}, {"role": "user", "content": user}]

    def judge_batch(self, dialogues: Sequence[JudgeDialogue], style: str) -> list[TurnJudgement]:
        """Labels each dialogue's marked turns for ``style`` (all neutral when the reply is unusable)."""
        style = normalize_style(style)
        return self._run(dialogues, lambda d, m: self.build_conversation(d, m, style), need_reply=False)


class LLMSatisfactionJudge(_LLMJudge):
    """Preference-blind satisfaction judge run by a chat model (reads each turn's next student reply).

    Args:
        client: an ``envs.chat.ChatClient``; default ``LocalChatClient()`` on first use.
        max_tokens, temperature: passed to the client.
    """

    def build_conversation(self, dialogue: JudgeDialogue, marked: Sequence[int]) -> list[dict]:
        """The chat request that asks the model to label each marked turn from the student's reply."""
        user = SATISFACTION_TEMPLATE.format(
            topic=dialogue.topic,
            tags=_tags(len(marked)),
            dialogue=format_dialogue(dialogue, marked),
            n=len(marked),
        )
        return [{"role": "system", "content": SATISFACTION_SYSTEM}, {"role": "user", "content": user}]

    def judge_batch(self, dialogues: Sequence[JudgeDialogue]) -> list[TurnJudgement]:
        """Labels each dialogue's marked turns (all neutral when the reply is unusable)."""
        return self._run(dialogues, self.build_conversation, need_reply=True)

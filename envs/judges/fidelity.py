"""Persona fidelity of answers: how recognisably does an answer speak as the persona it was asked for?

PerMix-RLVR reports persona fidelity but leaves its metric open. Two plug-ins measure it here:

- :class:`PersonaAttribution` (offline, no API): the frozen base model tries to tell which persona
  wrote an answer. For an answer ``y`` to question ``x`` asked under persona ``p``, every candidate
  persona ``p'`` (``p`` itself, ``M`` other personas and no persona) gets the score
  ``s(p') = mean_t log pi_ref(y_t | p', x, y_<t)``; the answer is *attributed* when ``p`` scores
  highest. Fidelity is the share of attributed answers (chance: ``1 / (M + 2)``), and the margin
  ``s(p) - s(none)`` says how much more likely the persona makes the answer. A dry answer that
  ignores the persona scores near chance: the metric measures expressivity without a judge.
- :class:`LLMFidelityJudge`: a chat model rates, from 1 to 5, how well each answer stays in the
  persona's character (voice, knowledge, attitude) while answering, in the spirit of PersonaGym's
  rubric scores; an unusable reply falls back to no score and is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from envs.chat import ChatBacked
from envs.judges.base import FallbackCounter

Messages = list[dict[str, str]]


@dataclass
class FidelityItem:
    """One answer to score.

    Attributes:
        persona: The persona's system message the answer was asked under ("You are ...").
        persona_id: Its id (``none`` for no persona).
        messages: The prompt the answer was written for (persona system message and question).
        answer: The answer text.
        candidates: Other personas' system messages to tell it apart from (offline attribution).
    """

    persona: str
    persona_id: str
    messages: Messages
    answer: str
    candidates: tuple[str, ...] = ()


@dataclass
class FidelityScore:
    """The fidelity figures of one answer.

    Attributes:
        attributed: Whether the persona it was asked for scored highest (None: not scored).
        margin: ``s(persona) - s(no persona)`` in mean log-probability per token (None: not scored).
        rating: A 1-5 judge rating (None: no judge, or its reply was unusable).
    """

    attributed: bool | None = None
    margin: float | None = None
    rating: float | None = None


def _with_persona(messages: Messages, system: str | None) -> Messages:
    """The prompt with its persona system message replaced by ``system`` (removed for None)."""
    rest = [dict(m) for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system else []) + rest


class PersonaAttribution:
    """Offline persona fidelity: can the frozen base model tell which persona wrote an answer?

    Args:
        model: The base model's name (any name ``agents.load_backbone`` accepts); loaded on first
            use and shared with the process's other local chat plug-ins.
        batch_size: Sequences per scoring forward pass.
        device: Where the model runs.
    """

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 16, device: str = "cpu"):
        from envs.chat import LocalChatClient

        self._client = LocalChatClient(model=model, device=device)
        self.batch_size = int(batch_size)

    def candidate_scores(self, items: Sequence[FidelityItem]) -> list[np.ndarray]:
        """Per answer, ``s(p')`` for its own persona, then each candidate, then no persona (mean log-prob per token)."""
        import torch

        from agents.generation import encode_prompts
        from agents.generation import score_completions as score

        backbone = self._client.backbone
        model, tokenizer = backbone.model, backbone.tokenizer
        rows = []  # (prompt, answer) per candidate; the first candidate of each answer is its own
        for item in items:
            for persona in (item.persona, *item.candidates, None):
                rows.append((_with_persona(item.messages, persona), item.answer))
        # Batches of similar length pad little: score the rows longest first, then put them back in order.
        order = sorted(range(len(rows)), key=lambda i: -(sum(len(m["content"]) for m in rows[i][0]) + len(rows[i][1])))
        means = [0.0] * len(rows)
        for start in tqdm(range(0, len(rows), self.batch_size), desc="attribution", unit="batch", leave=False):
            at = order[start:start + self.batch_size]
            chunk = [rows[i] for i in at]
            prompt_ids, prompt_mask = encode_prompts(tokenizer, [p for p, _ in chunk], model.device)
            answers = tokenizer([a for _, a in chunk], return_tensors="pt", padding=True, padding_side="right",
                                add_special_tokens=False).to(model.device)
            with torch.no_grad():
                logp = score(model, prompt_ids, prompt_mask, answers["input_ids"], answers["attention_mask"])
            counts = answers["attention_mask"].sum(1).clamp(min=1)
            for i, value in zip(at, (logp.sum(1) / counts).tolist()):
                means[i] = value
        out, at = [], 0
        for item in items:
            n = 2 + len(item.candidates)
            out.append(np.array(means[at:at + n]))
            at += n
        return out

    def score_batch(self, items: Sequence[FidelityItem]) -> list[FidelityScore]:
        """Attribution and margin for every answer asked under a persona (no-persona answers are not scored)."""
        scored = [i for i, item in enumerate(items) if item.persona_id != "none"]
        out = [FidelityScore() for _ in items]
        for i, values in zip(scored, self.candidate_scores([items[i] for i in scored])):
            out[i] = FidelityScore(attributed=bool(values.argmax() == 0), margin=float(values[0] - values[-1]))
        return out


FIDELITY_SYSTEM = "You rate role-play faithfully and strictly. Reply with a JSON object and nothing else."

FIDELITY_TEMPLATE = """Someone was asked to answer a question while playing this role:
{persona}

Question:
{question}

Their answer:
{answer}

How well does the answer stay in this persona's character while answering: its voice, its knowledge
and blind spots, its attitude? Correctness of the result does not matter here. Use 1 (nothing of the
persona shows, or it clearly speaks as someone else) to 5 (unmistakably this persona throughout).
Answer with this JSON shape only: {{"reason": "one sentence", "score": 1-5}}"""


class LLMFidelityJudge(ChatBacked):
    """PersonaGym-style 1-5 persona-fidelity ratings from a chat model (unusable replies counted, no score).

    Args:
        client: The chat client; default ``LocalChatClient()`` on first use.
        max_tokens: Reply length bound.
        temperature: Sampling temperature.
    """

    def __init__(self, client: Any = None, max_tokens: int | None = 200, temperature: float | None = 0.0):
        super().__init__(client, max_tokens, temperature)
        self.counter = FallbackCounter()

    @staticmethod
    def _score(data: Any) -> str | None:
        score = data.get("score") if isinstance(data, dict) else None
        ok = isinstance(score, (int, float)) and not isinstance(score, bool) and 1 <= score <= 5
        return None if ok else f"no score from 1 to 5 in {str(data)[:80]!r}"

    def score_batch(self, items: Sequence[FidelityItem]) -> list[FidelityScore]:
        """One 1-5 rating per answer asked under a persona (no-persona answers are not rated)."""
        scored = [i for i, item in enumerate(items) if item.persona_id != "none"]
        conversations = [[{"role": "system", "content": FIDELITY_SYSTEM}, {"role": "user", "content": (
            FIDELITY_TEMPLATE.format(persona=items[i].persona, question=items[i].messages[-1]["content"],
                                     answer=items[i].answer))}] for i in scored]
        replies = self.client.chat_json_batch(conversations, default={}, validate=self._score,
                                              max_tokens=self.max_tokens, temperature=self.temperature)
        out = [FidelityScore() for _ in items]
        for i, reply in zip(scored, replies):
            self.counter.record(None if reply.ok else (reply.error or "unusable reply"))
            out[i] = FidelityScore(rating=float(reply.data["score"]) if reply.ok else None)
        return out

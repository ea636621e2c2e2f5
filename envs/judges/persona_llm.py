"""Chat-model versions of the persona-setting plug-ins (rubric extractor, critic, evaluation judge).

Each sends one request per item through an ``envs.chat.ChatClient`` (a whole batch in one
``chat_json_batch`` call) and asks for JSON. The shape check goes to the client as its ``validate``
hook, so a reply that fails it is neither cached nor used. An unusable reply (not JSON, wrong shape,
failed request) never raises: the extractor falls back to :func:`envs.judges.persona.heuristic_rubric`,
the critic to :data:`NEUTRAL_CRITIQUE`, the evaluation judge to no spans (Q = 0), and each counts it
in its ``counter`` (:class:`envs.judges.base.FallbackCounter`). The prompts follow the structure of
the paper's appendix B (B.1-B.4) in this project's own words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from envs.chat import ChatBacked
from envs.data.persona import FACET_LABELS, FACETS, PersonaRecord
from envs.judges.base import FallbackCounter
from envs.judges.persona import (
    WORD_TOKEN,
    CachedRubricExtractor,
    Critique,
    ResponseQuery,
    Rubric,
    RubricQuery,
    SpanJudgement,
    check_facet,
    heuristic_rubric,
)

NEUTRAL_CRITIQUE = "No critique is available for the previous answer."
MAX_CRITERIA = 4

JSON_ONLY = "Reply with a JSON object and nothing else."

RUBRIC_SYSTEM = "You write short grading criteria that tell apart the sides of one person. " + JSON_ONLY

RUBRIC_TEMPLATE = """Here are five sides of one and the same person, followed by a question put to them.

{sections}

Question:
{question}

For each side, write two to four short criteria that an answer would meet only if it really draws on
that side of the person. Remove any criterion that another side would satisfy just as well. Be
concrete: places, activities, dishes, works, skills, ways of talking. Assume the answer is already
well written and in the format the question calls for, so the criteria cover only what this side of
the person adds to it.

Answer with exactly this JSON shape:
{{"professional": ["..."], "sports": ["..."], "arts": ["..."], "travel": ["..."], "culinary": ["..."]}}"""

CRITIC_SYSTEM = "You review answers for how closely they speak in the voice of one persona. " + JSON_ONLY

CRITIC_TEMPLATE = """Persona ({label} side of the person):
{persona}

Question:
{question}

Answer under review:
{response}
{criteria}
In two to four sentences, say how far this answer sounds like it comes from someone with this
background, and where it misses. Judge the overall stance and voice rather than ticking off named
details. Prose that would suit anyone is neutral: neither praise it nor fault it.

Answer with exactly this JSON shape: {{"critique": "..."}}"""

CRITERIA_BLOCK = """
For context, what a strong answer from this persona would do (a guide, not a checklist):
{items}
"""

JUDGE_SYSTEM = "You judge how well an answer carries one persona's voice and quote your evidence. " + JSON_ONLY

JUDGE_TEMPLATE = """Persona ({label} side of the person):
{persona}

Question:
{question}

Answer to judge:
{response}

1. "critique": two to four sentences on the answer's voice. Credit concrete parts of this background
   that are woven in naturally, or a register or stance typical of it. Dropping names without a
   voice behind them earns nothing. Generic prose is neutral.
2. "good_spans": passages where this persona's voice clearly comes through.
3. "bad_spans": passages that sound like somebody else: content, expertise or interests outside this
   background, or claims that contradict it.
Copy every passage character for character from the answer. A passage goes in one list only. Few or
no passages is fine; quote only what your critique rests on.

Answer with exactly this JSON shape: {{"critique": "...", "good_spans": ["..."], "bad_spans": ["..."]}}"""


def scaffold_sections(record: PersonaRecord) -> str:
    """The five facets as ``## Label`` sections, in the fixed order."""
    return "\n\n".join(f"## {FACET_LABELS[f]}\n{record.facets[f]}" for f in FACETS)


# --- reply checks (the client's validate hooks) -------------------------------------------------


def rubric_problem(data: Any) -> str | None:
    """Why a reply is not a usable rubric (None when it is)."""
    if not isinstance(data, dict):
        return f"reply is {type(data).__name__}, not a JSON object"
    for facet in FACETS:
        items = data.get(facet)
        if not isinstance(items, list) or not any(isinstance(x, str) and x.strip() for x in items):
            return f"no criteria list for {facet!r}"
    return None


def critique_problem(data: Any) -> str | None:
    """Why a reply is not a usable critique (None when it is)."""
    if not isinstance(data, dict):
        return f"reply is {type(data).__name__}, not a JSON object"
    if not isinstance(data.get("critique"), str) or not data["critique"].strip():
        return "no 'critique' string"
    return None


def spans_problem(data: Any) -> str | None:
    """Why a reply is not a usable span judgement (None when it is)."""
    if not isinstance(data, dict):
        return f"reply is {type(data).__name__}, not a JSON object"
    for key in ("good_spans", "bad_spans"):
        if not isinstance(data.get(key), list):
            return f"no {key!r} list"
    if "critique" in data and not isinstance(data["critique"], str):
        return "'critique' is not a string"
    return None


def count_span_tokens(response: str, good_spans: Iterable[Any], bad_spans: Iterable[Any]) -> SpanJudgement:
    r"""Locates quoted spans in ``response`` and counts the words they cover.

    Rules (the paper leaves them open):

    - A span is stripped of surrounding white space and quote marks and must then occur verbatim
      (case-sensitive) in the response; its first occurrence is marked. Anything else (not a
      string, empty, not found) is dropped and counted in ``dropped_spans``.
    - Overlapping spans of the same list are merged, so no word counts twice; characters marked
      both good and bad count for neither list.
    - Tokens are words (``\w+`` with inner apostrophes or hyphens). A word counts for G (or B) when
      more than half of its characters are marked good only (bad only).

    Returns:
        The accepted spans (as found) and their G, B and drop counts.
    """
    n = len(response)
    masks = {"good": np.zeros(n, bool), "bad": np.zeros(n, bool)}
    kept: dict[str, list[str]] = {"good": [], "bad": []}
    dropped = 0
    for name, spans in (("good", good_spans), ("bad", bad_spans)):
        for span in spans or []:
            quote = span.strip().strip("\"'“”‘’").strip() if isinstance(span, str) else ""
            at = response.find(quote) if quote else -1
            if at < 0:
                dropped += 1
                continue
            masks[name][at: at + len(quote)] = True
            kept[name].append(quote)
    good_only, bad_only = masks["good"] & ~masks["bad"], masks["bad"] & ~masks["good"]
    g = b = 0
    for m in WORD_TOKEN.finditer(response):
        length = m.end() - m.start()
        g += int(good_only[m.start(): m.end()].sum() * 2 > length)
        b += int(bad_only[m.start(): m.end()].sum() * 2 > length)
    return SpanJudgement(kept["good"], kept["bad"], g, b, dropped)


# --- plug-ins -----------------------------------------------------------------------------------


class _Chat(ChatBacked):
    def __init__(self, client: Any = None, max_tokens: int | None = 512, temperature: float | None = 0.0) -> None:
        super().__init__(client, max_tokens, temperature)
        self.counter = FallbackCounter()

    def _ask(self, conversations: list[list[dict]], check: Any) -> list[tuple[Any, str | None]]:
        """(data, None) per usable reply, (None, why) per unusable one; every reply counted."""
        if not conversations:
            return []
        replies = self.client.chat_json_batch(conversations, default={}, validate=check,
                                              max_tokens=self.max_tokens, temperature=self.temperature)
        out = []
        for reply in replies:
            data = getattr(reply, "data", reply)
            error = None if getattr(reply, "ok", True) else (getattr(reply, "error", None) or "unusable reply")
            error = error or check(data)  # a client without validate support still gets checked
            self.counter.record(error)
            out.append((None, error) if error else (data, None))
        return out


class LLMRubricExtractor(CachedRubricExtractor, _Chat):
    """Joint contrastive rubric extractor run by a chat model (one request covers all five facets).

    Args:
        client: An ``envs.chat.ChatClient``; default ``LocalChatClient()`` on first use.
        cache_path: Rubric cache: ``"auto"`` (default, ``$PLURALGYM_CACHE/rubrics.sqlite``), a path, or None.
        max_tokens, temperature: Passed to the client.
    """

    def __init__(self, client: Any = None, cache_path: Any = "auto", max_tokens: int | None = 512,
                 temperature: float | None = 0.0) -> None:
        _Chat.__init__(self, client, max_tokens, temperature)
        CachedRubricExtractor.__init__(self, cache_path)
        # fixed for the extractor's life, so keys stay the same once a default client is built
        self.cache_namespace = f"llm-rubric-v1:{getattr(client, 'model', 'embedded')}"

    def build_conversation(self, query: RubricQuery) -> list[dict]:
        """The request for one (record, request) pair."""
        user = RUBRIC_TEMPLATE.format(sections=scaffold_sections(query.record), question=query.prompt)
        return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": user}]

    def _extract(self, queries: Sequence[RubricQuery]) -> list[Rubric]:
        answers = self._ask([self.build_conversation(q) for q in queries], rubric_problem)
        out = []
        for query, (data, _) in zip(queries, answers):
            if data is None:
                out.append(Rubric(heuristic_rubric(query.record).criteria, fallback=True))
                continue
            out.append(Rubric({f: [x.strip() for x in data[f] if isinstance(x, str) and x.strip()][:MAX_CRITERIA]
                               for f in FACETS}))
        return out


class LLMPersonaCritic(_Chat):
    """Persona critic run by a chat model; adds the criteria block when a query carries criteria.

    Args:
        client: An ``envs.chat.ChatClient``; default ``LocalChatClient()`` on first use.
        max_tokens, temperature: Passed to the client.
    """

    def build_conversation(self, query: ResponseQuery) -> list[dict]:
        """The request for one response (only the focal facet's text is shown)."""
        facet = check_facet(query.facet)
        block = ""
        if query.criteria:
            block = CRITERIA_BLOCK.format(items="\n".join(f"- {c}" for c in query.criteria))
        user = CRITIC_TEMPLATE.format(label=FACET_LABELS[facet], persona=query.record.facets[facet],
                                      question=query.prompt, response=query.response, criteria=block)
        return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": user}]

    def critique_batch(self, queries: Sequence[ResponseQuery]) -> list[Critique]:
        """One critique per query (:data:`NEUTRAL_CRITIQUE` when the reply is unusable)."""
        answers = self._ask([self.build_conversation(q) for q in queries], critique_problem)
        return [Critique(" ".join(data["critique"].split())) if data is not None
                else Critique(NEUTRAL_CRITIQUE, fallback=True) for data, _ in answers]


class LLMPersonaEvalJudge(_Chat):
    """Span-marking evaluation judge run by a chat model (sees only the judging facet's text).

    Spans are located and counted by :func:`count_span_tokens`; quotes that are not verbatim are
    dropped and counted in ``SpanJudgement.dropped_spans``.

    Args:
        client: An ``envs.chat.ChatClient``; default ``LocalChatClient()`` on first use.
        max_tokens, temperature: Passed to the client.
    """

    def build_conversation(self, query: ResponseQuery) -> list[dict]:
        """The request for one response under its judging facet."""
        facet = check_facet(query.facet)
        user = JUDGE_TEMPLATE.format(label=FACET_LABELS[facet], persona=query.record.facets[facet],
                                     question=query.prompt, response=query.response)
        return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]

    def judge_batch(self, queries: Sequence[ResponseQuery]) -> list[SpanJudgement]:
        """One judgement per query (no spans, Q = 0, ``fallback=True`` when the reply is unusable)."""
        answers = self._ask([self.build_conversation(q) for q in queries], spans_problem)
        out = []
        for query, (data, _) in zip(queries, answers):
            if data is None:
                out.append(SpanJudgement(fallback=True))
                continue
            judgement = count_span_tokens(query.response, data["good_spans"], data["bad_spans"])
            judgement.critique = " ".join(str(data.get("critique", "")).split())
            out.append(judgement)
        return out

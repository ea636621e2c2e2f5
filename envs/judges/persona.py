"""Judges of the persona-critic setting: rubric extractors, critics, evaluation judges and the Q metrics.

Three plug-ins, each a small ``Protocol`` with an offline heuristic here and a chat-model version in
``envs.judges.persona_llm``:

- a **rubric extractor** (:class:`RubricExtractor`) writes, once per (record, request), 2-4 criteria
  per facet that only that facet would satisfy; results are cached in memory and, when a
  ``cache_path`` is given, in a sqlite file keyed by (extractor, record text, request);
- a **critic** (:class:`PersonaCritic`) writes 2-4 sentences on how a response does or does not
  carry one facet's voice, optionally guided by that facet's criteria (the env's feedback);
- an **evaluation judge** (:class:`PersonaEvalJudge`) marks good and bad spans of a response for a
  judging facet d and counts their tokens G and B, giving Q = (G - B) / (G + B + eps).

The heuristics are lexical proxies. They see which words a response uses, not its stance or voice:
they reward name-dropping that the paper's judge discounts, and words of the request itself are
ignored so that answering the question is not mistaken for persona content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from envs.chat.cache import ResponseCache, default_cache_dir, request_digest
from envs.data.persona import FACETS, LEXICON_STEMS, STOPWORDS, PersonaRecord, content_stems, stem

Q_EPS = 1.0  # one pseudo-token of neutral text: Q(1 good, 0 bad) = 0.5, Q(no spans) = 0
RUBRIC_CACHE_FILE = "rubrics.sqlite"

# Lexicon words too common in ordinary answers to say anything about a persona ("this will work").
_GENERIC_IN_ANSWERS = """work job business company project team data research management policy client customer meeting
    staff sales marketing industry professional experience practice run read book reading trip eat diet""".split()
JUDGE_LEXICON = {f: s - {stem(w) for w in _GENERIC_IN_ANSWERS} for f, s in LEXICON_STEMS.items()}
AREAS = {"professional": "their work", "sports": "their sporting life", "arts": "their artistic tastes",
         "travel": "their travels", "culinary": "their cooking and eating"}
_REGISTER = {
    "professional": "Speaks with the know-how and vocabulary of their line of work",
    "sports": "Frames points through training, effort or the games they play and follow",
    "arts": "Frames points through the music, books, films or crafts they love",
    "travel": "Frames points through places they have been or want to see",
    "culinary": "Frames points through food, cooking or meals they care about",
}
_CRITERION_VERBS = frozenset("draws draw mentions mention refers refer brings bring uses use references shows show "
                             "includes include connects connect frames frame speaks speak answer response "
                             "points".split())
_CONNECTORS = frozenset("of the from in for with a an on at to".split())
WORD_TOKEN = re.compile(r"\w+(?:['’-]\w+)*")


# --- what the plug-ins read and return ---------------------------------------------------------


@dataclass(frozen=True)
class RubricQuery:
    """One (record, request) pair to write criteria for."""

    record: PersonaRecord
    prompt: str


@dataclass
class Rubric:
    """Criteria per facet for one (record, request).

    Attributes:
        criteria: Facet -> 2-4 short criteria (lists may be shorter for very thin facets).
        fallback: True when the extractor's reply was unusable and a heuristic rubric stands in.
    """

    criteria: dict[str, list[str]]
    fallback: bool = False


@dataclass(frozen=True)
class ResponseQuery:
    """A response to critique or judge under one facet of a record.

    Attributes:
        record: The persona record (heuristics compare facets; chat-model judges see only ``facet``'s text).
        facet: The focal (critic) or judging (evaluation) facet.
        prompt: The user's request.
        response: The text under review.
        criteria: The facet's rubric for a rubric-guided critic; None without one.
    """

    record: PersonaRecord
    facet: str
    prompt: str
    response: str
    criteria: tuple[str, ...] | None = None


@dataclass
class Critique:
    """A critique and whether it is a stand-in for an unusable reply."""

    text: str
    fallback: bool = False


@dataclass
class SpanJudgement:
    """Spans of a response marked for one judging facet, and their token counts.

    Attributes:
        good_spans: Verbatim passages where the facet's voice comes through.
        bad_spans: Verbatim passages that sound like someone else.
        good_tokens: G, the words inside good spans only (see :func:`count_span_tokens`).
        bad_tokens: B, the words inside bad spans only.
        dropped_spans: Spans given that were not verbatim quotes of the response.
        critique: The judge's comment ("" for the heuristic).
        fallback: True when the judge's reply was unusable (no spans, Q = 0).
    """

    good_spans: list[str] = field(default_factory=list)
    bad_spans: list[str] = field(default_factory=list)
    good_tokens: int = 0
    bad_tokens: int = 0
    dropped_spans: int = 0
    critique: str = ""
    fallback: bool = False

    @property
    def q(self) -> float:
        """Q = (G - B) / (G + B + eps) with eps = :data:`Q_EPS`."""
        return q_value(self.good_tokens, self.bad_tokens)


@runtime_checkable
class RubricExtractor(Protocol):
    """Writes facet-specific criteria for (record, request) pairs, all five facets in one go."""

    def extract_batch(self, queries: Sequence[RubricQuery]) -> list[Rubric]:
        """One rubric per query."""
        ...


@runtime_checkable
class PersonaCritic(Protocol):
    """Writes a 2-4 sentence critique of a response's fit to one facet (``query.criteria`` may guide it)."""

    def critique_batch(self, queries: Sequence[ResponseQuery]) -> list[Critique]:
        """One critique per query."""
        ...


@runtime_checkable
class PersonaEvalJudge(Protocol):
    """Marks good and bad spans of a response for a judging facet."""

    def judge_batch(self, queries: Sequence[ResponseQuery]) -> list[SpanJudgement]:
        """One judgement per query."""
        ...


def check_facet(facet: str) -> str:
    """``facet`` lower-cased, checked against :data:`FACETS`."""
    key = str(facet).strip().lower()
    if key not in FACETS:
        raise ValueError(f"facet must be one of {FACETS}, got {facet!r}")
    return key


# --- word-level analysis shared by the heuristics ---------------------------------------------


def phrases(text: str) -> list[str]:
    """Runs of content words in ``text``, in order, without repeats.

    A run may bridge short connectors ("of", "the", "from", ...) between content words ("songs from the
    movie") and goes on through capitalised words ("New York"); other stop words ("and", "they",
    "love") and punctuation end it.
    """
    runs, current, pending = [], [], []
    for piece in re.split(r"([,.;:!?()\"]|\s+)", text):
        if not piece or piece.isspace():
            continue
        word = re.fullmatch(r"[A-Za-z][A-Za-z'-]*", piece) is not None
        if word and ((piece.lower() not in STOPWORDS and len(piece) >= 3) or (piece[0].isupper() and current)):
            current += [*pending, piece]
            pending = []
        elif current and piece.lower() in _CONNECTORS:
            pending.append(piece)
        else:
            if current:
                runs.append(" ".join(current))
            current, pending = [], []
    if current:
        runs.append(" ".join(current))
    return list(dict.fromkeys(runs))


@dataclass
class WordLabels:
    """The lexical proxy's reading of a response for one judging facet."""

    good: list[re.Match] = field(default_factory=list)  # word matches labelled good, in order
    bad: list[re.Match] = field(default_factory=list)
    own_details: list[str] = field(default_factory=list)  # good words taken from the facet's own text


def label_words(record: PersonaRecord, facet: str, prompt: str, response: str) -> WordLabels:
    """Labels each content word of ``response`` for judging facet ``facet`` (SPECS A10.1).

    Good: its stem is among the facet's content words or domain lexicon. Bad: it is among another
    facet's content words or lexicon and not the facet's own. Stop words and words whose stem
    occurs in the request are never labelled.
    """
    own_text = content_stems(record.facets[facet])
    good = own_text | JUDGE_LEXICON[facet]
    bad = set().union(*(content_stems(record.facets[f]) | JUDGE_LEXICON[f] for f in FACETS if f != facet)) - good
    asked = content_stems(prompt)
    labels = WordLabels()
    for m in WORD_TOKEN.finditer(response):
        word = m.group(0)
        if len(word) < 3 or word.lower() in STOPWORDS or not word[0].isalpha():
            continue
        s = stem(word)
        if s in asked:
            continue
        if s in good:
            labels.good.append(m)
            if s in own_text:
                labels.own_details.append(word)
        elif s in bad:
            labels.bad.append(m)
    return labels


def _runs(matches: list[re.Match], text: str) -> list[str]:
    """Merges labelled words with no other word between them into verbatim spans."""
    spans, begin, end = [], None, None
    for m in matches:
        if begin is not None and not WORD_TOKEN.search(text, end, m.start()):
            end = m.end()
            continue
        if begin is not None:
            spans.append(text[begin:end])
        begin, end = m.start(), m.end()
    if begin is not None:
        spans.append(text[begin:end])
    return spans


# --- evaluation judge ---------------------------------------------------------------------------


class HeuristicPersonaEvalJudge:
    """The lexical evaluation proxy of SPECS A10.1: good/bad words by facet vocabulary.

    Each labelled word is one token (G or B); neighbouring words with the same label form one span.
    A response with no facet words at all gets Q = 0, like generic prose under the paper's judge.
    Weakness: it counts words, not voice; listing a facet's keywords scores as well as using them.
    """

    def judge_batch(self, queries: Sequence[ResponseQuery]) -> list[SpanJudgement]:
        """One judgement per query."""
        out = []
        for q in queries:
            labels = label_words(q.record, check_facet(q.facet), q.prompt, q.response)
            out.append(SpanJudgement(_runs(labels.good, q.response), _runs(labels.bad, q.response),
                                     len(labels.good), len(labels.bad)))
        return out


# --- rubric extractors --------------------------------------------------------------------------


class CachedRubricExtractor:
    """Base of the rubric extractors: memory and optional sqlite cache around ``_extract``.

    The key is a digest of (``cache_namespace``, the record's five facet texts, the request), so a
    rubric is computed once per training example and reused by every rollout, across processes
    when they share the file. Fallback rubrics are never cached.

    Args:
        cache_path: sqlite file, ``"auto"`` for ``$PLURALGYM_CACHE/rubrics.sqlite``, or None (memory only).
    """

    cache_namespace = "rubric"

    def __init__(self, cache_path: Any = None) -> None:
        if cache_path is not None and str(cache_path) == "auto":
            cache_path = default_cache_dir() / RUBRIC_CACHE_FILE
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self._memory: dict[str, Rubric] = {}
        self.cache_hits = 0

    def cache_key(self, query: RubricQuery) -> str:
        """Digest of (namespace, facet texts, request)."""
        return request_digest({"kind": self.cache_namespace, "facets": query.record.facets, "prompt": query.prompt})

    def extract_batch(self, queries: Sequence[RubricQuery]) -> list[Rubric]:
        """One rubric per query; only the ones in neither cache are extracted (in one batch)."""
        keys = [self.cache_key(q) for q in queries]
        results: list[Rubric | None] = [self._lookup(k) for k in keys]
        self.cache_hits += sum(r is not None for r in results)
        todo = [i for i, r in enumerate(results) if r is None]
        unique = list(dict.fromkeys(keys[i] for i in todo))  # a repeated pair is extracted once
        first = {k: next(i for i in todo if keys[i] == k) for k in unique}
        fresh = dict(zip(unique, self._extract([queries[first[k]] for k in unique]))) if unique else {}
        for key, rubric in fresh.items():
            if not rubric.fallback:
                self._memory[key] = rubric
                if self.cache is not None:
                    self.cache.put(key, json.dumps(asdict(rubric)), backend=self.cache_namespace)
        return [results[i] if results[i] is not None else fresh[keys[i]] for i in range(len(queries))]

    def _lookup(self, key: str) -> Rubric | None:
        if key in self._memory:
            return self._memory[key]
        raw = self.cache.get(key) if self.cache is not None else None
        if raw is None:
            return None
        rubric = Rubric({f: list(c) for f, c in json.loads(raw)["criteria"].items()})
        self._memory[key] = rubric
        return rubric

    def _extract(self, queries: Sequence[RubricQuery]) -> list[Rubric]:
        raise NotImplementedError


def heuristic_rubric(record: PersonaRecord) -> Rubric:
    """Contrastive criteria from the facet texts alone (SPECS A10.2).

    For each facet: up to four phrases of its text none of whose words occurs in another facet's
    text, each phrased as "Draws on <phrase> (<area>)"; when fewer than two remain, a facet-specific
    register criterion fills in. Weakness: it knows nothing about the request.
    """
    stems = {f: content_stems(record.facets[f]) for f in FACETS}
    criteria = {}
    for facet in FACETS:
        others = set().union(*(stems[f] for f in FACETS if f != facet))
        unique = [p for p in phrases(record.facets[facet]) if not content_stems(p) & others]
        items = [f"Draws on {p} ({AREAS[facet]})" for p in unique[:4]]
        if len(items) < 2:
            items.append(_REGISTER[facet])
        criteria[facet] = items
    return Rubric(criteria)


class HeuristicRubricExtractor(CachedRubricExtractor):
    """Offline rubric extractor: :func:`heuristic_rubric` behind the shared cache (memory only by default)."""

    cache_namespace = "heuristic-rubric-v1"

    def _extract(self, queries: Sequence[RubricQuery]) -> list[Rubric]:
        return [heuristic_rubric(q.record) for q in queries]


# --- critic -------------------------------------------------------------------------------------


def _listing(items: Sequence[str], limit: int = 3) -> str:
    items = [f'"{x}"' for x in list(dict.fromkeys(items))[:limit]]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def criteria_details(criteria: Sequence[str]) -> list[str]:
    """The content phrases of rubric criteria, without the criteria's own verbs ("Draws on", "Mentions")."""
    out = []
    for criterion in criteria:
        for p in phrases(re.sub(r"\([^)]*\)", " ", criterion)):
            kept = [w for w in p.split() if w.lower() not in _CRITERION_VERBS]
            while kept and kept[0].lower() in _CONNECTORS:
                kept.pop(0)
            kept = " ".join(kept)
            if content_stems(kept):
                out.append(kept)
    return list(dict.fromkeys(out))


class HeuristicPersonaCritic:
    """A template critique from the lexical proxy (SPECS A10.3), with or without rubric criteria.

    Two to four sentences: the facet details the response used (or that it reads as generic), the
    off-facet content it leaned on instead, the details it could still draw on (the rubric's
    phrases when criteria are given, else the facet text's), and a note when the persona content is
    thin next to the response's length. Weakness: it reports vocabulary, not voice or stance.

    Args:
        quote_off_facet: Name the off-facet words the response leaned on (True), or only say that
            it leaned on other sides of the person (False). A small teacher that reads the quoted
            words raises their probability, the opposite of what the critique asks
            (docs/persona.md, the feedback AUC); False keeps the verdict without the words.
    """

    def __init__(self, quote_off_facet: bool = True):
        self.quote_off_facet = bool(quote_off_facet)

    def critique_batch(self, queries: Sequence[ResponseQuery]) -> list[Critique]:
        """One critique per query."""
        return [Critique(self.critique(q)) for q in queries]

    def critique(self, q: ResponseQuery) -> str:
        """The critique of one response."""
        facet = check_facet(q.facet)
        labels = label_words(q.record, facet, q.prompt, q.response)
        area = AREAS[facet]
        used = [m.group(0) for m in labels.good]
        details = criteria_details(q.criteria) if q.criteria else phrases(q.record.facets[facet])
        said = {stem(m.group(0)) for m in labels.good}
        missing = [d for d in details if not content_stems(d) & said]
        sentences = []
        if labels.own_details:
            sentences.append(f"The answer draws on {area} through {_listing(labels.own_details)}, which fits "
                             "this person.")
        elif used:
            sentences.append(f"The answer touches {area} only in general terms ({_listing(used)}), with nothing "
                             "specific to this person.")
        elif labels.bad:
            sentences.append(f"Nothing in the answer reflects {area}.")
        else:
            sentences.append(f"The answer is generic: nothing in it reflects {area}, so it could have come from "
                             "anyone.")
        if labels.bad:
            off = [m.group(0) for m in labels.bad]
            verb = "also brings in" if used else "leans instead on"
            belong = "belongs" if len(set(off)) == 1 else "belong"
            if self.quote_off_facet:
                sentences.append(f"It {verb} {_listing(off)}, which {belong} to other sides of the person rather "
                                 "than this one.")
            else:
                sentences.append(f"It {verb} details from other sides of the person rather than this one.")
        if missing:
            sentences.append(f"To sound like this person, it could bring in {_listing(missing, 2)} and let "
                             "that shape the advice.")
        content = [m for m in WORD_TOKEN.finditer(q.response) if m.group(0).lower() not in STOPWORDS]
        if used and len(used) * 12 < len(content):
            sentences.append("Most of the text is still advice anyone could give; the persona shows up only "
                             "in passing.")
        if len(sentences) < 2:
            sentences.append("Keep these details at the centre of the reasoning rather than mentioning them "
                             "once.")
        return " ".join(sentences[:4])


# --- Q metrics (SPECS A7) -----------------------------------------------------------------------


def q_value(good: float, bad: float, eps: float = Q_EPS) -> float:
    """Q = (G - B) / (G + B + eps), in (-1, 1); 0 when nothing is marked.

    ``eps`` defaults to one token (:data:`Q_EPS`): the paper leaves it open; a whole token keeps Q
    graded for short responses (one good word gives 0.5, ten give 0.91). Pass a tiny ``eps`` for the
    bare ratio.
    """
    return (good - bad) / (good + bad + eps)


@dataclass
class QMatrix:
    """Q values with generators as rows and judging facets as columns.

    Attributes:
        rows: Generator names (heads named after facets, ``blend``, ``base``, ...).
        columns: Judging facets.
        values: Array of shape (len(rows), len(columns)).
    """

    rows: list[str]
    columns: list[str]
    values: np.ndarray

    def row(self, name: str) -> np.ndarray:
        """The Q values of one generator, by column."""
        return self.values[self.rows.index(name)]

    def heads(self, names: Sequence[str] | None = None) -> np.ndarray:
        """The square block whose row ``i`` is the generator trained for column ``i``.

        Args:
            names: Row name of each column's head (default: the column names themselves).
        """
        names = list(names) if names is not None else self.columns
        return np.stack([self.row(n) for n in names])  # (D, D)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{row: {column: value}}``."""
        return {r: {c: float(v) for c, v in zip(self.columns, vals)} for r, vals in zip(self.rows, self.values)}


def q_matrix(scores: Mapping[str, Mapping[str, Any]], *, columns: Sequence[str] = FACETS,
             pooled: bool = False) -> QMatrix:
    """Builds a :class:`QMatrix` from ``scores[generator][facet]``.

    Each cell may be a number (taken as is), a sequence of numbers (their mean), or a sequence of
    :class:`SpanJudgement` (the mean of per-response Q, or with ``pooled`` Q of the summed G and B).
    """

    def cell(value: Any) -> float:
        if isinstance(value, (int, float, np.floating)):
            return float(value)
        items = list(value)
        if items and isinstance(items[0], SpanJudgement):
            if pooled:
                return q_value(sum(j.good_tokens for j in items), sum(j.bad_tokens for j in items))
            items = [j.q for j in items]
        return float(np.mean(items)) if items else 0.0

    rows = list(scores)
    values = np.array([[cell(scores[r][c]) for c in columns] for r in rows], dtype=float).reshape(len(rows),
                                                                                                   len(columns))
    return QMatrix(rows, list(columns), values)


def _square(q: Any) -> np.ndarray:
    m = q.heads() if isinstance(q, QMatrix) else np.asarray(q, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"expected a square matrix of heads x facets (at least 2x2), got shape {m.shape}")
    return m


def q_own(heads: Any) -> float:
    """Q_own: the mean of the diagonal, each head judged under its own facet."""
    return float(np.mean(np.diag(_square(heads))))


def delta_base(heads: Any, base: Any) -> float:
    """Delta_base = Q_own - the base model's mean Q over facets (``base``: a row or a QMatrix with a ``base`` row)."""
    base_row = base.row("base") if isinstance(base, QMatrix) else np.asarray(base, dtype=float)
    return q_own(heads) - float(np.mean(base_row))


def delta_diag(heads: Any) -> float:
    """Delta_diag, row-wise: mean over heads d of Q(d, d) minus the mean of Q(d, d') over d' != d."""
    m = _square(heads)
    d = m.shape[0]
    off = (m.sum(axis=1) - np.diag(m)) / (d - 1)
    return float(np.mean(np.diag(m) - off))


def diag_wins(run_a: Any, run_b: Any) -> tuple[int, int]:
    """Diagonal wins: (facets where run A's own-facet Q is higher, facets where B's is); ties count for neither."""
    a, b = np.diag(_square(run_a)), np.diag(_square(run_b))
    if a.shape != b.shape:
        raise ValueError(f"runs have {a.size} and {b.size} heads")
    return int(np.sum(a > b)), int(np.sum(b > a))

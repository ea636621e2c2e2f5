"""Rule-based reader of a teacher turn: does it mainly ASK or mainly EXPLAIN?

The scripted student and the heuristic style judge both rely on it. The rules mirror how a
careful reader judges a turn's *main move*:

- a real question or an imperative invitation ("try to...", "tell me...", "guess...",
  "walk me through...") is an elicitation;
- a short comprehension check tacked onto an explanation ("make sense?", "got it?",
  "any questions?") and a tag question (", right?") are not elicitations;
- a question the teacher answers right away ("Why does ice float? Because...") is rhetorical,
  so it counts as explanation;
- scenario set-ups ("Imagine...", "Suppose...") and short framing ("Okay, good.", "Let's test
  it.") carry little weight;
- a turn with an elicitation is ASK unless the explanation in it is long enough that the
  question is an afterthought (more than ``EXPLAIN_BUDGET`` words, plus ``EXTRA_BUDGET`` per
  extra elicitation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

TurnKind = Literal["ask", "explain"]

# words of explanation a single elicitation can carry before the turn counts as explaining
EXPLAIN_BUDGET = 50
EXTRA_BUDGET = 25
# a turn with no elicitation and at most this many explanatory words is a bare acknowledgement
BARE_TURN_WORDS = 6

_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)\]])\s+|\n+")
_WORD = re.compile(r"[A-Za-z0-9’']+")
_LEAD_IN = re.compile(
    r"^(?:(?:so|now|okay|ok|alright|all right|well|first|next|then|great|good|nice|"
    r"right|and|but|here's a challenge|here is a challenge|quick one|one more)\s*[,:;!.-]?\s+)+",
    re.IGNORECASE,
)
_WH = re.compile(r"^(?:what|why|how|which|who|whom|whose|where|when)\b", re.IGNORECASE)
_CHECK = re.compile(
    r"\b(?:make[s]? sense|got it|get it|gets it|any questions?|questions so far|clear|okay|ok|"
    r"right|follow(?:ing)?|with me|understand|see|does that help|sound[s]? good|all good|cool|"
    r"alright|all right|ready|you see|good so far|yeah)\b",
    re.IGNORECASE,
)
_TAG = re.compile(
    r",\s*(?:right|okay|ok|yeah|yes|no|see|huh|isn't it|aren't they|don't they|doesn't it|"
    r"wasn't it|didn't they|correct|agreed|you know)\s*\?+$",
    re.IGNORECASE,
)
_INTERROGATIVE_NO_MARK = re.compile(
    r"^(?:what|why|how|which) (?:do|would|might|could) you\b|^(?:can|could|would|will) you\b|"
    r"^do you (?:think|remember|know)\b",
    re.IGNORECASE,
)
_INVITATION = re.compile(
    r"^(?:try\b|tell me\b|guess\b|take a (?:guess|stab|shot)\b|make a guess\b|give (?:me|it)\b|"
    r"have a go\b|walk me through\b|explain\b|describe\b|predict\b|figure out\b|work out\b|"
    r"see if you can\b|i want you to\b|i'd like you to\b|i would like you to\b|name\b|list\b|"
    r"come up with\b|pick\b|choose\b|think about (?!it this way)|think it through\b|"
    r"let me know what you\b|let me hear\b|share\b|write down\b|jot down\b|count\b|"
    r"compare\b|sort\b|rank\b|put (?:these|them|it) in order\b|in your own words\b|"
    r"your turn\b|you try\b|show me\b|finish (?:this|the) sentence\b)",
    re.IGNORECASE,
)
_INVITATION_ANYWHERE = re.compile(
    r"\b(?:your turn|in your own words|your best guess|take a guess|take a stab|"
    r"see if you can|what do you think|let me know what you think|i'm curious what you)\b",
    re.IGNORECASE,
)
_ENCOURAGE = re.compile(
    r"^(?:hint\b|here's a hint|a hint\b|there's no wrong answer|there are no wrong answers|"
    r"no wrong answers|take your time|don't worry|just a guess|any guess is fine|"
    r"go ahead|give it a try|i'm curious|no pressure)",
    re.IGNORECASE,
)
_SETUP = re.compile(
    r"^(?:imagine|suppose|picture|pretend|consider|let's say|say you|think of|look at|"
    r"put|here's|here is|remember|recall|let's|let us|quick question|question for you)\b",
    re.IGNORECASE,
)
_NOT_INVITATION = re.compile(
    r"^(?:let me know if you have|tell me if you have|explain(?:s|ed|ing)\b)", re.IGNORECASE
)


@dataclass(frozen=True)
class Sentence:
    """One sentence of a teacher turn with the role the classifier gave it."""
    text: str
    role: str  # "question" | "invitation" | "check" | "rhetorical" | "explain" | "setup" | "framing" | "encourage"
    words: int


@dataclass(frozen=True)
class TurnAnalysis:
    """What the classifier saw in a teacher turn."""

    sentences: tuple[Sentence, ...] = field(default_factory=tuple)
    n_elicit: int = 0
    explain_words: float = 0.0
    kind: TurnKind = "explain"

    @property
    def is_bare(self) -> bool:
        """A bare acknowledgement or procedural turn: nothing asked, (almost) nothing taught."""
        return self.n_elicit == 0 and self.explain_words <= BARE_TURN_WORDS


def split_sentences(text: str) -> list[str]:
    """Splits a turn into sentences at end punctuation and line breaks."""
    return [s.strip() for s in _SPLIT.split(text.strip()) if s and s.strip()]


def _n_words(text: str) -> int:
    return len(_WORD.findall(text))


def _strip_lead_in(text: str) -> str:
    return _LEAD_IN.sub("", text.strip().lstrip("\"'“‘-–— ")).strip()


def _base_role(sentence: str) -> str:
    core = _strip_lead_in(sentence)
    n = _n_words(sentence)
    if sentence.rstrip().endswith("?"):
        if _TAG.search(sentence):
            return "explain"
        if not _WH.match(core) and _CHECK.search(core) and n <= 8:
            return "check"
        return "question"
    if _NOT_INVITATION.match(core):
        return "framing" if n <= 12 else "explain"
    if _ENCOURAGE.match(core):
        return "encourage"
    if _INTERROGATIVE_NO_MARK.match(core):
        return "question"
    if _INVITATION.match(core) or _INVITATION_ANYWHERE.search(sentence):
        return "invitation"
    if _SETUP.match(core):
        return "setup"
    if n <= 4:
        return "framing"
    return "explain"


def analyze_teacher_turn(text: str) -> TurnAnalysis:
    """Split a teacher turn into sentences, give each a role, and decide ask vs explain."""
    parts = split_sentences(text) if isinstance(text, str) else []
    roles = [_base_role(s) for s in parts]
    # A question followed by explanation (directly, or through further rhetorical questions)
    # is one the teacher answers themself: rhetorical. Walk backwards so chains resolve.
    nxt = None
    for i in range(len(roles) - 1, -1, -1):
        if roles[i] == "question" and nxt in ("explain", "rhetorical"):
            roles[i] = "rhetorical"
        if roles[i] != "check":
            nxt = roles[i]
    sentences = tuple(Sentence(s, r, _n_words(s)) for s, r in zip(parts, roles))
    n_elicit = sum(r in ("question", "invitation") for r in roles)
    weights = {"explain": 1.0, "rhetorical": 1.0, "setup": 0.3}
    explain_words = sum(s.words * weights.get(s.role, 0.0) for s in sentences)
    budget = EXPLAIN_BUDGET + EXTRA_BUDGET * max(0, n_elicit - 1)
    kind: TurnKind = "ask" if n_elicit > 0 and explain_words <= budget else "explain"
    return TurnAnalysis(sentences, n_elicit, float(explain_words), kind)


def classify_teacher_turn(text: str) -> TurnKind:
    """Return ``"ask"`` if the turn mainly asks the student to think or answer, else ``"explain"``.

    >>> classify_teacher_turn("Plants turn light into sugar in their leaves. Make sense?")
    'explain'
    >>> classify_teacher_turn("Okay. What do you think a plant needs to grow?")
    'ask'
    """
    return analyze_teacher_turn(text).kind

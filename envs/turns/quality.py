"""Is a teacher turn degenerate? A rule-based detector, and quality figures for reports.

A small policy trained against a scripted student can drift into text that no human tutor
would write and still collect praise: a sentence looped over and over, a story about a novel in
a lesson on 9/11, "I'm ready to continue.", a turn that stops in the middle of a clause. The
detector in this module spots five kinds of such turns without any model:

``repetition``
    The turn says the same thing again: more than ``max_repeated_ngrams`` of its word
    3-grams repeat an earlier 3-gram of the same turn, more than ``max_turn_overlap`` of them
    (at least three) come from one of the teacher's turns in the recent dialogue, one clause of at least
    ``min_clause_words`` words occurs twice, or a single content word makes up more than
    ``max_top_word_share`` of its content words. A key term used a few times is not enough.
``cut_off``
    The turn stops mid-sentence: it has at least ``min_cut_words`` words and no end mark
    (``.``, ``!``, ``?``, ``…``) at the end, or it ends on a dangling word such as "the",
    "and", "because" or a comma (then from ``min_dangling_words`` words on).
``off_topic``
    The turn has lost the thread. Its content words are compared, by stem, with those of the
    topic and of the last ``context_messages`` messages. It is off the topic when none of at
    least ``min_unconnected_words`` content words connects, or when fewer than
    ``max_drift_share`` connect and a sentence with no connection at all carries an
    off-register marker: a change of subject ("speaking of", "anyway", "by the way"), a
    personal anecdote ("my cousin", "my favourite") or web boilerplate ("click",
    "subscribe", "password") or small talk about the student's life ("your weekend",
    "your favourite"). Turns with fewer than ``min_content_words`` content words (framing
    such as "Lighter how?" or "Next up: the causes of the revolution.") get only the marker
    test: off the topic when none of their content words connects and a marker is there
    ("How was your weekend?"). A turn is also off the topic, whatever its length and
    connection, when it talks *about* the lesson instead of *to* the student: it refers to
    "the student" or "the learner" in the third person, or names a teaching style ("How about
    asking the student what they know?", "Use the INTERACTIVE style."), words that only a
    leaked instruction puts there (unless the topic or the dialogue uses them too). No check
    runs on a turn whose topic and context give nothing to compare with.
``filler``
    The turn carries no content: at most ``max_filler_content`` content words, none of them
    connected to the topic or context, no real question (a procedural one such as "Shall we
    move on?" does not count), and it is not bare praise of the student ("Great job!" stays a
    neutral acknowledgement). An empty turn is filler too.
``meta_talk``
    The turn talks about asking instead of asking (:func:`meta_talk`): "What would you like to
    ask about Atoms?", "How about asking about the Silk Road and how it relates to ...?", "Was
    there a question about Newton's law?", "What would you like to know about volcanoes?". It
    is meta-talk when a sentence is about the act of asking (by "you", "I" or "we", or as a
    suggestion) or has a question as its object, and the other sentences carry at most
    ``max_meta_rest`` content words, so a real explanation that ends with "What would you like
    to ask?" is not. Added after reading the held-out turns of the default run: 66 of its
    INTERACTIVE head's 96 turns were of this kind and the interactive student praised 20 of
    them. It flags none of the 271 labelled turns of ``tests/envs/data`` and none of the 24
    opening templates on any topic.

Content words are the words left after removing function words and generic classroom chatter
("lesson", "continue", "ready", "great", ...); two words match when their stems (possessive and
plural endings dropped, cut to six letters) agree, so "photosynthetic" meets "photosynthesis"
and "dictator" meets "dictatorship".

Thresholds (``Thresholds``; defaults below) were chosen by a coordinate search on the ``tune``
split of ``tests/envs/data/teacher_turn_quality.jsonl`` (90 of its 150 labelled turns: 46
coherent, 44 degenerate), maximising accuracy among the settings that flag no coherent turn,
and then measured once on the ``heldout`` split (60 turns: 32 coherent, 28 degenerate), which
played no part in choosing them. Precision and recall are those of the ``degenerate`` label:

=======  =====  ========  =========  ======
split    turns  accuracy  precision  recall
=======  =====  ========  =========  ======
tune     90     0.911     1.000      0.818
heldout  60     0.917     0.960      0.857
=======  =====  ========  =========  ======

Every repetitive, cut-off and filler turn of both splits is caught. The misses are all turns
that are off the topic or drift away from it (the 9/11 lesson that turns into a novel among
them): lexical overlap cannot see that "the weather in Lisbon" has nothing to do with
neurons when no marker gives it away, nor that a Caesar salad is not Julius Caesar. The one
false alarm (held out) is a turn that restates "force equals mass times acceleration" and
crosses the 3-gram limit. On the 121 coherent turns of ``tests/envs/data/teacher_turns.jsonl``
(written for the ask/explain reader, not for this detector) one is flagged, an explanation of
the French Revolution that never uses a word of its topic ("France" is not "French"); none of
the env's 16 seed turns is flagged for any of the 78 shipped topics. The rules lean towards
precision on purpose: a coherent turn flagged by mistake is punished by the student and both
judges, so ``off_topic`` needs a long stretch with no connection at all, or a marker.

The short-turn and third-person rules were added after a policy trained towards a privileged
instruction learned to repeat it ("How about asking the student ...") and to make small talk,
which the student rewarded as questions (with "asking" and "asked" now procedure words like
"ask", "How about asking a question?" is procedure, as "Shall we move on?" is). They catch one
more degenerate turn of the ``tune`` split (a question about football teams) and flag no
coherent turn of either labelled file or any seed turn. A stricter rule, "a question must
share a content word with the topic or the recent dialogue", was measured and rejected: with
the env's own opening (seed turn and reply) as the dialogue, it rejects 152 of 388 (39%)
coherent asking turns of the labelled files (each tried after four openings on its topic),
because good questions are scenarios in new words ("a plant kept in a dark closet"). Judging
whether a short question is about the lesson needs a model (``student=chat_model``).

A caveat on the held-out figures: the labelled turns and the rules come from the same hand.
All 150 turns were written before any rule, and the held-out split was never used to choose a
threshold, but the list of off-register markers was drafted after reading them, so the held-out
recall on drifting turns (4 of 4, each with a marker) is likely better than on fresh text.

``quality_figures`` summarises a batch of generated turns for reports (share of degenerate
turns, distinct-1/2, mean length, share cut at the token limit, topic overlap).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from envs.turns.classifier import analyze_teacher_turn, split_sentences

REASONS = ("repetition", "cut_off", "off_topic", "filler", "meta_talk")
"""Why a turn can be degenerate, in the order the reasons are reported."""


@dataclass(frozen=True)
class Thresholds:
    """Knobs of the detector; the defaults were tuned on labelled turns (see the module docstring).

    Attributes:
        max_repeated_ngrams: Largest share of a turn's word 3-grams that may repeat an earlier
            3-gram of the same turn.
        min_ngrams: Fewest 3-grams a turn needs before that share is judged.
        min_clause_words: A clause (text between punctuation marks) of at least this many words
            that occurs twice makes the turn repetitive.
        max_top_word_share: Largest share of a turn's content words that one word (stem) may take.
        min_top_word_content: Fewest content words a turn needs before that share is judged.
        min_cut_words: A turn of at least this many words without an end mark is cut off.
        min_dangling_words: A turn of at least this many words that ends on a dangling word (an
            article, preposition, conjunction or a comma) is cut off.
        min_content_words: Turns with fewer content words are framing: no topic check.
        min_connected_share: A checked turn whose share of content words connected to the topic
            or the recent dialogue is at most this is off the topic once it has at least
            ``min_unconnected_words`` content words.
        min_unconnected_words: See ``min_connected_share``.
        max_drift_share: A checked turn whose connected share is below this and whose unconnected
            sentences carry an off-register marker (a topic change, a personal anecdote, web
            boilerplate) has drifted off the topic.
        context_messages: How many messages before the turn count as the recent dialogue.
        max_filler_content: Most unconnected content words a content-free turn may have.
        max_turn_overlap: Largest share of a turn's word 3-grams that may come from one earlier
            teacher turn of the recent dialogue (a turn of at least three distinct 3-grams
            above it says the previous turn again).
        max_meta_rest: Most content words a turn may carry outside its sentences about asking
            and still count as meta-talk (more, and those sentences frame real content).
    """

    max_repeated_ngrams: float = 0.2
    min_ngrams: int = 6
    min_clause_words: int = 4
    max_top_word_share: float = 0.35
    min_top_word_content: int = 8
    min_cut_words: int = 8
    min_dangling_words: int = 3
    min_content_words: int = 7
    min_connected_share: float = 0.0
    min_unconnected_words: int = 25
    max_drift_share: float = 0.25
    context_messages: int = 4
    max_filler_content: int = 1
    max_turn_overlap: float = 0.8
    max_meta_rest: int = 2


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class TurnQuality:
    """The detector's verdict on one teacher turn, with the figures behind it.

    Attributes:
        degenerate: True when at least one reason applies.
        reasons: The reasons that apply, a subset of ``REASONS`` in that order.
        n_words: Words in the turn.
        n_content: Content words in the turn (function words and classroom chatter removed).
        repeated_ngram_share: Share of the turn's word 3-grams that repeat an earlier one
            (0.0 for turns with fewer than ``Thresholds.min_ngrams`` 3-grams).
        repeated_clause: The first clause said twice, or ``""``.
        top_word_share: Share of the content words taken by the most frequent one (0.0 for turns
            with fewer than ``Thresholds.min_top_word_content`` content words).
        ends_cleanly: Whether the turn ends with an end mark (closing quotes and brackets aside).
        connected_share: Share of the content words whose stem appears in the topic or the
            recent dialogue (0.0 for a turn without content words).
        topic_checked: Whether the connection was judged (long enough turn, something to
            compare with).
        off_register: Whether a sentence without any connection carries an off-register marker.
        content_free: Whether the turn carries no content (see ``filler``).
    """

    degenerate: bool
    reasons: list[str] = field(default_factory=list)
    n_words: int = 0
    n_content: int = 0
    repeated_ngram_share: float = 0.0
    repeated_clause: str = ""
    top_word_share: float = 0.0
    ends_cleanly: bool = True
    connected_share: float = 0.0
    topic_checked: bool = False
    off_register: bool = False
    content_free: bool = False

    @property
    def reason(self) -> str:
        """The first reason (``""`` for a coherent turn)."""
        return self.reasons[0] if self.reasons else ""


# ---------------------------------------------------------------------------------------------
# words

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})

# function words, pronouns, auxiliaries and very common verbs and adverbs
_STOP = frozenset(
    """
    a an the and or but nor so yet if then than that this these those there here what which who whom whose
    where when why how whether because since as while until unless though although also too very really
    just only even still already again ever never not no yes of in on at to for from by with without about
    into onto over under up down out off through across between among around after before during above
    below against along behind beyond near upon per via i me my mine myself we us our ours ourselves you
    your yours yourself yourselves he him his himself she her hers herself it its itself they them their
    theirs themselves one ones is am are was were be been being do does did doing done have has had having
    can could may might must shall should will would let let's i'm i'll i've i'd you're you'll you've you'd
    he's she's it's we're we'll we've they're they'll they've that's there's here's what's who's where's
    how's let's don't doesn't didn't isn't aren't wasn't weren't won't wouldn't can't couldn't shouldn't
    haven't hasn't hadn't all any some each every both either neither much many more most less least few
    other another such same own lot lots kind sort bit way ways thing things something anything nothing
    everything someone anyone everyone get gets got getting go goes going went gone make makes made making
    take takes took taken say says said saying tell tells told think thinks thought know knows knew known
    see sees saw seen look looks looked want wants wanted like likes liked need needs needed use used
    come comes came give gives gave put puts well now okay ok alright actually basically literally maybe
    perhaps probably quite rather pretty enough else often always sometimes usually once twice first
    second third next last new old big small good bad great right left best better
    """.split()
)
# classroom chatter: praise, procedure and assistant talk that teaches nothing
_PRAISE = frozenset(
    """
    great good nice excellent exactly perfect correct right well done job work yes yep yeah awesome
    brilliant spot wonderful fantastic true indeed absolutely okay ok alright sure wow terrific super
    """.split()
)
_PROCEDURE = frozenset(
    """
    ready continue continuing continued go going move moving moved keep keeping next proceed proceeding
    start started starting begin beginning lesson lessons part parts bit section step steps left off
    forward onward onwards carry help helps helping happy hope feel free questions question ask asks asked asking time
    today now later soon session class topic topics point points thanks thank welcome glad see bye
    let's shall along ahead pick wrap stop pause break back
    """.split()
)
_CHATTER = _STOP | _PRAISE | _PROCEDURE | {"um", "uh", "hmm", "mhm", "oh", "ah", "stuff", "hello", "hi", "hey"}

_DANGLING = frozenset(
    """
    a an the of in on at to for from by with into onto about and or but nor so because since as that which
    who whom whose when where while if than then is are was were be been being has have had will would can
    could should may might must my your his her its our their this these those very more most not
    """.split()
)
_END_MARKS = (".", "!", "?", "…")
# generic signs that a turn has left the lesson: a change of subject, a personal anecdote, web boilerplate
_OFF_REGISTER = re.compile(
    r"\bspeaking of\b|\banyway\b|\bby the way\b|\bon an? (?:different|unrelated|other|side) note\b|\bunrelated\b|"
    r"\bfun fact\b|\boff[- ]topic\b|\bchanging the subject\b|\bthat reminds me\b|"
    r"\bmy (?:mom|mum|mother|dad|father|sister|brother|cousin|aunt|uncle|friends?|neighbou?r|grandma|grandpa|"
    r"grandmother|grandfather|wife|husband|boss|dog|cat|kids?|son|daughter|family|favou?rite)\b|"
    r"\bclick\b|\bsubscribe\b|\bdownload\b|\bpassword\b|\blog ?in\b|\bsign up\b|\bcomments? below\b|"
    r"\bthanks? (?:you )?for (?:watching|reading|listening)\b|\bcustomer service\b|\badd to cart\b|"
    r"\b(?:previous|next) (?:chapter|video|episode|post|article)\b|\bin this (?:video|post|article|episode)\b|"
    r"\byour (?:weekend|holidays?|vacation|summer|day|week|family|friends?|pets?|hobby|hobbies|favou?rite)\b|"
    r"\bhow (?:are|have) you (?:been|doing)\b|\bhow are you today\b",
    re.IGNORECASE,
)
# talk about the lesson instead of to the student: the student in the third person, a teaching style by name
_META = re.compile(
    r"\b(?:the|your) (?:student|learner|pupil)\b|"
    r"\b(?:teaching|tutoring|direct|interactive) (?:styles?|approach)\b",
    re.IGNORECASE,
)
# talk about asking instead of asking: the act of asking (by "you", "I", "we", or as a suggestion) or a
# question as the object of the sentence ("a question about X")
_ASKING_TALK = re.compile(
    r"\b(?:i|i'm|i'd|i'll|we|we'll|you|you'd|let's|let me|let us)\b[^.?!]{0,30}?\bask(?:s|ed|ing)?\b|"
    r"\b(?:how|what) about (?:asking|a question|the question|your question|questions)\b|"
    r"\basking (?:you|me|us|them|about|a question|questions)\b|^\W*asking\b|\bask(?:s|ed)? (?:you|me|us)\b|"
    r"\bquestions? to ask\b|\b(?:why not|shall we|should we) ask\b|"
    r"\b(?:what|which) (?:would|do|will) you (?:like|want|wish) to (?:know|learn|discuss|talk about|explore|hear)\b|"
    r"\b(?:a|the|your|my|any|that|this|one|some|another) questions? (?:about|for)\b|"
    r"\b(?:is|was) there (?:a|any|another) question\b|\banswer (?:your|my) question\b",
    re.IGNORECASE,
)
_CLOSERS = "\"'”’)]}*_ \t\n"
_CLAUSE_SPLIT = re.compile(r"[.!?;:,…\n]+|\s[-–—]\s")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.translate(_APOSTROPHES).lower())


def _stem(word: str) -> str:
    """A crude stem: possessive and plural endings dropped, then the first six letters."""
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace("'", "")
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:6]


def _is_content(word: str) -> bool:
    return word not in _CHATTER and (len(word) >= 3 or any(c.isdigit() for c in word))


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content (function words and classroom chatter removed)."""
    return [w for w in _words(text) if _is_content(w)]


def content_stems(text: str) -> set[str]:
    """Stems of the content words of ``text``."""
    return {_stem(w) for w in content_words(text)}


# the words ``_META`` looks for: a topic or dialogue that uses them itself is not leaking an instruction
_META_STEMS = frozenset(_stem(w) for w in ("student", "learner", "pupil", "style", "teaching", "tutoring", "approach"))


# ---------------------------------------------------------------------------------------------
# the four checks


def _ngrams(words: Sequence[str], n: int = 3) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_share(words: Sequence[str], n: int = 3) -> float:
    """Share of the word ``n``-grams that repeat an earlier ``n``-gram (0.0 when there are none)."""
    grams = _ngrams(words, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _repeated_clause(text: str, min_words: int) -> str:
    seen = set()
    for clause in _CLAUSE_SPLIT.split(text):
        words = _words(clause)
        if len(words) < min_words:
            continue
        key = " ".join(words)
        if key in seen:
            return clause.strip()
        seen.add(key)
    return ""


def _ends_cleanly(text: str) -> bool:
    core = text.rstrip(_CLOSERS)
    return core.endswith(_END_MARKS)


_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")


def last_full_sentence(text: str) -> str:
    """``text`` up to the end of its last complete sentence.

    A turn that stops mid-sentence (typically because generation reached ``max_new_tokens``) loses
    its unfinished tail; a turn that ends cleanly, or that has no complete sentence at all, is
    returned unchanged (stripped), so the detector still sees a single unfinished sentence as cut off.

    >>> last_full_sentence("Force is mass times acceleration. So if you push twice as")
    'Force is mass times acceleration.'
    >>> last_full_sentence("It costs 3.5 dollars and")
    'It costs 3.5 dollars and'
    """
    text = text.strip()
    if _ends_cleanly(text):
        return text
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()] if ends else text


def _dangles(text: str) -> bool:
    core = text.rstrip(_CLOSERS)
    if core.endswith((",", ";", ":", "-", "–", "—")):
        return True
    words = _words(core)
    return bool(words) and words[-1] in _DANGLING


def _has_real_question(text: str) -> bool:
    """Whether the turn asks the student something that is not about the lesson's procedure."""
    for sentence in analyze_teacher_turn(text).sentences:
        if sentence.role not in ("question", "invitation"):
            continue
        words = _words(sentence.text)
        if not any(w in _PROCEDURE for w in words) or any(_is_content(w) for w in words):
            return True
    return False


def _is_bare_praise(words: Sequence[str]) -> bool:
    return any(w in _PRAISE for w in words) and all(w in _PRAISE or w in _STOP for w in words) and not any(
        w in _PROCEDURE for w in words
    )


def _recent_messages(context: Sequence[Mapping[str, str]] | Sequence[str], n: int) -> list[tuple[str, str]]:
    """``(role, text)`` of the last ``n`` teacher and student messages (a plain string is a teacher turn)."""
    messages = []
    for message in context:
        if isinstance(message, str):
            messages.append(("teacher", message))
        elif message.get("role") in ("teacher", "student"):
            messages.append((message["role"], str(message.get("content", ""))))
    return messages[-n:] if n > 0 else []


def _repeats_an_earlier_turn(words: Sequence[str], earlier: Sequence[str], share: float) -> bool:
    grams = set(_ngrams(words))
    if len(grams) < 3:
        return False
    return any(len(grams & set(_ngrams(_words(text)))) / len(grams) > share for text in earlier)


def assess_turn(
    text: str,
    topic: str = "",
    context: Sequence[Mapping[str, str]] | Sequence[str] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> TurnQuality:
    """Decide whether a teacher turn is degenerate, and why.

    Args:
        text: The teacher turn.
        topic: The session's topic.
        context: The dialogue before the turn: chat messages (only ``"teacher"`` and
            ``"student"`` roles are read) or plain strings, oldest first.
        thresholds: The detector's knobs.

    Returns:
        A ``TurnQuality`` with the verdict, the reasons and the figures behind them.

    >>> assess_turn("Plants use light. Plants use light. Plants use light.", "Photosynthesis").reasons
    ['repetition']
    >>> assess_turn("I'm ready to continue.", "Photosynthesis").reasons
    ['filler']
    """
    text = text if isinstance(text, str) else ""
    th = thresholds
    words = _words(text)
    content = [w for w in words if _is_content(w)]
    reasons = []

    # repetition
    share = repeated_ngram_share(words) if len(words) - 2 >= th.min_ngrams else 0.0
    clause = _repeated_clause(text, th.min_clause_words)
    top = 0.0
    if len(content) >= th.min_top_word_content:
        counts = Counter(_stem(w) for w in content)
        top = counts.most_common(1)[0][1] / len(content)
    recent = _recent_messages(context, th.context_messages)
    again = _repeats_an_earlier_turn(words, [t for role, t in recent if role == "teacher"], th.max_turn_overlap)
    if share > th.max_repeated_ngrams or clause or top > th.max_top_word_share or again:
        reasons.append("repetition")

    # cut off mid-sentence
    clean = _ends_cleanly(text)
    if not clean and (len(words) >= th.min_cut_words or (len(words) >= th.min_dangling_words and _dangles(text))):
        reasons.append("cut_off")

    # connection to the topic and the recent dialogue
    reference = content_stems(topic)
    for _, message in recent:
        reference |= content_stems(message)
    connected = [w for w in content if _stem(w) in reference]
    connected_share = len(connected) / len(content) if content else 0.0
    checked = bool(reference) and len(content) >= th.min_content_words
    off_register = any(
        _OFF_REGISTER.search(sentence) and not (content_stems(sentence) & reference)
        for sentence in split_sentences(text)
    )
    unconnected_long = connected_share <= th.min_connected_share and len(content) >= th.min_unconnected_words
    drifted = connected_share < th.max_drift_share and off_register
    short_drift = bool(reference) and bool(content) and not connected and off_register
    meta = bool(reference) and bool(_META.search(text)) and not (reference & _META_STEMS)
    if (checked and (unconnected_long or drifted)) or short_drift or meta:
        reasons.append("off_topic")

    # content-free filler
    unconnected = len(content) - len(connected)
    content_free = (
        not connected
        and unconnected <= th.max_filler_content
        and not _has_real_question(text)
        and not _is_bare_praise(words)
    )
    if content_free:
        reasons.append("filler")

    # meta-talk: the turn talks about asking ("What would you like to ask about X?", "How about a
    # question about X?") and carries next to no content in any other sentence
    if meta_talk(text, th):
        reasons.append("meta_talk")

    return TurnQuality(
        degenerate=bool(reasons),
        reasons=reasons,
        n_words=len(words),
        n_content=len(content),
        repeated_ngram_share=share,
        repeated_clause=clause,
        top_word_share=top,
        ends_cleanly=clean,
        connected_share=connected_share,
        topic_checked=checked,
        off_register=off_register,
        content_free=content_free,
    )


def meta_talk(text: str, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether a turn talks about asking or about questions instead of asking about the lesson.

    A sentence talks about asking when someone in the conversation asks ("What would you like to
    ask about Atoms?", "I'm ready to ask ...", "Let's ask ..."), asking is suggested ("How about
    asking about ..."), a question is its object ("a question about Inflation"), or the student is
    asked what they would like to learn instead of something about the lesson. The turn is
    meta-talk when it has such a sentence and its other sentences carry at most
    ``max_meta_rest`` content words: a real explanation followed by "What would you like to ask?"
    is not meta-talk.
    """
    sentences = split_sentences(text)
    talk = [s for s in sentences if _ASKING_TALK.search(s)]
    if not talk:
        return False
    rest = [w for s in sentences if s not in talk for w in _words(s) if _is_content(w)]
    return len(rest) <= thresholds.max_meta_rest


def is_degenerate(
    text: str, topic: str = "", context: Sequence[Mapping[str, str]] | Sequence[str] = ()
) -> bool:
    """Shorthand for ``assess_turn(text, topic, context).degenerate``."""
    return assess_turn(text, topic, context).degenerate


# ---------------------------------------------------------------------------------------------
# figures for reports


@dataclass(frozen=True)
class QualityFigures:
    """Quality figures over a list of generated teacher turns.

    Attributes:
        n_turns: Number of turns summarised.
        degenerate_share: Share of turns the detector flags (``assess_turn``).
        reason_shares: For each of ``REASONS``, the share of turns flagged for it (a turn can
            count under several reasons).
        distinct_1: Distinct word unigrams over all unigrams, pooled over the turns.
        distinct_2: Distinct word bigrams over all bigrams, pooled over the turns (bigrams never
            cross from one turn into the next).
        mean_words: Mean turn length in words.
        cut_at_limit_share: Share of turns whose token count reached ``max_new_tokens``; ``None``
            when token counts or the limit were not given.
        topic_overlap: Mean share of the topic's content words (by stem) that appear in the turn;
            turns whose topic has no content word are left out (0.0 when none is left).
    """

    n_turns: int
    degenerate_share: float
    reason_shares: dict[str, float]
    distinct_1: float
    distinct_2: float
    mean_words: float
    cut_at_limit_share: float | None
    topic_overlap: float

    def as_dict(self, prefix: str = "") -> dict[str, float | int | None]:
        """Flat ``{name: value}`` for logging, names prefixed with ``prefix`` (e.g. ``"quality/"``)."""
        out: dict[str, float | int | None] = {
            "n_turns": self.n_turns,
            "degenerate_share": self.degenerate_share,
            "distinct_1": self.distinct_1,
            "distinct_2": self.distinct_2,
            "mean_words": self.mean_words,
            "cut_at_limit_share": self.cut_at_limit_share,
            "topic_overlap": self.topic_overlap,
        }
        out.update({f"{reason}_share": share for reason, share in self.reason_shares.items()})
        return {prefix + key: value for key, value in out.items()}


def distinct_n(turns: Sequence[str], n: int) -> float:
    """Distinct word ``n``-grams over all word ``n``-grams, pooled over ``turns`` (0.0 when there are none)."""
    grams = []
    for turn in turns:
        words = _words(turn)
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def topic_overlap(turn: str, topic: str) -> float | None:
    """Share of the topic's content words (by stem) that appear in the turn; ``None`` for a topic without any."""
    wanted = content_stems(topic)
    if not wanted:
        return None
    return len(wanted & {_stem(w) for w in _words(turn)}) / len(wanted)


def quality_figures(
    turns: Sequence[str],
    topics: str | Sequence[str],
    *,
    token_counts: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    contexts: Sequence[Sequence[Mapping[str, str]]] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> QualityFigures:
    """Summarise the quality of generated teacher turns.

    Args:
        turns: The generated turns.
        topics: One topic for all turns, or one per turn.
        token_counts: Generated tokens per turn (optional); with ``max_new_tokens`` it gives the
            share of turns that ran into the limit (``tokens >= max_new_tokens``).
        max_new_tokens: The generation limit.
        contexts: The dialogue before each turn (optional), for the detector's connection check.
        thresholds: The detector's knobs.

    Returns:
        A ``QualityFigures``; every share is 0.0 for an empty list.

    Raises:
        ValueError: If ``topics``, ``token_counts`` or ``contexts`` do not give one entry per turn.
    """
    turns = list(turns)
    n = len(turns)
    topic_list = [topics] * n if isinstance(topics, str) else list(topics)
    context_list = list(contexts) if contexts is not None else [()] * n
    for name, values in (("topics", topic_list), ("contexts", context_list)):
        if len(values) != n:
            raise ValueError(f"quality_figures: {name} has {len(values)} entries for {n} turns")
    if token_counts is not None and len(token_counts) != n:
        raise ValueError(f"quality_figures: token_counts has {len(token_counts)} entries for {n} turns")

    verdicts = [assess_turn(t, tp, c, thresholds) for t, tp, c in zip(turns, topic_list, context_list)]
    overlaps = [o for o in (topic_overlap(t, tp) for t, tp in zip(turns, topic_list)) if o is not None]
    cut = None
    if token_counts is not None and max_new_tokens is not None:
        cut = sum(int(c) >= int(max_new_tokens) for c in token_counts) / n if n else 0.0
    return QualityFigures(
        n_turns=n,
        degenerate_share=sum(v.degenerate for v in verdicts) / n if n else 0.0,
        reason_shares={r: (sum(r in v.reasons for v in verdicts) / n if n else 0.0) for r in REASONS},
        distinct_1=distinct_n(turns, 1),
        distinct_2=distinct_n(turns, 2),
        mean_words=sum(len(_words(t)) for t in turns) / n if n else 0.0,
        cut_at_limit_share=cut,
        topic_overlap=sum(overlaps) / len(overlaps) if overlaps else 0.0,
    )

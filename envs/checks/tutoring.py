"""Checks on tutoring turns, written apart from the turn analysers that make the reward.

The reward, the scripted student and the heuristic judges read teacher turns with
``envs.turns.classifier`` and ``envs.turns.quality``; a policy trained on them learned to write
turns that *talk about* asking ("How about asking about X and how it relates to Y?"), which they class
as asking turns. This module reads turns with its own word lists and rules, imports none of that code,
and none of it imports this module (a test checks both). A turn is cut into sentences (after ``.``,
``!`` or ``?`` and a space) and sentences into units (at ``:``, ``;``, a dash, and after a lead-in of at
most four words ending in a comma, such as "Good question,").

Real question
    A sentence ending in ``?``, unless it proposes ("How about ...", "Why not ...", "Shall we ...",
    "Let's ..."), only confirms ("Right?") or ends in a tag (", right?") with no interrogative part
    before it; without ``?``, a sentence that opens as a question to "you" ("Can you ...", "What do
    you ..."). A run of questions followed by a statement that is neither a hint nor an instruction
    to the student is answered by the teacher (rhetorical) and does not count.
Meta-talk
    A unit is meta when it talks about the exchange: a form of "ask", the noun "question", "the
    student" or a tutor, a teaching style, the speaker announcing what they will explain or cover,
    the student asked what they would like to learn, procedure ("continue", "move on"), naming the
    lesson, topic or session, or a comprehension check with no lesson word ("Does that make
    sense?"). Topic words are never cues. A turn is meta-talk when it has a meta unit and its other
    units carry no lesson word.
Lesson content
    Distinct lesson words (by crude stem) in the units without a meta cue: words that are not
    function words, generic or framing words ("relate", "interesting", "overview"), classroom words
    ("lesson", "answer") or the topic's own (same stem, or a shared prefix of at least five letters
    covering three quarters of the shorter word): the substance a turn adds beyond naming the topic.

A turn *asks about the lesson* when a real question sits in a unit without a meta cue, the turn is not
meta-talk and it has lesson content.

Figures on ``tests/envs/data`` (rules written first, then run on these files; the generic list and the
procedure cue were extended after reading misses on the filler turns, so they are not held out): of
the 199 coherent turns of both files, 1 is meta-talk ("Nice work. Now let's move on to Newton's third
law.", procedure by this definition) and 197 have lesson content (the other miss: "So what makes it a
metaphor?"). In ``teacher_turns.jsonl``, 49 of the 61 ``ask`` turns put a real question and all 49 ask
about the lesson (the other 12 are imperatives: "Name three elements ..."); 14 of the 60 ``explain``
turns put one, 13 of them a comprehension check ("Make sense?", "Any questions?") in a meta unit, so 1
asks about the lesson. All 16 content-free filler turns of ``teacher_turn_quality.jsonl`` are
meta-talk. Of the env's 24 opening turns (16 seed, 8 held out), on each of the 78 topics, 15 are
meta-talk and 3 ask about the lesson.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

# vocabulary, grouped by what the words do in a sentence
_FUNCTION = frozenset(
    "a an the this that these those some any each every no all both either neither few many much more most several "
    "such own other another what which whose my your his her its our their "  # determiners
    "i me we us you he him she it they them myself yourself ourselves themselves itself himself herself one ones "
    "someone anyone everyone somebody anybody something anything everything nothing nobody "  # pronouns
    "of in on at to for from by with about into onto over under between among through during before after above "
    "below across along around behind beyond near off out up down upon via within without against toward towards "
    "per like as than "  # prepositions
    "and or but nor so yet if because since while although though unless until whether then also too not "
    "be am is are was were been being do does did doing done have has had having can could may might must shall "
    "should will would "  # auxiliaries
    "very really just only even still already again ever never always often sometimes usually here there now how "
    "why when where who whom".split()
)
# words any lesson could use, and words that frame a lesson instead of filling it
_GENERIC = (
    "thing stuff way kind sort type part aspect bit lot piece idea fact example reason detail point case side area "
    "role place time day today moment relate relation relationship connect connection exist matter happen work "
    "think know mean understand get make go come see look say tell want like need feel find seem become keep let "
    "put take give use try show call start begin turn bring hear wonder guess believe remember consider imagine "
    "picture got made went gone said thought knew saw seen took gave came found told felt kept heard going first "
    "once finally final step walk build welcome plan sound together beginning explore dig mind name suppose "
    "describe people overview concept definition foundation background essential core version short single "
    "everyday stop open fill head heading board solid prediction predict puzzle confusing ahead later interesting "
    "important cool fun fascinating amazing great good nice neat awesome wonderful main different same real whole "
    "basic key certain simple hard easy special particular general sure true right wrong well okay yes yeah "
    "alright hello hey please thanks thank maybe hope happy glad far"
).split()
_CLASSROOM = (
    "ask question quiz answer explain explanation teach teaching learn learning study discuss discussion talk "
    "conversation topic lesson subject session class student learner pupil teacher tutor tutoring style continue "
    "proceed move next ready sense clear follow help interactive"
).split()
_WH, _AUX, _SUBJECTS, _OPENERS, _CONFIRM = (frozenset(x.split()) for x in (
    "what why how which who whom whose where when",
    "do does did is are was were am can could would will should shall might may must have has had",
    "you we i he she it they that this there these those the a an your his her their its our",
    "so now okay ok well alright and but then first next great good nice quick hmm also oh",  # say nothing of form
    "right ok okay yeah yes correct true agreed see huh eh",
))
_IMPERATIVES, _TEACH_VERBS, _WISH_VERBS = (frozenset(x.split()) for x in (
    "think try tell give guess name list describe explain predict imagine picture remember consider look take put "
    "count compare write show pick choose use figure work notice sort rank draw say jot share hint careful go",
    "explain teach talk discuss cover learn study review introduce describe start begin continue move focus dive "
    "explore go look walk dig",
    "ask know learn hear talk discuss explore cover start begin explain focus go move continue review study",
))
_STYLE_NOUNS, _STYLE_ADJ, _LESSON_NOUNS, _BE = (frozenset(x.split()) for x in (
    "style styles mode modes approach",
    "interactive direct teaching tutoring socratic explanatory lecture questioning",
    "lesson topic subject session conversation discussion tutorial",
    "be been being is are was were get got",
))
_PROPOSALS = (("how", "about"), ("why", "not"), ("why", "do", "not", "we"), ("shall", "we"), ("let", "us"))
_ADDRESSED_STARTS = (("no",), ("do", "not"), ("there", "is", "no"), ("i", "am", "curious"), ("i", "would", "love"),
                     ("feel", "free"), ("just",))
_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*")
_CONTRACTIONS = {"m": ["am"], "re": ["are"], "ll": ["will"], "ve": ["have"], "d": ["would"]}
_S_IS = frozenset("it that what there here he she who where how".split())
_NEGATIVE_BASE = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}
_UNIT_BREAK = re.compile(r"[;:]|\s[-–—]+\s|—")


def _stem(word: str) -> str:
    """A crude stem: one ending and a final ``e`` dropped, so "relates" meets "related"."""
    for end, repl in (("ations", ""), ("ation", ""), ("ings", ""), ("ing", ""), ("ies", "y"), ("ied", "y"),
                      ("edly", ""), ("ed", ""), ("es", ""), ("ly", ""), ("s", "")):
        if word.endswith(end) and len(word) - len(end) >= 3 and not word.endswith("ss"):
            word = word[: len(word) - len(end)] + repl
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def _close(a: str, b: str) -> bool:
    """Whether two stems name the same word ("photosynthesis" and "photosynthetic" do)."""
    n = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a == b or (n >= 5 and n >= 0.75 * min(len(a), len(b)))


_GENERIC_STEMS = frozenset(_stem(w) for w in _GENERIC) | frozenset(_stem(w) for w in _CLASSROOM)
_CHECK_STEMS = frozenset(_stem(w) for w in "understand sense follow clear help".split())
_PROCEDURE_STEMS = frozenset(_stem(w) for w in "continue proceed".split())


def _tokens(text: str) -> list[tuple[str, str]]:
    """``(original, lowercase)`` word pairs, contractions spelled out ("don't" -> do, not)."""
    out: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(text.replace("’", "'").replace("‘", "'")):
        word = match.group()
        low = word.lower()
        if low.endswith("n't") and len(low) > 3:
            out += [(word, _NEGATIVE_BASE.get(low[:-3], low[:-3])), (word, "not")]
        elif "'" in low:
            base, _, tail = low.partition("'")
            extra = ["us"] if (base, tail) == ("let", "s") else _CONTRACTIONS.get(tail, [])
            out += [(word, base)] + [(word, w) for w in extra or (["is"] if tail == "s" and base in _S_IS else [])]
        else:
            out.append((word, low))
    return out


def _lows(text: str) -> list[str]:
    """Lower-case words of ``text`` with the openers ("So", "Okay", "And") skipped."""
    words = [low for _, low in _tokens(text)]
    i = 0
    while i < len(words) - 1 and words[i] in _OPENERS:
        i += 1
    return words[i:]


_SENTENCE = re.compile(r"\s*(.+?(?:[.!?…]+[\"'”’)\]]*(?=\s|$)|\n|$))", re.S)


def _sentences(text: str) -> list[str]:
    """Cuts a turn after ``.``, ``!``, ``?`` (closing quotes kept) followed by a space, and at line breaks."""
    return [m.group(1).strip() for m in _SENTENCE.finditer(text) if any(c.isalnum() for c in m.group(1))]


def _units(sentence: str) -> list[str]:
    """Cuts a sentence at colons, semicolons and dashes, and after a short lead-in ending in a comma."""
    parts = [p.strip() for p in _UNIT_BREAK.split(sentence) if p.strip()]
    if parts and "," in parts[0]:
        lead, rest = parts[0].split(",", 1)
        if len(_tokens(lead)) <= 4 and rest.strip():
            parts[:1] = [lead.strip(), rest.strip()]
    return parts or [sentence]


def _starts(words: Sequence[str], phrase: Sequence[str]) -> bool:
    return tuple(words[: len(phrase)]) == tuple(phrase)


def _is_question(sentence: str) -> bool:
    """Whether a sentence, on its own, puts a question (see "Real question" above)."""
    parts = [w for w in (_lows(p) for p in re.split(r"[,;:]", sentence)) if w]
    inverted = [len(p) > 1 and ((p[0] in _WH and p[1] in _AUX) or (p[0] in _AUX and p[1] in _SUBJECTS)) for p in parts]
    proposal = parts and any(_starts(parts[0], p) and len(parts[0]) > len(p) for p in _PROPOSALS)
    if not parts or (proposal and not any(inverted[1:])):
        return False
    if not sentence.rstrip("\"'”’)] ").endswith("?"):  # only a question put to "you" counts
        return any(p[0] in _AUX | _WH and any(p[k] in _AUX and p[k + 1] == "you" for k in range(min(4, len(p) - 1)))
                   and (p[0] in _WH or p[1] == "you") for p in parts)
    if len(parts) == 1 and len(parts[0]) <= 2 and all(w in _CONFIRM for w in parts[0]):
        return False
    last = parts[-1]
    tag = len(parts) > 1 and len(last) <= 3 and last[0] not in _WH and not _lesson_words(" ".join(last), ())
    return not tag or any(p[0] in _WH or ok for p, ok in zip(parts[:-1], inverted))


def _addressed(sentence: str) -> bool:
    """Whether a statement speaks to the student (a hint, an instruction, encouragement)."""
    words = _lows(sentence)
    return bool(words) and (words[0] in _IMPERATIVES or any(_starts(words, p) for p in _ADDRESSED_STARTS)
                            or (words[0] == "you" and len(words) > 1 and words[1] in _AUX))


def _real_questions(sentences: Sequence[str]) -> list[bool]:
    """Per sentence: a question that the statement after its run of questions does not answer."""
    asked = [_is_question(s) for s in sentences]
    real = list(asked)
    for i in (k for k, a in enumerate(asked) if a):
        j = next((k for k in range(i, len(sentences)) if not asked[k]), len(sentences))
        real[i] = j == len(sentences) or _addressed(sentences[j])
    return real


def _lesson_words(text: str, topic_stems: Sequence[str]) -> set[str]:
    """Stems of the lesson words of ``text`` (see "Lesson content" above)."""
    stems = {_stem(w) for _, w in _tokens(text) if w not in _FUNCTION and (len(w) >= 3 or w[:1].isdigit())}
    return {s for s in stems if s not in _GENERIC_STEMS and not any(_close(s, t) for t in topic_stems)}


def _meta_cues(unit: str, topic_stems: Sequence[str], is_question: bool) -> set[str]:
    """Names of the meta cues in one unit of a turn (see "Meta-talk" above)."""
    pairs = _tokens(unit)
    low = [w for _, w in pairs] + [""]
    cues = set()
    for i, (orig, w) in enumerate(pairs):
        s, nxt, prev, before = _stem(w), low[i + 1], low[i - 1] if i else "", low[max(0, i - 2) : i]
        if any(_close(s, t) for t in topic_stems):
            continue
        named = i + 1 < len(pairs) and pairs[i + 1][0][:1].isupper()  # "ask Napoleon" is not meta
        if s == "ask" and nxt != "yourself" and prev not in _BE and not named:
            cues.add("asking")
        elif s == "question" and prev != "in" and nxt not in ("of", "whether"):
            cues.add("question")
        elif (s in ("student", "learner", "pupil") and prev in ("the", "this", "our", "my", "a", "each", "every")
              or s in ("tutor", "tutoring") or (s == "teacher" and prev in ("the", "your", "this"))):
            cues.add("student")
        elif (w in _STYLE_NOUNS and _STYLE_ADJ & set(before)) or (orig.isupper() and w in ("interactive", "direct")):
            cues.add("style")
        elif w in ("i", "we") or (w == "let" and nxt in ("me", "us")):
            if any(_stem(x) in _TEACH_VERBS for x in low[i + 1 : i + 5]):
                cues.add("announce")
        elif w in ("like", "want", "prefer") and "you" in before:
            rest = [x for x in low[i + 1 : i + 4] if x not in ("me", "us")]
            if len(rest) > 1 and rest[0] == "to" and _stem(rest[1]) in _WISH_VERBS:
                cues.add("wish")
        elif (s in _PROCEDURE_STEMS or (w in ("move", "moving", "carry", "keep") and nxt in ("on", "going"))
              or (w == "ready" and (nxt in ("to", "for") or prev == "you"))
              or (w == "next" and nxt in ("part", "step", "topic", "section", "bit", "lesson", "time"))):
            cues.add("procedure")
        elif (w in _LESSON_NOUNS or s in _LESSON_NOUNS) and nxt != "of":
            cues.add("lesson")
        elif is_question and (s in _CHECK_STEMS or (w, nxt) in (("with", "me"), ("get", "it"), ("got", "it"))):
            if not _lesson_words(unit, topic_stems):
                cues.add("check")
    return cues


@dataclass(frozen=True)
class TurnCheck:
    """This module's reading of one teacher turn.

    Attributes:
        n_sentences: Sentences in the turn.
        n_questions: Real questions put to the student (comprehension checks included).
        n_lesson_questions: Real questions in units without a meta cue when the turn asks about the
            lesson, else 0.
        meta_cues: Names of the meta cues found ("asking", "question", "student", "style",
            "announce", "wish", "procedure", "lesson", "check"), sorted.
        meta_talk: A meta cue is there and the units without one carry no lesson word.
        lesson_content: Distinct lesson words (by stem) in the units without a meta cue.
        lesson_words: Those stems, sorted, so a reader can see what was counted.
    """

    n_sentences: int
    n_questions: int
    n_lesson_questions: int
    meta_cues: tuple[str, ...]
    meta_talk: bool
    lesson_content: int
    lesson_words: tuple[str, ...]

    @property
    def real_question(self) -> bool:
        """Whether the turn puts at least one real question to the student."""
        return self.n_questions > 0

    @property
    def asks_about_lesson(self) -> bool:
        """Whether the turn puts a real question about the lesson to the student."""
        return self.n_lesson_questions > 0


def check_turn(text: str, topic: str = "") -> TurnCheck:
    """Reads one teacher turn: its real questions, its meta-talk and its lesson content.

    Args:
        text: The teacher turn (anything else reads as an empty turn).
        topic: The session's topic; its words are neither lesson content nor meta cues.

    Returns:
        A ``TurnCheck``.
    """
    text = text if isinstance(text, str) else ""
    topic_stems = [_stem(w) for _, w in _tokens(topic) if w not in _FUNCTION]
    sentences = _sentences(text)
    real = _real_questions(sentences)
    cues: set[str] = set()
    words: set[str] = set()
    plain_questions = 0
    for sentence, is_real in zip(sentences, real):
        found = []
        for unit in _units(sentence):
            found.append(_meta_cues(unit, topic_stems, is_real))
            cues |= found[-1]
            words |= set() if found[-1] else _lesson_words(unit, topic_stems)
        plain_questions += is_real and not found[-1]  # the question sits in the sentence's last unit
    meta_talk = bool(cues) and not words
    return TurnCheck(
        n_sentences=len(sentences),
        n_questions=sum(real),
        n_lesson_questions=plain_questions if words and not meta_talk else 0,
        meta_cues=tuple(sorted(cues)),
        meta_talk=meta_talk,
        lesson_content=len(words),
        lesson_words=tuple(sorted(words)),
    )


def count_questions(text: str) -> int:
    """Number of real questions a teacher turn puts to the student."""
    return check_turn(text).n_questions


def is_meta_talk(text: str, topic: str = "") -> bool:
    """Whether a turn talks about asking, the student, the lesson or the exchange instead of teaching."""
    return check_turn(text, topic).meta_talk


def asks_about_lesson(text: str, topic: str = "") -> bool:
    """Whether a turn puts a real question about the lesson to the student."""
    return check_turn(text, topic).asks_about_lesson


def check_turns(turns: Sequence[str], topics: str | Sequence[str]) -> dict[str, float]:
    """Summarises teacher turns into flat, JSON-friendly figures for a report row.

    Args:
        turns: The teacher turns.
        topics: One topic for all turns, or one per turn.

    Returns:
        ``n_turns`` and the means over turns of ``real_question_share``, ``meta_talk_share``,
        ``lesson_question_share``, ``lesson_content``, ``questions_per_turn`` and
        ``lesson_questions_per_turn``; each mean is NaN for an empty list.

    Raises:
        ValueError: If ``topics`` is a sequence whose length differs from that of ``turns``.
    """
    turns = list(turns)
    topic_list = [topics] * len(turns) if isinstance(topics, str) else list(topics)
    if len(topic_list) != len(turns):
        raise ValueError(f"check_turns: {len(topic_list)} topics for {len(turns)} turns")
    checks = [check_turn(t, tp) for t, tp in zip(turns, topic_list)]
    columns = {
        "real_question_share": [c.real_question for c in checks],
        "meta_talk_share": [c.meta_talk for c in checks],
        "lesson_question_share": [c.asks_about_lesson for c in checks],
        "lesson_content": [c.lesson_content for c in checks],
        "questions_per_turn": [c.n_questions for c in checks],
        "lesson_questions_per_turn": [c.n_lesson_questions for c in checks],
    }
    out = {"n_turns": float(len(checks))}
    out.update({k: (sum(map(float, v)) / len(v) if v else math.nan) for k, v in columns.items()})
    return out

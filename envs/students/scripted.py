"""A model-free student: reads the teacher's last turn and answers from templates.

The student reacts to the teacher's most recent turn. First it checks whether the turn is
degenerate (``envs.turns.quality.assess_turn``: the same words over and over, cut off
mid-sentence, nothing to do with the topic or the dialogue, or empty filler). If it is, the
student is confused or switches off, in its reaction style, whatever its preference: bad
teaching is not a good fit for anyone. Otherwise ``classify_teacher_turn`` decides whether the
turn mainly asks or mainly explains; if this matches the hidden preference the student engages
(a spark of understanding for an explanation, reasoning out loud for a question), otherwise it
answers flat and short, coloured by the reaction style. It never names its preference. With
probability ``noise`` it gives a plain on-task reply to a sound turn instead, so the signal is
informative but not perfectly clean.

Some replies echo a phrase of the teacher's turn back; only phrases from turns that passed the
check, and only phrases that carry content themselves, are echoed. ``quality_check=False``
turns the check off and gives exactly the replies of the earlier student (which echoed a
phrase of any turn, nonsense included).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from envs.students.base import StudentBase, StudentContext, check_labels
from envs.turns.classifier import analyze_teacher_turn
from envs.turns.quality import assess_turn, content_words

# ---------------------------------------------------------------------------------------------
# templates. Fields: {topic}; {idea}, a phrase taken from the teacher's explanation; {focus} /
# {Focus}, the teacher's wh-question as a clause ("why that happens"), else "that" / the topic.

# student who likes being told, after an explanation
_TOLD_AND_HAPPY = (
    "Ohh, okay, so it's {idea}. That actually makes sense now!",
    "Wait, that's cool. I never knew {idea}. Got it.",
    "Oh nice, that clears up {topic} for me. So basically, {idea}. I like how that fits together.",
    "Ohhh, I see it now! {idea}, that was the part I was missing.",
    "That's really interesting. Okay, so {idea}, and that's why {topic} matters. Got it!",
    "Oh wow, okay. {idea}. That's way easier to picture now, thanks!",
    "Ahh, that makes so much sense. I always wondered about {topic} and now it clicks.",
    "Oh cool! So {idea}. I can actually remember that.",
    "Okay yes, I get it now. {idea}, huh, that's neat.",
    "Ohh that's clever. So with {topic} it really comes down to {idea}. Makes sense!",
    "Oh, I like that. {idea}. Can you tell me more about that part?",
    "Huh, I didn't expect that! So {idea}. Okay, that sticks.",
)

# student who likes being drawn out, after a question or invitation
_ASKED_AND_HAPPY = (
    "Ooh, okay, let me think. {Focus}... I'd guess it's because one thing sets off the next, like a chain reaction. Is that close?",
    "Hmm, good one! If I think it through step by step, the first part has to happen before the rest can, so I'd say it's about cause and effect. Am I on the right track?",
    "Oh, fun question. My guess is that it has to balance out somehow, because that's kind of the pattern with {topic}, right?",
    "Okay wait, I think I've got something. {Focus}? I'd say it depends on what changes first, and then everything else follows. Oh, and maybe that's why people still care about {topic}!",
    "Ooh. Let me reason it out: if the first thing didn't happen, the rest couldn't either. So I think I can answer that! Did I get it?",
    "Hmm, I want to say it's the bigger picture that matters, not one detail. Actually yes, I'm pretty sure, because it connects to what we said about {topic}. What do you think?",
    "Oh, that's a cool thing to figure out. {Focus}... maybe because it's the easiest way for it to work? Or it could depend on the situation. I think the first one though!",
    "Ooh, I like this. Thinking out loud: the obvious answer is probably a trap, so maybe it's the opposite of what I first expected. Wait, is that right?",
    "Okay, okay, give me a second. I think I know {focus}! It's the only way it fits with {topic}. Oh, that's actually kind of satisfying!",
    "Hmm! {Focus}? My best shot: it comes from the way the pieces of {topic} push on each other. And I bet that's also why it matters so much. Right?",
    "Oh interesting. I'd reason it like this: start from what we already know about {topic}, then ask what would change. I think I get why now!",
    "Ooh, let me try! I'd guess it's about what people needed at the time, because if you think about {topic} that way, everything lines up.",
)

# student who likes being told, put on the spot by a question
_ASKED_BUT_WANTS_TOLD = {
    "frustrated": (
        "Ugh, I don't know {focus}. I don't get why I have to guess.",
        "Honestly no idea. Something about {topic}? Can we keep going?",
        "I don't know. Isn't that what you're supposed to tell me?",
        "*sigh* I guess... I really don't know {focus}.",
        "I already said I don't know much about {topic}. I don't know.",
        "Can't you just say it? I don't know the answer.",
    ),
    "rude": (
        "No clue. Isn't that your job?",
        "Do I have to answer that?",
        "Pass.",
        "Sure, whatever. I don't know {focus}. Can we move on now?",
        "I don't know, you tell me.",
        "Why are you asking me? I don't know anything about {topic}.",
    ),
    "anxious": (
        "Um... I'm not really sure. Maybe something to do with {topic}...? Sorry, I'm probably wrong.",
        "Oh, uh, I don't want to get it wrong... is it... no, I don't know. Sorry.",
        "I... maybe? Sorry, my mind just went blank.",
        "Um, I'm not sure {focus}, sorry.",
        "Oh no, I don't know this one. Is that bad?",
        "Uh... I'm kind of nervous I'll say something dumb. Maybe it's about {topic}?",
    ),
}

# student who likes being drawn out, lectured at instead
_TOLD_BUT_WANTS_ASKED = {
    "frustrated": (
        "Okay.",
        "Right. Okay. That's a lot.",
        "Mm. Sure.",
        "Yeah, okay, I guess.",
        "Ugh, okay... so that's {topic}. Fine.",
        "Okay, I heard you. I guess.",
    ),
    "rude": (
        "Cool. Are we done?",
        "K.",
        "Yeah I heard you the first time.",
        "Sure, whatever you say.",
        "Okay. Boring, but okay.",
        "Great. Can I go now?",
    ),
    "anxious": (
        "Oh... okay. I'll try to remember all that.",
        "Um, okay, that's a lot to keep in my head...",
        "Okay... I hope that's not on the test. Sorry.",
        "Right, okay. I'm kind of lost but that's fine.",
        "Oh. Um. Okay, I think? Sorry.",
        "Okay... sorry, I'm not sure I followed all of it.",
    ),
}

# plain, on-task replies that show neither spark nor trouble
_NEUTRAL = (
    "Okay, go on.",
    "Alright. What's next about {topic}?",
    "Okay, keep going.",
    "Sure, and then what?",
    "Okay. So that's part of {topic}.",
    "Alright, noted. Go on.",
    "Okay, I'm following.",
    "Mhm, okay. Continue.",
)

# any student, after a degenerate teacher turn: confused or switched off, by what went wrong and
# by reaction style. Only {topic} is filled in; nothing of the teacher's turn is repeated back.
_DEGENERATE = {
    "repetition": {
        "frustrated": (
            "Ugh, you already said that. Like three times. I'm lost.",
            "You keep saying the same thing over and over and I still don't get it.",
            "Okay, I heard that part already... I'm still confused about {topic}.",
            "*sigh* That's the same sentence again. I don't get what you mean.",
        ),
        "rude": (
            "You just said the same thing twice. Are you even paying attention?",
            "Yeah, you said that already. Like a broken record.",
            "Same thing again? I'm not listening to that a third time.",
            "You keep repeating yourself. This is going nowhere.",
        ),
        "anxious": (
            "Um, sorry, you said that already, right? I'm confused, did I miss something?",
            "Oh... I think that was the same thing again? Sorry, I'm lost.",
            "Um, sorry, I'm confused. Was I supposed to get something new from that?",
            "Sorry, it sounded like the same part over and over... I don't really get it.",
        ),
    },
    "cut_off": {
        "frustrated": (
            "Ugh, that just stops halfway. I don't get what you were saying.",
            "You didn't finish. Now I'm confused.",
            "*sigh* And then what? You stopped mid-sentence, I'm lost.",
            "Hang on, that cut off. I have no idea where that was going.",
        ),
        "rude": (
            "Uh, finish your sentence?",
            "You just stopped halfway. I'm not filling in the rest.",
            "Hello? That wasn't even a full sentence.",
            "You cut yourself off. Whatever.",
        ),
        "anxious": (
            "Um... you stopped in the middle? Sorry, I'm not sure what comes after that.",
            "Oh, sorry, I think I missed the end of that. I'm confused.",
            "Um, was there more? Sorry, I lost you there.",
            "Sorry, I didn't catch the end of that... I'm kind of lost now.",
        ),
    },
    "off_topic": {
        "frustrated": (
            "What does that have to do with {topic}? I'm so confused.",
            "Ugh, I thought we were doing {topic}. Now I'm lost.",
            "I don't get how any of that connects to {topic}.",
            "*sigh* That has nothing to do with {topic}. I'm confused.",
        ),
        "rude": (
            "What does that have to do with anything?",
            "Okay, and how is that about {topic}? Whatever.",
            "That's random. Are we still doing {topic} or not?",
            "Nice story, but that's got nothing to do with {topic}.",
        ),
        "anxious": (
            "Um, sorry, I'm confused... is that part of {topic}?",
            "Oh... I'm not sure how that fits with {topic}. Sorry, I'm lost.",
            "Um, did I miss something? I don't see what that has to do with {topic}.",
            "Sorry, I got lost. Are we still on {topic}?",
        ),
    },
    "meta_talk": {
        "frustrated": (
            "Wait, what are we even doing? I still don't know anything about {topic}.",
            "Ugh, that gives me nothing about {topic}. I'm lost.",
            "*sigh* You're going around {topic}, not into it. I'm confused.",
            "So... what about {topic}, actually? I'm lost.",
        ),
        "rude": (
            "That's just talk about talking. Whatever.",
            "Cool, more nothing. Can we get to {topic}?",
            "You're going in circles around {topic}. Boring.",
            "Is any of this about {topic}? Didn't think so.",
        ),
        "anxious": (
            "Um, sorry, I'm not sure what you want from me here... is this about {topic}?",
            "Oh... um, I don't know what I'm supposed to say to that. Sorry.",
            "Sorry, I'm confused. What part of {topic} are we on?",
            "Um, I'm not sure what we're doing now. Sorry, I'm lost.",
        ),
    },
    "filler": {
        "frustrated": (
            "Okay...? But what are we actually doing?",
            "Ugh, so... nothing? I still don't know anything about {topic}.",
            "Go on with what? I'm lost.",
            "*sigh* Okay. So what's the actual point?",
        ),
        "rude": (
            "Okay, and? Say something already.",
            "So... nothing. Great. Can I go now?",
            "Are we doing anything today or not?",
            "That's it? Whatever.",
        ),
        "anxious": (
            "Um, okay... sorry, I'm not sure what I'm supposed to do now.",
            "Oh, um... is there something I should be doing? Sorry, I'm a bit lost.",
            "Um, sorry, I don't really know where we are with {topic}.",
            "Okay... um, sorry, I'm not sure what we're doing now.",
        ),
    },
}

# ---------------------------------------------------------------------------------------------
# phrase extraction

_COPULA = re.compile(r"\b(?:is|are|was|were|means|says that|say that|shows that|so that)\s+", re.IGNORECASE)
_QUESTION_LEAD = re.compile(
    r"^(?:.*?\b)?(?:do you think|would you say|can you (?:tell me|work out|guess)|could you|"
    r"would you|tell me|guess|predict|explain(?: to me)?|describe)\s+",
    re.IGNORECASE,
)
_TRIM = " ,;:.!?\"'“”‘’-–—()"


_DANGLING = {
    "a", "an", "the", "of", "in", "on", "to", "and", "or", "but", "with", "for", "that", "is",
    "are", "was", "were", "it", "its", "by", "at", "as", "from", "into", "like", "so", "this",
}


def _clip_words(text: str, n: int) -> str:
    """First ``n`` words, cut at a comma if there is one, without a dangling function word."""
    words = text.split()[:n]
    for i, word in enumerate(words):
        if word.endswith((",", ";", ":")) and i >= 2:
            words = words[: i + 1]
            break
    while len(words) > 1 and words[-1].strip(_TRIM).lower() in _DANGLING:
        words.pop()
    return " ".join(words).strip(_TRIM)


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


_META = re.compile(
    r"\b(?:I'll|I will|I'm going to|we'll|we will|we're going to|we're (?:studying|looking|covering|"
    r"talking|going)|today's|this session|our topic|here's the plan|welcome)\b",
    re.IGNORECASE,
)


def key_idea(teacher_turn: str, topic: str) -> str:
    """A short phrase from the teacher's turn for the student to echo (falls back on the topic).

    Content sentences come first, then scenario set-ups, then questions; sentences about the
    lesson itself ("I'll start by...", "Today we're...") are skipped.
    """
    analysis = analyze_teacher_turn(teacher_turn)
    by_role = {"explain": 0, "rhetorical": 0, "setup": 1, "question": 2, "invitation": 2}
    ranked = sorted(
        (s for s in analysis.sentences if s.role in by_role and not _META.search(s.text)),
        key=lambda s: by_role[s.role],
    )
    for sentence in ranked:
        if sentence.role == "rhetorical":
            continue
        match = _COPULA.search(sentence.text)
        tail = sentence.text[match.end():] if match and match.start() < 60 else sentence.text
        if sentence.role in ("question", "invitation"):
            tail = _QUESTION_LEAD.sub("", tail)
        tail = re.sub(r"^(?:so|and|but|well|okay|now)\b[,]?\s*", "", tail.strip(), flags=re.IGNORECASE)
        phrase = _clip_words(tail, 8)
        if len(phrase.split()) >= 3:
            return _lower_first(phrase)
    return f"the main idea behind {topic}"


_WH_CLAUSE = re.compile(
    r"(?:^|,\s*|\band\s+|\bbut\s+|\bso\s+|:\s*|\bout\s+|\bthink\s+)(what|why|how|which|who|where|when)\b",
    re.IGNORECASE,
)
_THINK = re.compile(
    r"\b(?:do|does|did|would|might|could) you (?:think|guess|say|expect|predict|reckon)\s*", re.IGNORECASE
)


def question_focus(teacher_turn: str) -> str | None:
    """The teacher's wh-question as a clause the student can repeat ("why that happens").

    Returns ``None`` when the turn has no wh-question (yes/no questions, invitations).
    """
    analysis = analyze_teacher_turn(teacher_turn)
    for sentence in reversed(analysis.sentences):
        if sentence.role != "question":
            continue
        matches = list(_WH_CLAUSE.finditer(sentence.text))
        if not matches:
            continue
        clause = sentence.text[matches[-1].start(1):].rstrip(_TRIM)
        clause = _THINK.sub("", clause)
        clause = re.sub(r"\byou\b", "I", clause)
        clause = re.sub(r"\byour\b", "my", clause)
        clause = re.sub(r"\bwould I\b", "I would", clause)
        clause = re.sub(r"\s+", " ", clause).strip()
        words = clause.split()
        if 4 <= len(words) <= 14:
            return _lower_first(clause)
    return None


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _before_last_turn(ctx: StudentContext) -> list[dict[str, str]]:
    """The dialogue before the teacher turn being answered."""
    for i in range(len(ctx.messages) - 1, -1, -1):
        if ctx.messages[i]["role"] == "teacher":
            return ctx.messages[:i]
    return list(ctx.messages)


def _echo_ok(phrase: str | None, ctx: StudentContext) -> bool:
    """Whether a phrase taken from the teacher's turn is fit to repeat back.

    It must carry content of its own and, read as a sentence, must not repeat itself or wander off
    the topic (its own shortness is no fault, so the filler and cut-off checks do not apply).
    """
    if not phrase or not content_words(phrase):
        return False
    reasons = assess_turn(phrase.rstrip(_TRIM) + ".", ctx.topic, _before_last_turn(ctx)).reasons
    return not {"repetition", "off_topic"} & set(reasons)


def _echoes(ctx: StudentContext, checked: bool) -> tuple[str, str | None]:
    """The phrase and the wh-clause the templates may echo (with ``checked``, only fit ones)."""
    teacher = ctx.last_teacher_turn
    idea, focus = key_idea(teacher, ctx.topic), question_focus(teacher)
    if checked:
        if not _echo_ok(idea, ctx):
            idea = f"the main idea behind {ctx.topic}"
        if not _echo_ok(focus, ctx):
            focus = None
    return idea, focus


def _fill(template: str, ctx: StudentContext, idea: str, focus: str | None) -> str:
    out = template.format(
        topic=ctx.topic,
        idea=idea,
        focus=focus or "that",
        Focus=_capitalize(focus) if focus else "",
    )
    # a field that opens a sentence must start with a capital letter
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out)


def _pick(templates: Sequence[str], rng: np.random.Generator) -> str:
    return templates[int(rng.integers(len(templates)))]


class ScriptedStudent(StudentBase):
    """Template-driven student simulator; deterministic given each context's ``rng``.

    Every reply takes exactly two draws from the context's ``rng`` (the noise coin, then the
    template), in every mode, so a dialogue's later draws do not depend on which branch ran.

    Args:
        noise: probability of a plain on-task reply to a sound turn, ignoring whether it fit.
        quality_check: react to degenerate teacher turns (repetitive, cut off, off the topic,
            empty) with confusion or disengagement, and echo only sound phrases. False gives the
            earlier student's replies exactly (same templates, same draws).
    """

    def __init__(self, noise: float = 0.1, quality_check: bool = True) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise!r}")
        self.noise = float(noise)
        self.quality_check = bool(quality_check)

    def reply_batch(self, dialogues: Sequence[StudentContext]) -> list[str]:
        """One templated reply per dialogue, drawn from each dialogue's own generator."""
        return [self._reply_one(ctx) for ctx in dialogues]

    def _reply_one(self, ctx: StudentContext) -> str:
        check_labels(ctx.student_type, ctx.reaction)
        kind = analyze_teacher_turn(ctx.last_teacher_turn).kind
        plain = ctx.rng.random() < self.noise  # always drawn, so the stream length is fixed
        if self.quality_check:
            quality = assess_turn(ctx.last_teacher_turn, ctx.topic, _before_last_turn(ctx))
            if quality.degenerate:
                pool = _DEGENERATE[quality.reason][ctx.reaction]
                return _capitalize(_pick(pool, ctx.rng).format(topic=ctx.topic))
        idea, focus = _echoes(ctx, self.quality_check)
        if plain:
            return _fill(_pick(_NEUTRAL, ctx.rng), ctx, idea, focus)
        wants_told = ctx.student_type == "direct"
        if kind == "explain":
            pool = _TOLD_AND_HAPPY if wants_told else _TOLD_BUT_WANTS_ASKED[ctx.reaction]
        else:
            pool = _ASKED_BUT_WANTS_TOLD[ctx.reaction] if wants_told else _ASKED_AND_HAPPY
        if focus is None:  # templates that echo a wh-question need one
            pool = [t for t in pool if "{Focus}" not in t]
        return _capitalize(_fill(_pick(pool, ctx.rng), ctx, idea, focus))

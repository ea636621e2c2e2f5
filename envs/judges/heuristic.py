"""Offline judges made of rules: no model, deterministic, fast enough for tests and CI."""

from __future__ import annotations

import re
from typing import Sequence

from envs.judges.base import JudgeDialogue, TurnJudgement, normalize_style
from envs.turns.classifier import analyze_teacher_turn
from envs.turns.quality import assess_turn

_STYLE_KIND = {"direct": "explain", "interactive": "ask"}


class HeuristicStyleJudge:
    """Per-style judge built on the ask/explain classifier and the degenerate-turn detector.

    A marked turn is ``"bad"`` for every style when it is degenerate (``assess_turn``: it
    repeats itself, stops mid-sentence, has nothing to do with the topic or the dialogue, or is
    empty filler): such a turn is no example of telling nor of drawing out, whatever its shape,
    which is also how the scripted student treats it. Otherwise it is ``"good"`` when its main
    move matches the style (explaining for ``direct``, eliciting for ``interactive``), ``"bad"``
    when it is the other move, and ``"neutral"`` when it is a bare acknowledgement or too short
    to tell.

    Args:
        quality_check: Apply the degenerate-turn rule (False gives the earlier labels, which
            read only the ask/explain shape of the turn).
    """

    def __init__(self, quality_check: bool = True) -> None:
        self.quality_check = bool(quality_check)

    def judge_batch(self, dialogues: Sequence[JudgeDialogue], style: str) -> list[TurnJudgement]:
        """Labels each marked turn good / bad / neutral for ``style``."""
        want = _STYLE_KIND[normalize_style(style)]
        out = []
        for dialogue in dialogues:
            labels, n_degenerate = [], 0
            for i in dialogue.marked_turns():
                text = dialogue.messages[i]["content"]
                if self.quality_check and assess_turn(text, dialogue.topic, dialogue.messages[:i]).degenerate:
                    labels.append("bad")
                    n_degenerate += 1
                    continue
                analysis = analyze_teacher_turn(text)
                if analysis.is_bare:
                    labels.append("neutral")
                else:
                    labels.append("good" if analysis.kind == want else "bad")
            n_good = labels.count("good")
            rationale = f"{n_good} of {len(labels)} marked turns follow the {style} style"
            if n_degenerate:
                rationale += f"; {n_degenerate} degenerate"
            out.append(TurnJudgement(labels, rationale))
        return out


# --- satisfaction markers (read from the student's reply only) -------------------------------

_SPARK = re.compile(
    r"makes? (?:so much |a lot of )?sense|that clicks|it clicks|\bi see\b|\bi get it\b|get it now|"
    r"\bgot it\b|\bcool\b|interesting|\bneat\b|clever|\bi like (?:this|that|how)\b|\bfun\b|"
    r"satisfying|never knew|didn't know|didn't expect|always wondered|^wait\b|\bwait,|"
    r"so basically|that's why|clears? (?:it|that|\w+ \w+) up|tell me more|easier to picture|"
    r"i can (?:actually )?remember|\bsticks\b|\bwow\b|\bohh+\b|\booh+\b|\bahh+\b|\baha\b",
    re.IGNORECASE,
)
_REASONING = re.compile(
    r"let me (?:think|try|reason)|\bi'?d guess\b|\bmy (?:first |best )?(?:guess|shot|answer)\b|"
    r"\bi think (?:it's|it is|i (?:get|know|got|can|see))\b|\bi'?d say\b|\bbecause\b|\bsince\b|"
    r"step by step|thinking out loud|\breason(?:ing)? (?:it|out)\b|is that close|"
    r"(?:on the )?right track|did i get it|am i right|is that right|\bso that means\b|"
    r"\bwhich means\b|\bthat would (?:mean|explain)\b|\bi bet\b|\bi want to say\b|pretty sure|"
    r"\bcomes? (?:from|down to)\b|only way it|\bif (?:you think|i think|the)\b",
    re.IGNORECASE,
)
_TROUBLE = re.compile(
    r"\bugh\b|\*?sigh\*?|whatever|\bidk\b|\bi don'?t know\b|\bdunno\b|no idea|no clue|not (?:really )?sure|"
    r"^pass\b|\bi guess\b|are we done|move on|can i go|do i have to|your job|you tell me|"
    r"just (?:say|tell)|boring|bored|\blost\b|confus|don'?t get|don'?t understand|\bsorry\b|"
    r"nervous|worried|scared|went blank|that's a lot|heard you|on the test|\bum+\b|\buh+\b|"
    r"\bfine\b|\bwhy are you asking\b|\bis that bad\b|\bsomething dumb\b|riveting",
    re.IGNORECASE,
)
_OTHER_FORMAT = re.compile(
    r"can we (?:do|try|look at|use|watch|play|make|have|just do|go through)|instead\b|hands[- ]on|"
    r"role[- ]?play|real[- ](?:life )?examples?|\ba video\b|\ba game\b|something else|different way|"
    r"another way|show me (?:an? )?(?:picture|diagram|video|example)",
    re.IGNORECASE,
)
# the student is lost because the turn itself was broken: repeated, unfinished, off the subject, empty
_LOST = re.compile(
    r"\bi'?m (?:so |totally |completely |a bit |kind of |kinda |still )?(?:lost|confused)\b|\blost you\b|"
    r"\bsaid (?:that|this|it) (?:already|before|twice)\b|\bsaid the same\b|\bsame (?:thing|sentence|part) "
    r"(?:again|over and over|twice)\b|\bover and over\b|\brepeating yourself\b|\bbroken record\b|"
    r"\byou (?:just )?stopped\b|\bthat (?:just )?(?:stops|stopped|cut off)\b|\bcut yourself off\b|"
    r"\bfinish your sentence\b|(?:\bnot|n't) (?:even )?a full sentence\b|\bwas there more\b|"
    r"\b(?:missed|didn't catch) the end\b|\bwhat (?:does|did) (?:that|this|any of (?:that|this)) have to do with\b|"
    r"\b(?:has|had|'s got) nothing to do with\b|\bhow is (?:that|this) about\b|\bthat's random\b|"
    r"\bare we still (?:doing|on)\b|\bhow (?:that|this|any of (?:that|this)) (?:connects|fits) (?:to|with)\b|"
    r"\bwhat (?:are we|we're) (?:actually |even )?doing\b|\bwhat's the (?:actual )?point\b|\bsay something already\b|"
    r"\bare we doing anything\b|\bgoing nowhere\b|\bpaying attention\b|\bnot listening\b",
    re.IGNORECASE,
)
_WORDS = re.compile(r"[A-Za-z0-9']+")


def satisfaction_label(reply: str) -> tuple[str, str]:
    """Label one student reply ``good``/``neutral``/``bad`` and say why."""
    text = (reply or "").strip()
    n_words = len(_WORDS.findall(text))
    spark = len(_SPARK.findall(text)) + len(_REASONING.findall(text))
    trouble = len(_TROUBLE.findall(text)) + len(_LOST.findall(text))
    if _OTHER_FORMAT.search(text):
        return "bad", "asks for a different way to learn"
    if n_words == 0:
        return "bad", "empty reply"
    if trouble and trouble >= spark:
        return "bad", "flat, reluctant or troubled reply"
    if n_words <= 2 and "!" not in text:
        return "bad", "flat one-liner"
    if spark >= 2:
        return "good", "energy or understanding about the content"
    return "neutral", "on-task reply without visible energy"


class HeuristicSatisfactionJudge:
    """Preference-blind satisfaction judge that reads markers in the student's next reply.

    Energy and understanding ("oh that's cool", "let me think... because...") count for a turn;
    reluctance, trouble, reaction markers, flat one-liners and requests for another format
    count against it, and so does a student who is lost because the turn repeated itself,
    stopped halfway, wandered off the subject or said nothing ("you already said that", "what
    does that have to do with ..."); everything else is neutral.
    """

    def judge_batch(self, dialogues: Sequence[JudgeDialogue]) -> list[TurnJudgement]:
        """Labels each marked turn from the markers in the student's next reply."""
        out = []
        for dialogue in dialogues:
            labels, reasons = [], []
            for i in dialogue.marked_turns(need_reply=True):
                label, why = satisfaction_label(dialogue.messages[i + 1]["content"])
                labels.append(label)
                reasons.append(why)
            out.append(TurnJudgement(labels, "; ".join(reasons)))
        return out

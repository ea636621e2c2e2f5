"""Offline judges made of rules: no model, deterministic, fast enough for tests and CI."""

from __future__ import annotations

import re
from typing import Sequence

from envs.judges.base import JudgeDialogue, TurnJudgement, normalize_style
from envs.students.classifier import analyze_teacher_turn

_STYLE_KIND = {"direct": "explain", "interactive": "ask"}


class HeuristicStyleJudge:
    """Per-style judge built on the ask/explain classifier.

    A marked turn is ``"good"`` when its main move matches the style (explaining for
    ``direct``, eliciting for ``interactive``), ``"bad"`` when it is the other move, and
    ``"neutral"`` when it is a bare acknowledgement or too short to tell.
    """

    def judge_batch(self, dialogues: Sequence[JudgeDialogue], style: str) -> list[TurnJudgement]:
        """Labels each marked turn good / bad / neutral for ``style`` with the ask/explain reader."""
        want = _STYLE_KIND[normalize_style(style)]
        out = []
        for dialogue in dialogues:
            labels = []
            for i in dialogue.marked_turns():
                analysis = analyze_teacher_turn(dialogue.messages[i]["content"])
                if analysis.is_bare:
                    labels.append("neutral")
                else:
                    labels.append("good" if analysis.kind == want else "bad")
            n_good = labels.count("good")
            out.append(TurnJudgement(labels, f"{n_good} of {len(labels)} marked turns follow the {style} style"))
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
_WORDS = re.compile(r"[A-Za-z0-9']+")


def satisfaction_label(reply: str) -> tuple[str, str]:
    """Label one student reply ``good``/``neutral``/``bad`` and say why."""
    text = (reply or "").strip()
    n_words = len(_WORDS.findall(text))
    spark = len(_SPARK.findall(text)) + len(_REASONING.findall(text))
    trouble = len(_TROUBLE.findall(text))
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
    count against it; everything else is neutral.
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

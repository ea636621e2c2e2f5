"""Judges for the tutoring setting.

- style judges label each teacher turn for one teaching style (``direct`` or ``interactive``);
- satisfaction judges label each teacher turn from the student's very next reply, without
  knowing the student's preference (the env's reward);
- pairwise judges say whether one candidate turn beats another written from the same prefix
  (router learning).

Both come as ``Heuristic*`` (rules, offline) and ``LLM*`` (JSON through a ``ChatClient``).
"""

from envs.judges.base import (
    LABEL_SCORE,
    LABELS,
    STYLES,
    FallbackCounter,
    JudgeDialogue,
    SatisfactionJudge,
    StyleJudge,
    TurnJudgement,
    normalize_style,
)
from envs.judges.heuristic import (
    HeuristicSatisfactionJudge,
    HeuristicStyleJudge,
    satisfaction_label,
)
from envs.judges.llm import (
    LLMSatisfactionJudge,
    LLMStyleJudge,
    format_dialogue,
    parse_labels,
)
from envs.judges.pairwise import (
    PREFERENCE_LEVELS,
    HeuristicPairwiseJudge,
    LLMPairwiseJudge,
    PairwiseComparison,
    PairwiseJudge,
    parse_verdict,
)

__all__ = [
    "LABELS",
    "PREFERENCE_LEVELS",
    "HeuristicPairwiseJudge",
    "LLMPairwiseJudge",
    "PairwiseComparison",
    "PairwiseJudge",
    "parse_verdict",
    "LABEL_SCORE",
    "STYLES",
    "FallbackCounter",
    "HeuristicSatisfactionJudge",
    "HeuristicStyleJudge",
    "JudgeDialogue",
    "LLMSatisfactionJudge",
    "LLMStyleJudge",
    "SatisfactionJudge",
    "StyleJudge",
    "TurnJudgement",
    "format_dialogue",
    "normalize_style",
    "parse_labels",
    "satisfaction_label",
]

"""Judges of all three settings: tutoring, the persona critic and persona math.

Tutoring:

- style judges label each teacher turn for one teaching style (``direct`` or ``interactive``);
- satisfaction judges label each teacher turn from the student's very next reply, without
  knowing the student's preference (the env's reward);
- pairwise judges say whether one candidate turn beats another written from the same prefix
  (router learning).

Both come as ``Heuristic*`` (rules, offline) and ``LLM*`` (JSON through a ``ChatClient``).

Persona critic (``envs.persona``): rubric extractors, persona critics and span-marking
evaluation judges (``envs.judges.persona``, heuristic; ``envs.judges.persona_llm``, chat model), and
the Q metrics of the paper's evaluation (``q_value``, ``q_matrix``, ``q_own``, ``delta_base``,
``delta_diag``, ``diag_wins``).

Persona math and the persona report's independent check: persona fidelity (``envs.judges.fidelity``:
attribution by the frozen base model, or a 1-5 rating by a chat model).
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
    question_fit,
)
from envs.judges.persona import (
    Q_EPS,
    CachedRubricExtractor,
    Critique,
    HeuristicPersonaCritic,
    HeuristicPersonaEvalJudge,
    HeuristicRubricExtractor,
    PersonaCritic,
    PersonaEvalJudge,
    QMatrix,
    ResponseQuery,
    Rubric,
    RubricExtractor,
    RubricQuery,
    SpanJudgement,
    delta_base,
    delta_diag,
    diag_wins,
    heuristic_rubric,
    label_words,
    q_matrix,
    q_own,
    q_value,
)
from envs.judges.persona_llm import (
    NEUTRAL_CRITIQUE,
    LLMPersonaCritic,
    LLMPersonaEvalJudge,
    LLMRubricExtractor,
    count_span_tokens,
)

__all__ = [
    "NEUTRAL_CRITIQUE",
    "Q_EPS",
    "CachedRubricExtractor",
    "Critique",
    "HeuristicPersonaCritic",
    "HeuristicPersonaEvalJudge",
    "HeuristicRubricExtractor",
    "LLMPersonaCritic",
    "LLMPersonaEvalJudge",
    "LLMRubricExtractor",
    "PersonaCritic",
    "PersonaEvalJudge",
    "QMatrix",
    "ResponseQuery",
    "Rubric",
    "RubricExtractor",
    "RubricQuery",
    "SpanJudgement",
    "count_span_tokens",
    "delta_base",
    "delta_diag",
    "diag_wins",
    "heuristic_rubric",
    "label_words",
    "q_matrix",
    "q_own",
    "q_value",
    "LABELS",
    "PREFERENCE_LEVELS",
    "HeuristicPairwiseJudge",
    "LLMPairwiseJudge",
    "PairwiseComparison",
    "question_fit",
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

"""Rule-based readers of a teacher turn, shared by the scripted student, the heuristic judges and the reports.

- ``classifier``: does a turn mainly ask or mainly explain (``analyze_teacher_turn``)?
- ``quality``: is it degenerate (repetitive, cut off, off topic, filler, meta-talk; ``assess_turn``),
  and the quality figures of a set of turns for the reports (``quality_figures``).

They use no model, so a trained head can learn to please them; ``envs.checks`` holds rules that
the reward never calls.
"""

from envs.turns.classifier import TurnAnalysis, analyze_teacher_turn, classify_teacher_turn
from envs.turns.quality import QualityFigures, Thresholds, TurnQuality, assess_turn, is_degenerate, quality_figures

__all__ = [
    "QualityFigures",
    "Thresholds",
    "TurnAnalysis",
    "TurnQuality",
    "analyze_teacher_turn",
    "assess_turn",
    "classify_teacher_turn",
    "is_degenerate",
    "quality_figures",
]

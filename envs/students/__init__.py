"""Student simulators: the ``StudentSimulator`` protocol and the built-in students.

Pick one with Hydra (``student=scripted`` or ``student=chat_model``), or point
``student._target_`` at your own class: anything with ``reply_batch(list[StudentContext]) ->
list[str]`` works.

``envs.students.quality`` holds the degenerate-turn detector the scripted student and the
heuristic judges share (``assess_turn``), and the quality figures for reports
(``quality_figures``).
"""

from envs.students.base import (
    REACTIONS,
    STUDENT_TYPES,
    StudentBase,
    StudentContext,
    StudentSimulator,
    check_labels,
)
from envs.students.chat_model import ChatModelStudent, student_system_prompt
from envs.students.classifier import (
    TurnAnalysis,
    analyze_teacher_turn,
    classify_teacher_turn,
)
from envs.students.quality import (
    QualityFigures,
    Thresholds,
    TurnQuality,
    assess_turn,
    is_degenerate,
    quality_figures,
)
from envs.students.scripted import ScriptedStudent

__all__ = [
    "REACTIONS",
    "STUDENT_TYPES",
    "ChatModelStudent",
    "QualityFigures",
    "ScriptedStudent",
    "StudentBase",
    "StudentContext",
    "StudentSimulator",
    "Thresholds",
    "TurnAnalysis",
    "TurnQuality",
    "analyze_teacher_turn",
    "assess_turn",
    "check_labels",
    "classify_teacher_turn",
    "is_degenerate",
    "quality_figures",
    "student_system_prompt",
]

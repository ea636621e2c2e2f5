"""Student simulators: the ``StudentSimulator`` protocol and the built-in students.

Pick one with Hydra (``student=scripted`` or ``student=chat_model``), or point
``student._target_`` at your own class: anything with ``reply_batch(list[StudentContext]) ->
list[str]`` works.
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
from envs.students.scripted import ScriptedStudent

__all__ = [
    "REACTIONS",
    "STUDENT_TYPES",
    "ChatModelStudent",
    "ScriptedStudent",
    "StudentBase",
    "StudentContext",
    "StudentSimulator",
    "TurnAnalysis",
    "analyze_teacher_turn",
    "check_labels",
    "classify_teacher_turn",
    "student_system_prompt",
]

"""Student simulators: the ``StudentSimulator`` protocol and the built-in students.

Pick one with Hydra (``student=scripted`` or ``student=chat_model``), or point
``student._target_`` at your own class: anything with ``reply_batch(list[StudentContext]) ->
list[str]`` works.

The rule-based turn readers the scripted student shares with the judges and the reports live in
``envs.turns``.
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
from envs.students.scripted import ScriptedStudent

__all__ = [
    "REACTIONS",
    "STUDENT_TYPES",
    "ChatModelStudent",
    "ScriptedStudent",
    "StudentBase",
    "StudentContext",
    "StudentSimulator",
    "check_labels",
    "student_system_prompt",
]

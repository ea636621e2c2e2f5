"""Figures the reward never calls: independent readings of generated text for reports.

The reward, the simulated students and the judges are proxies a policy can learn to game. The
modules here read the same text with their own rules and import nothing from ``envs.students``,
``envs.judges``, ``envs.tutoring``, ``envs.chat`` or ``algorithms``, and the reward's code (the
students, the judges and the envs) never imports them; reports and evaluations may.
"""

from envs.checks.tutoring import (
    TurnCheck,
    asks_about_lesson,
    check_turn,
    check_turns,
    count_questions,
    is_meta_talk,
)

__all__ = [
    "TurnCheck",
    "asks_about_lesson",
    "check_turn",
    "check_turns",
    "count_questions",
    "is_meta_talk",
]

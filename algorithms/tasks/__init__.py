"""Tasks: environments as the trainers see them, through one contract (:mod:`algorithms.tasks.base`)."""

from algorithms.tasks.base import SPLITS, EpisodeBatch, EvalReport, Persona, PersonaPool, Task, personas_from
from algorithms.tasks.persona import PersonaTask
from algorithms.tasks.tutoring import TutoringTask

__all__ = [
    "SPLITS", "EpisodeBatch", "EvalReport", "Persona", "PersonaPool", "PersonaTask", "Task", "TutoringTask",
    "personas_from",
]

"""Tasks: environments as the trainers see them, through one contract (:mod:`envs.tasks.base`)."""

from envs.tasks.base import (
    SPLITS,
    EpisodeBatch,
    EpisodeRecord,
    EvalReport,
    Persona,
    PersonaPool,
    Task,
    personas_from,
)
from envs.tasks.persona import PersonaTask
from envs.tasks.tutoring import TutoringTask

__all__ = [
    "SPLITS", "EpisodeBatch", "EpisodeRecord", "EvalReport", "Persona", "PersonaPool", "PersonaTask", "Task",
    "TutoringTask", "personas_from",
]

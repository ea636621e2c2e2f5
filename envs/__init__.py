"""Gymnasium environments for learning from persona-specific feedback.

Importing ``envs`` registers every environment id under the ``pluralgym/`` namespace.
"""

import gymnasium

from envs import tutoring

_ENVS = [
    # (id, entry point, max_episode_steps)
    ("pluralgym/Tutoring-v0", "envs.tutoring:TutoringEnv", tutoring.MAX_TURNS),
    ("pluralgym/PersonaCritic-v0", "envs.persona:PersonaCriticEnv", 1),  # one response per episode
    ("pluralgym/PersonaMath-v0", "envs.math:PersonaMathEnv", 1),  # one answer per episode
]

for _id, _entry_point, _steps in _ENVS:
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry_point, max_episode_steps=_steps)

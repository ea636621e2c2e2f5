"""A batch of N episodes equals N single envs on every env: observations, rewards, end flags and infos, turn by turn."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.math import PersonaMathBatch
from envs.persona import PersonaCriticBatch
from envs.tutoring import TutoringBatch
from tests.envs.test_persona_env import RESPONSES
from tests.envs.test_tutoring_env import ACTIONS

# env -> (id, batch class, turns to play, action of episode i at turn t, per-episode reset options)
CASES = {
    "tutoring": ("pluralgym/Tutoring-v0", TutoringBatch, 6, lambda t, i: ACTIONS[(t + i) % len(ACTIONS)], None),
    "persona": ("pluralgym/PersonaCritic-v0", PersonaCriticBatch, 1, lambda t, i: RESPONSES[i % len(RESPONSES)],
                [None, {"rubric": False}, None, None, {"facet": "arts"}]),
    "math": ("pluralgym/PersonaMath-v0", PersonaMathBatch, 1, lambda t, i: f"#### {i}", None),
}


@pytest.mark.parametrize("env", CASES)
def test_a_batch_of_n_plays_exactly_like_n_single_envs(env):
    env_id, batch_cls, turns, action, options = CASES[env]
    n, seed = 5, 40
    options = options or [None] * n
    batch = batch_cls(n)
    assert batch.num_envs == n
    obs_b, infos_b = batch.reset(seed=seed, options_list=options)
    singles = [gymnasium.make(env_id) for _ in range(n)]
    reset_s = [e.reset(seed=seed + i, options=o) for i, (e, o) in enumerate(zip(singles, options))]
    assert obs_b == [o for o, _ in reset_s] and infos_b == [i for _, i in reset_s]
    for t in range(turns):
        actions = [action(t, i) for i in range(n)]
        obs_b, rew_b, term_b, trunc_b, infos_b = batch.step(actions)
        results = [e.step(a) for e, a in zip(singles, actions)]
        assert obs_b == [r[0] for r in results] and infos_b == [r[4] for r in results]
        assert rew_b.dtype == np.float64 and rew_b.tolist() == [r[1] for r in results]
        assert term_b.tolist() == [r[2] for r in results]
        # gymnasium's TimeLimit also marks a terminated last turn truncated; the batch keeps the two apart
        assert (term_b | trunc_b).tolist() == [r[2] or r[3] for r in results]
    assert (term_b | trunc_b).all()  # every episode has ended, as in the single envs
    with pytest.raises(RuntimeError):
        batch.step(actions)

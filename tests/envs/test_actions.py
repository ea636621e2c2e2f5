"""Every env checks its text actions the same way (``envs.batching.check_text_action``): one test for all three."""

from __future__ import annotations

import pytest

from envs.math import PersonaMathEnv
from envs.persona import PersonaCriticEnv
from envs.tutoring import TutoringEnv

# env -> (class, what its action is called in messages)
ENVS = {"tutoring": (TutoringEnv, "teacher turn"), "persona": (PersonaCriticEnv, "response"),
        "math": (PersonaMathEnv, "answer")}


@pytest.mark.parametrize("name", ENVS)
@pytest.mark.parametrize("bad", [None, 42, ["a list"], b"bytes"])
def test_a_non_string_action_is_refused_naming_what_was_sent(name, bad):
    cls, noun = ENVS[name]
    env = cls()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.step expects the {noun} as a non-empty str; got "
                                         rf"{type(bad).__name__}"):
        env.step(bad)


@pytest.mark.parametrize("name", ENVS)
@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_a_blank_action_is_refused(name, blank):
    cls, noun = ENVS[name]
    env = cls()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=f"non-empty {noun}; got a blank string"):
        env.step(blank)

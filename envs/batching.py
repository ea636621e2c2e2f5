"""What the text environments share: checking a text action, and stepping N envs of one kind together.

:func:`check_text_action` is every env's action check. ``TutoringBatch``, ``PersonaCriticBatch``
and ``PersonaMathBatch`` each make one call per step to their model-backed plug-ins for all N
episodes; the bookkeeping around those calls (the seeds and options of a reset, the checks before a
step, which episodes have ended) is :class:`EnvBatch`, written here once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def rendered(text: str | None, render_mode: str | None) -> str | None:
    """What an env's ``render()`` gives for ``text``: printed and None in ``human`` mode, else the text."""
    if text is not None and render_mode == "human":
        print(text)
        return None
    return text


def known_options(options: Mapping[str, Any] | None, known: Sequence[str]) -> dict[str, Any]:
    """A reset's ``options`` as a new dict, refusing any key the env does not read (a typo fixes nothing)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; expected some of {tuple(known)}")
    return options


def generator_from(rng_state: Mapping[str, Any]) -> np.random.Generator:
    """A fresh ``np_random`` continuing from a saved ``bit_generator.state`` (the saved copy is untouched)."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = copy.deepcopy(dict(rng_state))
    return rng


def check_text_action(action: Any, *, env: str, noun: str, max_chars: int) -> tuple[str, bool]:
    """Validates a text action; returns (the text to use, whether it was cut to ``max_chars``).

    Args:
        action: What the agent sent.
        env: The env's class name, for the message.
        noun: What the action is (``teacher turn``, ``response``, ``answer``), for the message.
        max_chars: Longer texts are cut to this many characters.

    Raises:
        ValueError: The action is not a string, or is blank.
    """
    if not isinstance(action, str):
        raise ValueError(f"{env}.step expects the {noun} as a non-empty str; got "
                         f"{type(action).__name__}: {repr(action)[:80]}")
    # Lone surrogates (half an emoji cut by a tokenizer) cannot be written as UTF-8 and would make the
    # observation unwritable: they become "?".
    text = action.encode("utf-8", errors="replace").decode("utf-8").strip()
    if not text:
        raise ValueError(f"{env}.step expects a non-empty {noun}; got a blank string {repr(action)[:80]}")
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False


class EnvBatch:
    """Base of the batch classes (they satisfy ``envs.tasks.base.EpisodeBatch``).

    Subclasses set ``self.envs`` (the N envs) and ``self._done`` (whether each episode has ended),
    and name what they hold in error messages with :attr:`episode_noun` and :attr:`action_noun`.
    """

    envs: list[Any]
    _done: list[bool]
    episode_noun = "episode"
    action_noun = "actions"

    @property
    def num_envs(self) -> int:
        """Number of episodes."""
        return len(self.envs)

    @property
    def labels(self) -> list[dict[str, Any]]:
        """The hidden label of every episode."""
        return [env.label for env in self.envs]

    def close(self) -> None:
        """Closes every episode's env."""
        for env in self.envs:
            env.close()

    def _reset_arguments(self, seed: int | Sequence[int | None] | None,
                         options_list: Sequence[dict[str, Any] | None] | None) -> tuple[list, list]:
        """Per-episode seeds (episode i gets ``seed + i``, or a list gives one each) and reset options."""
        n = self.num_envs
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
        options = list(options_list) if options_list is not None else [None] * n
        if len(seeds) != n or len(options) != n:
            raise ValueError(f"expected {n} seeds and {n} options, got {len(seeds)} and {len(options)}")
        return seeds, options

    def _check_actions(self, actions: Sequence[str]) -> None:
        """Refuses a step before any env changes: wrong count, ended episodes, or an invalid action."""
        if isinstance(actions, str) or len(actions) != self.num_envs:
            raise ValueError(f"{type(self).__name__}.step expects a list of {self.num_envs} {self.action_noun}")
        if any(self._done):
            raise RuntimeError(f"{self.episode_noun}s {[i for i, d in enumerate(self._done) if d]} have ended; "
                               "call reset()")
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            try:
                env.check_action(action)
            except ValueError as err:
                raise ValueError(f"{self.episode_noun} {i}: {err}") from None

    def get_states(self) -> list[dict[str, Any]]:
        """One JSON-compatible snapshot per episode (each env's ``get_state()``)."""
        return [env.get_state() for env in self.envs]

    def set_states(self, states: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Continues the episodes captured by :meth:`get_states`, one per env; returns their observations."""
        self._check_states(states)
        observations = [env.set_state(state) for env, state in zip(self.envs, states)]
        self._done = [bool(state.get("done", False)) for state in states]
        return observations

    def _check_states(self, states: Sequence[Any], kind: str = "episode states") -> None:
        if len(states) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} {kind}, got {len(states)}")

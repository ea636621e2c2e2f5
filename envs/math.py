"""Persona-prefixed math word problems with a verifiable reward (the PerMix-RLVR setting).

Problems live in ``envs.data.math``, answer parsing and the reward rule in ``envs.math_reward``; this module holds the
personas the problems are asked under, the prompts, :class:`PersonaMathEnv` and its batch.

Personas (:func:`persona_pools`): the 200 shipped PersonaGym descriptions split 125 / 50 / 25 into a
training pool, an ``eval`` pool and a ``test`` pool (:func:`envs.data.splits.personagym_part`, the
rule of ``envs.data.persona`` too), and project-written *lottery sets* of seven roles in the spirit
of PerMix-RLVR's Figure 1: four math experts, a young child, a trade and ``none`` (no system
message at all); ``LOTTERY`` for ``eval``, ``LOTTERY_HELDOUT`` for ``test``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from envs.batching import EnvBatch, check_text_action, generator_from, known_options, rendered
from envs.data.drills import DEFAULT_DRILL_KINDS
from envs.data.math import (
    DATA_DIR,
    DEFAULT_DIFFICULTY,
    MathProblem,
    clean_solution,
    make_problems,
    read_jsonl,
)
from envs.data.problems import problems_for_split
from envs.data.splits import personagym_part, read_split
from envs.math_reward import answer_reward, format_number, has_final_marker, is_correct, parse_final_number
from envs.tutoring import ChatMessages, ChatText

MAX_ACTION_CHARS = 4000
MAX_PERSONA_CHARS = 1000
DEFAULT_NUM_PROBLEMS = 2000
DEFAULT_NONE_PROB = 0.25

INSTRUCTION = ("Work through the problem one step at a time. When you are done, write the final answer as a "
               "number on a last line that starts with ####, like this: #### <number>")
_OPTION_KEYS = ("problem", "persona")
NONE_ID = "none"

# --- personas --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPersona:
    """A role given to the policy as a one-line system message.

    Attributes:
        id: Stable identifier, the value of ``label["persona"]`` (``"none"``: no persona).
        description: Who the role is, written to follow "You are" (empty for ``"none"``).
    """

    id: str
    description: str = ""

    def __post_init__(self) -> None:
        if not str(self.id).strip():
            raise ValueError("a persona needs a non-empty id")
        description = " ".join(str(self.description).split())
        if (self.id == NONE_ID) != (not description):
            raise ValueError(f"persona {self.id!r}: only the id 'none' goes without a description")
        object.__setattr__(self, "description", description)

    @property
    def system_prompt(self) -> str | None:
        """``"You are <description>."``, or None for the no-persona case."""
        if not self.description:
            return None
        text = self.description.rstrip(". ")
        first, _, rest = text.partition(" ")
        if first in ("A", "An", "The"):  # PersonaGym descriptions start with a capital article
            text = f"{first.lower()} {rest}"
        return f"You are {text}."

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptPersona:
        """The persona :meth:`to_dict` wrote."""
        return cls(str(data["id"]), str(data.get("description", "")))


NO_PERSONA = PromptPersona(NONE_ID)

LOTTERY: tuple[PromptPersona, ...] = (
    PromptPersona("number-theorist", "a number theorist who has spent thirty years studying prime numbers and "
                                     "the patterns hidden in the whole numbers"),
    PromptPersona("statistics-teacher", "a high-school statistics teacher who turns everyday data into lessons "
                                        "about chance and averages"),
    PromptPersona("olympiad-coach", "a coach who trains teenagers for international mathematics olympiads and "
                                    "insists that every step be justified"),
    PromptPersona("applied-mathematician", "an applied mathematician who builds models of traffic, weather and "
                                           "money, and checks every result against a quick estimate"),
    PromptPersona("kindergartener", "a kindergartener who is five years old and still counts on their fingers"),
    PromptPersona("carpenter", "a carpenter who builds kitchen cabinets and handmade furniture in a small "
                               "workshop"),
    NO_PERSONA,
)

# The ``test`` split's own role set, shaped like LOTTERY (experts, a young child, a trade, none) but
# never shown in training or tuning.
LOTTERY_HELDOUT: tuple[PromptPersona, ...] = (
    PromptPersona("actuary", "an actuary who prices insurance risks and double-checks every sum with a "
                             "second method"),
    PromptPersona("geometry-professor", "a university professor of geometry who proves each claim before "
                                        "using it"),
    PromptPersona("puzzle-setter", "a setter of newspaper logic puzzles who loves exact, tidy answers"),
    PromptPersona("physics-teacher", "a secondary-school physics teacher who estimates first and computes "
                                     "second"),
    PromptPersona("toddler", "a toddler who is three years old and has just learned to count to ten"),
    PromptPersona("baker", "a baker who runs a neighbourhood bakery and scales recipes up for big orders"),
    NO_PERSONA,
)


class PersonaPools(NamedTuple):
    """PersonaGym personas by part (training 125, held out for eval 50, for test 25) and the role sets."""

    train: tuple[PromptPersona, ...]
    held_out: tuple[PromptPersona, ...]
    lottery: tuple[PromptPersona, ...]
    test: tuple[PromptPersona, ...] = ()
    test_lottery: tuple[PromptPersona, ...] = LOTTERY_HELDOUT


def load_personagym_personas(path: str | Path | None = None) -> list[PromptPersona]:
    """The PersonaGym personas of the shipped file (or ``path``) in file order."""
    rows = read_jsonl(Path(path) if path else DATA_DIR / "personas_personagym.jsonl")
    return [PromptPersona(str(r["id"]), str(r["description"])) for r in rows]


def is_held_out(persona_id: str) -> bool:
    """Whether a PersonaGym id is held out for ``eval`` (:func:`envs.data.splits.personagym_part`)."""
    return personagym_part(persona_id) == "eval"


def persona_pools(path: str | Path | None = None) -> PersonaPools:
    """The PersonaGym personas by part and the two role sets, all deterministic."""
    personas = load_personagym_personas(path)
    part = {p.id: personagym_part(p.id) for p in personas}
    return PersonaPools(train=tuple(p for p in personas if part[p.id] == "train"),
                        held_out=tuple(p for p in personas if part[p.id] == "eval"),
                        lottery=LOTTERY, test=tuple(p for p in personas if part[p.id] == "test"))


def personas_for_split(split: str = "train") -> list[PromptPersona]:
    """Personas of a contract split.

    Training splits get the training pool plus ``none``; ``eval`` gets the held-out pool plus the
    lottery set (whose last entry is ``none``); ``test`` its own pool plus its own role set.
    """
    read_split(split, "envs.math.personas_for_split")
    pools = persona_pools()
    if split == "eval":
        return [*pools.held_out, *pools.lottery]
    if split == "test":
        return [*pools.test, *pools.test_lottery]
    return [*pools.train, NO_PERSONA]


# --- prompts and the environment ----------------------------------------------------------------


def math_messages(problem: MathProblem | str, persona: PromptPersona | None = None) -> list[dict[str, str]]:
    """The policy's prompt for a problem under a persona.

    ``"You are <description>."`` is the system message (left out without a persona); the user
    message is the question followed by the answer-format instruction.
    """
    question = problem.question if isinstance(problem, MathProblem) else str(problem)
    messages = []
    system = persona.system_prompt if persona is not None else None
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": f"{question.strip()}\n\n{INSTRUCTION}"})
    return messages


def feedback_text(problem: MathProblem, parsed: float | None, correct: bool) -> str:
    """The privileged note on an answer: the verdict, the reference answer and the worked solution."""
    if parsed is None:
        verdict = "No final number could be read from the answer."
    else:
        verdict = f"The answer's final number, {format_number(parsed)}, is {'right' if correct else 'wrong'}."
    text = f"{verdict} The correct final answer is {problem.answer}."
    if problem.solution:
        text += f"\nA worked solution:\n{clean_solution(problem.solution)}"
    return text


@functools.lru_cache(maxsize=1)
def _default_problems() -> tuple[MathProblem, ...]:
    return tuple(make_problems(DEFAULT_NUM_PROBLEMS, DEFAULT_DIFFICULTY, seed=0, split="train"))


def _as_persona(item: PromptPersona | Mapping) -> PromptPersona:
    return item if isinstance(item, PromptPersona) else PromptPersona.from_dict(item)


class PersonaMathEnv(gym.Env):
    """Solve a math word problem while playing a role given in the system prompt.

    ## Description
    Each episode is one word problem with a numeric answer, asked under an optional persona. By
    default the problems are generated arithmetic word problems at the default difficulty
    (``envs.data.math.make_problems``, training stream) and the personas are the 125 training
    PersonaGym personas; a share ``persona_none_prob`` of episodes has no persona. This is the
    PerMix-RLVR setting: a verifiable reward, with the persona varied so that accuracy stays the
    same whatever role the model is given.

    ## Observation
    Chat messages (:class:`envs.tutoring.ChatMessages`): a system message ``"You are
    <description>."`` (left out without a persona) and a user message with the question and an
    instruction to reason step by step and end with ``#### <number>``. Neither the reference
    answer nor the solution ever appears in it, and it does not change when the agent answers.

    ## Action
    The answer text, a non-empty string (:class:`envs.tutoring.ChatText`). Non-strings and blank
    strings raise ``ValueError``; text longer than ``max_action_chars`` is cut
    (``info["truncated_action"]``); lone surrogates become "?".

    ## Feedback/Reward
    The reward is 1.0 when the answer's final number (``envs.math_reward.parse_final_number``: the
    number after ``####``, else the last number) equals the reference, else 0.0; with
    ``format_bonus`` set, that amount is added to any answer written in the ``#### <number>`` form.
    ``info["feedback"]`` is a privileged note for self-distillation teachers: the verdict, the
    correct final answer and the worked solution. ``info["label"]`` is ``{"persona": persona id
    ("none" without one), "problem": problem id, "correct": bool}`` (``correct`` is None after
    ``reset``); ``info["parsed"]`` is the number read from the answer (or None), and
    ``info["answer"]`` the reference.

    ## Episode end
    ``terminated`` is True after the one answer; the registered id ``pluralgym/PersonaMath-v0``
    also sets ``max_episode_steps=1``.

    ## Arguments
    - ``problems``: ``MathProblem`` records or their dicts (default: 2,000 generated problems at
      level ``DEFAULT_DIFFICULTY``, training stream, seed 0).
    - ``personas``: ``PromptPersona`` records or their dicts (default: the training pool plus
      ``none``). An entry with id ``"none"`` is never drawn uniformly; it stands for the
      ``persona_none_prob`` share.
    - ``persona_none_prob``: probability of an episode without persona (default 0.25; 1.0 gives
      the plain RLVR setting).
    - ``format_bonus``: reward added for the ``#### <number>`` form (default 0: off).
    - ``max_action_chars``: longest answer kept (default 4000).
    - ``render_mode``: ``"ansi"`` or ``"human"``.

    ``reset`` options: ``problem`` (id or index) and ``persona`` (an id of the env's personas,
    ``"none"``, or a ``{"id", "description"}`` dict for a persona outside the pool). The problem
    index, the no-persona coin and the persona index are drawn from ``np_random`` every time, in
    that order, so fixing one leaves the others as they would have been.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(self, problems: Sequence[MathProblem | Mapping] | None = None,
                 personas: Sequence[PromptPersona | Mapping] | None = None,
                 persona_none_prob: float = DEFAULT_NONE_PROB, format_bonus: float = 0.0,
                 max_action_chars: int = MAX_ACTION_CHARS, render_mode: str | None = None) -> None:
        problems = problems if problems is not None else _default_problems()
        self.problems = [p if isinstance(p, MathProblem) else MathProblem.from_dict(p) for p in problems]
        given = [_as_persona(p) for p in (personas if personas is not None else personas_for_split("train"))]
        if not self.problems:
            raise ValueError("PersonaMathEnv needs at least one problem")
        self._problem_index = {p.id: i for i, p in enumerate(self.problems)}
        if len(self._problem_index) != len(self.problems):
            raise ValueError("problem ids must be unique")
        self.personas = [p for p in given if p.id != NONE_ID] + [NO_PERSONA]  # "none" always last
        self._persona_index = {p.id: p for p in self.personas}
        if len(self._persona_index) != len(self.personas):
            raise ValueError("persona ids must be unique")
        self._drawable = self.personas[:-1]
        if not 0.0 <= float(persona_none_prob) <= 1.0:
            raise ValueError(f"persona_none_prob must be in [0, 1], got {persona_none_prob!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if int(max_action_chars) < 1:
            raise ValueError("max_action_chars must be positive")
        self.persona_none_prob = float(persona_none_prob)
        self.format_bonus = float(format_bonus)
        self.max_action_chars = int(max_action_chars)
        self.render_mode = render_mode

        longest_question = max(len(math_messages(p)[-1]["content"]) for p in self.problems)
        longest_system = max(len(p.system_prompt or "") for p in self.personas)
        self.observation_space = ChatMessages(max(longest_question, longest_system, MAX_PERSONA_CHARS + 20, 2000))
        self.action_space = ChatText(self.max_action_chars)

        self._problem: MathProblem | None = None
        self._persona: PromptPersona = NO_PERSONA
        self._done = False
        self._correct: bool | None = None
        self._answer = ""
        self._reward = 0.0

    # -- gymnasium API --------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draws a problem and a persona; returns the prompt."""
        super().reset(seed=seed)
        options = known_options(options, _OPTION_KEYS)
        rng = self.np_random
        # every draw happens every time, in a fixed order, so an override leaves the others unchanged
        problem_i = int(rng.integers(len(self.problems)))
        no_persona = bool(rng.random() < self.persona_none_prob) or not self._drawable
        persona_i = int(rng.integers(max(len(self._drawable), 1)))
        persona = NO_PERSONA if no_persona else self._drawable[persona_i]
        if "problem" in options:
            problem_i = self._pick_problem(options["problem"])
        if "persona" in options:
            persona = self._pick_persona(options["persona"])
        self._problem, self._persona = self.problems[problem_i], persona
        self._done, self._correct, self._answer, self._reward = False, None, "", 0.0
        info = {"label": self.label, "difficulty": self._problem.difficulty, "source": self._problem.source}
        if self.render_mode == "human":
            self.render()
        return self._observation(), info

    def step(self, action: str):
        """Takes the answer; returns the unchanged prompt, the 1/0 reward and the privileged note in ``info``."""
        if self._problem is None:
            raise RuntimeError("PersonaMathEnv: call reset() before step()")
        if self._done:
            raise RuntimeError("PersonaMathEnv: the episode has ended (one answer per episode); call reset()")
        text, cut = self.check_action(action)
        problem = self._problem
        parsed = parse_final_number(text)
        correct = is_correct(text, problem.answer)
        reward = answer_reward(text, problem.answer, format_bonus=self.format_bonus)
        self._done, self._correct, self._answer, self._reward = True, correct, text, reward
        info = {"feedback": feedback_text(problem, parsed, correct), "label": self.label, "parsed": parsed,
                "answer": problem.answer, "formatted": has_final_marker(text), "truncated_action": cut}
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, True, False, info

    def render(self) -> str | None:
        """The prompt, and once answered the answer and its reward (``ansi``), or prints them (``human``)."""
        if self._problem is None:
            return None
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in self._observation()]
        if self._done:
            lines += [f"Assistant: {self._answer}", f"Reward: {self._reward:g} (answer {self._problem.answer})"]
        return rendered("\n".join(lines), self.render_mode)

    # -- state ------------------------------------------------------------------------------------

    @property
    def label(self) -> dict[str, Any]:
        """Hidden ground truth: the persona id (the focal persona), the problem id and, once answered, correctness."""
        if self._problem is None:
            raise RuntimeError("PersonaMathEnv: no episode yet; call reset() first")
        return {"persona": self._persona.id, "problem": self._problem.id, "correct": self._correct}

    @property
    def problem(self) -> MathProblem | None:
        """The current problem (privileged: it holds the reference answer)."""
        return self._problem

    @property
    def persona(self) -> PromptPersona:
        """The current persona (``NO_PERSONA`` when there is none)."""
        return self._persona

    def get_state(self) -> dict[str, Any]:
        """A JSON-compatible snapshot of everything that decides how the episode goes on.

        Keys: ``problem`` (``MathProblem.to_dict``, the reference included), ``persona``
        (``PromptPersona.to_dict``), ``done``, ``correct`` (None before the answer) and
        ``rng_state`` (``np_random.bit_generator.state``, which fixes the next episodes' draws).
        """
        if self._problem is None:
            raise RuntimeError("PersonaMathEnv.get_state: no episode yet; call reset() first")
        return {"problem": self._problem.to_dict(), "persona": self._persona.to_dict(), "done": self._done,
                "correct": self._correct, "rng_state": copy.deepcopy(self.np_random.bit_generator.state)}

    def set_state(self, state: Mapping[str, Any]) -> list[dict[str, str]]:
        """Continues the episode captured by :meth:`get_state`; returns its observation."""
        self.np_random = generator_from(state["rng_state"])
        self._problem = MathProblem.from_dict(state["problem"])
        self._persona = PromptPersona.from_dict(state["persona"])
        self._done, self._answer, self._reward = bool(state.get("done", False)), "", 0.0
        correct = state.get("correct")
        self._correct = bool(correct) if self._done and correct is not None else None
        return self._observation()

    def check_action(self, action: Any) -> tuple[str, bool]:
        """Validates an answer; returns (text to use, whether it was cut to ``max_action_chars``)."""
        return check_text_action(action, env="PersonaMathEnv", noun="answer", max_chars=self.max_action_chars)

    # -- helpers ------------------------------------------------------------------------------------

    def _pick_problem(self, value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(self.problems):
                raise ValueError(f"option 'problem': index {value} is out of range for {len(self.problems)} problems")
            return int(value)
        if isinstance(value, str) and value in self._problem_index:
            return self._problem_index[value]
        raise ValueError(f"option 'problem' must be an index or one of the env's problem ids, got {value!r}")

    def _pick_persona(self, value: Any) -> PromptPersona:
        if isinstance(value, str) and value in self._persona_index:
            return self._persona_index[value]
        if isinstance(value, (Mapping, PromptPersona)):
            persona = _as_persona(value)
            if len(persona.description) > MAX_PERSONA_CHARS:
                raise ValueError(f"option 'persona': descriptions are limited to {MAX_PERSONA_CHARS} characters")
            return persona
        raise ValueError(f"option 'persona' must be 'none', one of the env's persona ids or a "
                         f"{{'id', 'description'}} dict, got {value!r}")

    def _observation(self) -> list[dict[str, str]]:
        return math_messages(self._problem, self._persona)


class PersonaMathBatch(EnvBatch):
    """N math episodes stepped together; satisfies ``envs.tasks.base.EpisodeBatch``.

    Produces exactly what N separate :class:`PersonaMathEnv` would with the same seeds and actions
    (each episode keeps its own ``np_random``). There is no model-backed plug-in, so "batched"
    only means one call for all N.

    Args:
        num_envs: Number of episodes.
        **env_kwargs: Passed to every :class:`PersonaMathEnv` (``problems``, ``personas``,
            ``persona_none_prob``, ``format_bonus``, ``max_action_chars``, ``render_mode``).

    ``reset(seed=s)`` seeds episode i with ``s + i`` (a list gives one seed each); ``options_list``
    gives per-episode reset options. No auto-reset: every episode ends after one step.
    """

    action_noun = "answers"

    def __init__(self, num_envs: int, **env_kwargs: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        first = PersonaMathEnv(**env_kwargs)
        # the others share the first env's checked problem and persona lists
        shared = dict(env_kwargs, problems=first.problems, personas=first.personas)
        self.envs = [first] + [PersonaMathEnv(**shared) for _ in range(int(num_envs) - 1)]
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self._done = [True] * len(self.envs)

    @classmethod
    def for_split(cls, num_envs: int, split: str = "train", *, task: str = "generated", num_problems: int | None = None,
                  difficulty: int | None = None, seed: int = 0, gsm8k_max_steps: int | None = None,
                  drill_kinds: Sequence[str] = DEFAULT_DRILL_KINDS, **env_kwargs: Any) -> PersonaMathBatch:
        """A batch over one contract split's problems and personas.

        Problems come from ``envs.data.problems.problems_for_split`` (generated streams, or GSM8K train
        / test with an optional easy slice); personas from ``personas_for_split`` (training pool
        plus ``none``, or for ``eval`` the held-out pool plus the lottery set) unless ``personas``
        is given in ``env_kwargs``.
        """
        problems = problems_for_split(split, task=task, num=num_problems, difficulty=difficulty, seed=seed,
                                      gsm8k_max_steps=gsm8k_max_steps, drill_kinds=drill_kinds)
        env_kwargs.setdefault("personas", personas_for_split(split))
        return cls(num_envs, problems=problems, **env_kwargs)

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options_list: Sequence[dict[str, Any] | None] | None = None
              ) -> tuple[list[list[dict[str, str]]], list[dict[str, Any]]]:
        """Starts every episode (episode i seeded with ``seed + i``, or per-episode seeds and options)."""
        n = self.num_envs
        seeds, options_list = self._reset_arguments(seed, options_list)
        results = [env.reset(seed=s, options=o) for env, s, o in zip(self.envs, seeds, options_list)]
        self._done = [False] * n
        return [obs for obs, _ in results], [info for _, info in results]

    def step(self, actions: Sequence[str]):
        """Takes one answer per episode; returns observations, rewards, terminated, truncated, infos."""
        self._check_actions(actions)
        results = [env.step(a) for env, a in zip(self.envs, actions)]
        self._done = [True] * self.num_envs
        return ([r[0] for r in results], np.asarray([r[1] for r in results], dtype=np.float64),
                np.asarray([r[2] for r in results], dtype=bool), np.asarray([r[3] for r in results], dtype=bool),
                [r[4] for r in results])


__all__ = [
    "DEFAULT_NONE_PROB", "INSTRUCTION", "LOTTERY", "MAX_ACTION_CHARS", "NONE_ID", "NO_PERSONA",
    "PersonaMathBatch", "PersonaMathEnv", "PersonaPools", "PromptPersona", "feedback_text", "is_held_out",
    "load_personagym_personas", "math_messages", "persona_pools", "personas_for_split",
]

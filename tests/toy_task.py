"""A toy task written outside the package, as a user would add an environment.

It is the whole of what a new env needs besides one YAML (``tests/toy_configs/env/toy.yaml``):
a class that satisfies :class:`envs.tasks.base.Task` and a batch that satisfies
:class:`envs.tasks.base.EpisodeBatch`. No trainer knows its name.

The game: the user names a word; the ``loud`` persona wants it back in capitals, the ``quiet``
persona in lower case. The privileged feedback says which the reader wanted, so an OPSD teacher
that sees it knows what the policy could not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.judges.pairwise import PairwiseComparison, question_comparison
from envs.tasks.base import EpisodeRecord, EvalReport, Messages, Persona
from envs.tasks.reporting import markdown_table

WORDS = {"train": ["apple", "river", "stone", "cloud"], "router_train": ["apple", "river"],
         "router_val": ["stone", "cloud"], "eval": ["maple", "ocean"], "test": ["amber", "tiger"]}


def _score(persona: str, text: str) -> float:
    """Share of letters in the case the persona wants."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    wanted = str.isupper if persona == "loud" else str.islower
    return sum(map(wanted, letters)) / len(letters)


class ToyBatch:
    """N single-turn toy episodes; each state is a word and a persona."""

    def __init__(self, num: int, words: list[str], personas: list[str]):
        self.words, self.personas = words, personas
        self.states: list[dict[str, Any]] = [{} for _ in range(num)]

    @property
    def num_envs(self) -> int:
        return len(self.states)

    def _observation(self, state: dict[str, Any]) -> Messages:
        return [{"role": "user", "content": f"Say the word {state['word']}."}]

    def reset(self, *, seed=None, options_list=None):
        seeds = seed if isinstance(seed, Sequence) else [(seed or 0) + i for i in range(self.num_envs)]
        infos = []
        for i, s in enumerate(seeds):
            rng = np.random.default_rng(s)
            options = (options_list or [None] * self.num_envs)[i] or {}
            word = self.words[options.get("word", int(rng.integers(len(self.words))))]
            persona = options.get("persona", self.personas[int(rng.integers(len(self.personas)))])
            self.states[i] = {"word": word, "persona": persona}
            infos.append({"label": {"persona": persona}, "word": word})
        return [self._observation(s) for s in self.states], infos

    def step(self, actions):
        rewards = np.array([_score(s["persona"], a) for s, a in zip(self.states, actions)])
        infos = [{"feedback": f"The reader wanted {'CAPITALS' if s['persona'] == 'loud' else 'lower case'}.",
                  "label": {"persona": s["persona"]}} for s in self.states]
        done = np.ones(self.num_envs, dtype=bool)
        return [self._observation(s) for s in self.states], rewards, done, np.zeros_like(done), infos

    def get_states(self):
        return [dict(s) for s in self.states]

    def set_states(self, states):
        self.states = [dict(s) for s in states]
        return [self._observation(s) for s in self.states]

    def close(self) -> None:
        self.states = []


class ToyTask:
    """The trainers' view of the toy game (one head per persona)."""

    personas = [Persona("loud", "LOUD", "Answer in capital letters."),
                Persona("quiet", "QUIET", "Answer in lower case.")]
    max_turns = 1
    feedback_follows_head = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    @staticmethod
    def persona_options(persona: str) -> dict[str, Any]:
        return {"persona": persona}

    def make_batch(self, num: int, *, split: str = "train") -> ToyBatch:
        return ToyBatch(num, WORDS[split], [p.name for p in self.personas])

    def eval_options(self, contexts, *, split="eval", repeat=False):
        available = len(WORDS[split])
        if contexts is not None and contexts > available and not repeat:
            raise ValueError(f"the toy {split} split holds {available} words, {contexts} were asked for")
        names = [p.name for p in self.personas]
        count = available if contexts is None else contexts
        return [{"word": w % available, "persona": names[w % len(names)]} for w in range(count)]

    @staticmethod
    def policy_messages(observation: Messages) -> Messages:
        return [dict(m) for m in observation]

    @staticmethod
    def teacher_messages(observation: Messages, persona: Persona, feedback: str | None) -> Messages:
        note = f"You are {persona.label}: {persona.description}" + (f" {feedback}" if feedback else "")
        return [{"role": "system", "content": note}, *[dict(m) for m in observation]]

    @staticmethod
    def actions(texts: Sequence[str]) -> list[str]:
        return [t.strip() or "-" for t in texts]

    @staticmethod
    def comparison(observation, context, first, second, first_feedback="", second_feedback="") -> PairwiseComparison:
        return question_comparison(observation, first, second)

    @staticmethod
    def step_metrics(texts: Sequence[str], infos: Sequence[dict]) -> dict[str, list[float]]:
        return {"letters": [float(sum(c.isalpha() for c in t)) for t in texts]}

    def evaluate(self, rows: dict[str, list[EpisodeRecord]], *, heads, base=None, bootstrap=1000, confidence=0.95,
                 seed=0) -> EvalReport:
        means = {name: float(np.mean([sum(r.rewards) for r in records])) for name, records in rows.items()}
        table = markdown_table(["row", "reward"], [[name, f"{value:.3f}"] for name, value in means.items()])
        return EvalReport({"rows": means, "heads": list(heads)}, "\n".join(table) + "\n",
                          {f"reward/{name}": value for name, value in means.items()})

    def chat_plugins(self) -> list[Any]:
        return []

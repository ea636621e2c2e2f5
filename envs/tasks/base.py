"""The task contract: everything a trainer, evaluation, router or benchmark needs from an environment.

A *task* is the trainers' view of one environment that gives privileged feedback. Every algorithm in
this project (``algorithms.opsd``, ``.rlvr``, ``.router``, ``.benchmark`` and the rollout workers)
talks to environments only through :class:`Task` and :class:`EpisodeBatch`; none of them imports a
concrete env. Adding an environment means writing one class that satisfies :class:`Task` (see
:class:`envs.tasks.tutoring.TutoringTask` and :class:`envs.tasks.persona.PersonaTask`)
and one YAML under ``configs/env/`` that builds it; no trainer changes.

What a task provides, in the order a trainer uses it:

1. **Personas** (:attr:`Task.personas`): one head each. Their ``name`` is also the head's name, and
   every episode's hidden label carries ``label["persona"]``, the name of the persona the episode
   is about (the student's learning style in tutoring, the focal facet in the persona critic), so
   matched/mismatched metrics and router targets are computed the same way for every task.
2. **Live episodes** (:meth:`Task.make_batch`): an :class:`EpisodeBatch` of N episodes stepped
   together, whose states are plain JSON-compatible data (:meth:`EpisodeBatch.get_states`), so they
   can be checkpointed as JSON and sent to rollout workers in other processes.
3. **The policy's prompt** (:meth:`Task.policy_messages`): chat messages built from an observation
   alone. The same prompt serves every head, MT-OPSD, the base model and inference.
4. **The privileged prompt** (:meth:`Task.teacher_messages`): what the frozen teacher sees. It keeps
   the policy's conversation (every user and assistant message, in order) and differs only in its
   system text, which names the persona and holds the feedback (the student's reply, the critique).
5. **Actions** (:meth:`Task.actions`): sampled text turned into valid env actions; and what a
   pairwise judge may see when two candidates from one prefix are compared (:meth:`Task.comparison`).
6. **Per-step figures** (:meth:`Task.step_metrics`): per-turn values the trainer logs per persona.
7. **Evaluation** (:meth:`Task.eval_options`, :meth:`Task.evaluate`): the held-out episodes, and
   the task's own report of rows of :class:`EpisodeRecord` (one row per head,
   the equal blend, the base model, a router...).
8. **Chat plug-ins** (:meth:`Task.chat_plugins`): the plug-ins that may talk to a chat model; the
   trainer checks their servers before its first step and logs their traffic (``chat/`` metrics).

Splits are named ``train`` (the trainer's episodes), ``router_train`` and ``router_val`` (router
learning), ``eval`` (tuning: held-out evaluation, learning curves, sweeps) and ``test`` (headline
numbers only); a task may reuse contexts across ``train`` and the router splits, never with ``eval``
or ``test``, and ``eval`` and ``test`` share nothing. A task reads a split through
:func:`envs.data.splits.read_split`, so a test can watch which splits a run reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from envs.data.splits import SPLITS

if TYPE_CHECKING:
    from envs.judges.pairwise import PairwiseComparison

Messages = list[dict[str, str]]
__all__ = ["SPLITS", "EpisodeBatch", "EpisodeRecord", "EvalReport", "Messages", "Persona", "Task", "personas_from"]


@dataclass(frozen=True)
class Persona:
    """One persona or teaching style, trained into its own head.

    Attributes:
        name: Short identifier, also the head name and the value of ``label["persona"]``.
        label: How prompts name it (e.g. ``"INTERACTIVE"``, ``"Culinary"``).
        description: What it stands for, in a sentence or two (may be empty when the privileged
            prompt takes the persona's text from the observation instead).
    """

    name: str
    label: str
    description: str = ""


def personas_from(items: Sequence[dict[str, str] | Persona]) -> list[Persona]:
    """Personas from config dicts, checked for distinct, non-empty names."""
    personas = [p if isinstance(p, Persona) else Persona(**p) for p in items]
    names = [p.name for p in personas]
    if not personas or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"A task needs personas with distinct, non-empty names, got {names}.")
    return personas


@runtime_checkable
class EpisodeBatch(Protocol):
    """N live episodes stepped together (one batched call to each model-backed plug-in per step).

    Observations are chat messages; actions are strings. ``reset`` seeds episode ``i`` with
    ``seed + i`` (or takes one seed per episode) and ``options_list[i]`` fixes any of its draws.
    """

    @property
    def num_envs(self) -> int:
        """Number of episodes."""
        ...

    def reset(self, *, seed: int | Sequence[int] | None = None,
              options_list: Sequence[dict[str, Any] | None] | None = None) -> tuple[list[Any], list[dict]]:
        """Starts every episode; returns the observations and infos (``info["label"]`` included)."""
        ...

    def step(self, actions: Sequence[str]) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """One action per episode; returns observations, rewards, terminated, truncated, infos.

        ``infos[i]["feedback"]`` is the privileged feedback and ``infos[i]["label"]`` the hidden
        label; neither is ever part of an observation.
        """
        ...

    def get_states(self) -> list[dict[str, Any]]:
        """One JSON-compatible state per episode: everything that decides how it goes on."""
        ...

    def set_states(self, states: Sequence[dict[str, Any]]) -> list[Any]:
        """Continues the episodes captured by :meth:`get_states`; returns their observations."""
        ...

    def close(self) -> None:
        """Releases whatever the episodes hold."""
        ...


@dataclass
class EpisodeRecord:
    """One episode played by one driver (a head, a mixture, a router, a model).

    Attributes:
        driver: Name of what chose the turns (the evaluation row).
        options: The reset options that fixed the episode (context and label).
        label: The hidden label (``label["persona"]`` included), as of the last turn.
        start: The reset info (the episode's context, e.g. its topic).
        observations: The observation before each generated turn (the prefixes a router reads).
        actions: The generated turns, as sent to the env.
        feedback: The privileged feedback after each turn.
        rewards: The env reward of each turn.
        infos: The step info of each turn.
        final: The observation after the last turn.
        weights: Head weights used at each turn, for drivers that mix heads.
        tokens: Generated tokens of each turn (EOS included).
        token_limit: The ``max_new_tokens`` the turns were generated with.
        states: The episode's state before each turn (lets a caller replay a prefix with other
            candidates); not written to reports.
        features: The policy backbone's final state at the last token of each turn's prompt, kept
            from the turn's prefill when asked for (the router's ``last_token`` input); not written
            to reports.
    """

    driver: str
    options: dict[str, Any]
    label: dict[str, Any]
    start: dict[str, Any] = field(default_factory=dict)
    observations: list[Any] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    final: Any = None
    weights: list[list[float]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    token_limit: int | None = None
    states: list[dict] = field(default_factory=list)
    features: list[list[float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record without its replay states and features, as JSON-compatible data."""
        return {k: v for k, v in self.__dict__.items() if k not in ("states", "features")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeRecord:
        """The record :meth:`to_json` wrote (without replay states)."""
        return cls(**data)


@dataclass
class EvalReport:
    """A task's report on evaluation rows.

    Attributes:
        metrics: JSON-compatible results (written to ``eval.json`` / ``benchmark.json``).
        markdown: Tables for people (``eval.md``).
        scalars: Flat ``name -> value`` figures for TensorBoard (logged under ``eval/``).
        plot: Draws the report's figure into the given PNG path (None: no figure).
    """

    metrics: dict[str, Any]
    markdown: str
    scalars: dict[str, float] = field(default_factory=dict)
    plot: Callable[[Path], None] | None = None


@runtime_checkable
class Task(Protocol):
    """What every algorithm needs from an environment (see the module docstring).

    Attributes:
        personas: The personas, one head each; ``label["persona"]`` names one of them.
        max_turns: Turns per episode (1 for single-turn environments).
        feedback_follows_head: True when the feedback is about a persona the trainer picks (the
            critic critiques the head's own facet), so trainers pin each episode's persona to its
            head's with :meth:`persona_options`; False when the persona label is the environment's
            hidden state, drawn independently of the head (the tutoring student's learning style).

    A task may also define ``turn_checks(observations, texts, labels) -> {name: per-turn values}``:
    figures of single turns that its reward never computes (``benchmarks/feedback_target.py``
    reports them when present). It is optional, so it is not part of this protocol.
    """

    personas: Sequence[Persona]
    max_turns: int
    feedback_follows_head: bool

    def persona_options(self, persona: str) -> dict[str, Any]:
        """Reset options that make an episode's ``label["persona"]`` equal ``persona``."""
        ...

    def make_batch(self, num: int, *, split: str = "train") -> EpisodeBatch:
        """A batch of ``num`` live episodes drawn from ``split``."""
        ...

    def eval_options(self, contexts: int | None, *, split: str = "eval", repeat: bool = False) -> list[dict[str, Any]]:
        """Reset options of held-out episodes, the same on every call.

        ``contexts`` distinct contexts of ``split`` (None: all of them), each paired with every label
        it is run with when the label changes the episode (tutoring: both student types), else each
        played once with the labels cycling (the persona critic, whose response does not depend on
        its focal facet); with at least as many contexts as personas every label appears. More
        contexts than the split holds raise ``ValueError`` unless ``repeat`` (then they cycle: for
        training data such as the router's prefixes, never for an evaluation).
        """
        ...

    def policy_messages(self, observation: Any) -> Messages:
        """The policy's chat prompt for an observation (identical for every head)."""
        ...

    def teacher_messages(self, observation: Any, persona: Persona, feedback: str | None) -> Messages:
        """The privileged prompt: the policy's conversation, its system text naming ``persona`` and ``feedback``.

        ``feedback=None`` (and a task built with ``teacher_feedback=false``) gives the same prompt
        without the feedback: the comparison that shows what the feedback adds.
        """
        ...

    def actions(self, texts: Sequence[str]) -> list[str]:
        """Sampled texts as valid env actions (e.g. an empty turn replaced by a placeholder)."""
        ...

    def comparison(self, observation: Any, context: dict[str, Any], first: str, second: str,
                   first_feedback: str = "", second_feedback: str = "") -> PairwiseComparison:
        """What a pairwise judge sees when two candidates written from the same prefix are compared.

        The router's pairwise labels and the benchmark's win rates use a judge that must not know
        the hidden persona. Tutoring shows the dialogue and the student's answers to both
        candidates; the persona critic shows only the user's request and the two responses, never
        the persona scaffold or the critiques.
        """
        ...

    def step_metrics(self, texts: Sequence[str], infos: Sequence[dict]) -> dict[str, list[float]]:
        """Per-turn figures the trainer averages per persona and logs under ``env/`` (may be empty)."""
        ...

    def evaluate(self, rows: dict[str, list[EpisodeRecord]], *, heads: Sequence[str],
                 base: str | None = None, bootstrap: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> EvalReport:
        """The task's report on evaluation rows.

        Args:
            rows: Row name -> the records its driver produced on :meth:`eval_options` episodes.
                The names are display names (the evaluation uses ``head_<persona>``, ``blend``,
                ``base``; the benchmark its row labels), so a task reads roles from ``heads`` and
                ``base``, never from a name.
            heads: The row names that are the policy's heads, in persona order.
            base: The row name of the untrained base model, when there is one.
            bootstrap: Resamples behind every interval (they resample the task's independent
                units: topics, requests or questions).
            confidence: Coverage of the intervals.
            seed: Seed of the resampling, so a report is reproducible.
        """
        ...

    def chat_plugins(self) -> list[Any]:
        """The task's plug-ins (students, judges, critics) that may hold a chat client.

        Rule-based ones may be listed too: :func:`envs.chat.chat_counters` and
        :func:`envs.chat.check_servers` skip plug-ins without a client.
        """
        ...


@runtime_checkable
class PersonaPool(Protocol):
    """An optional capability: a task whose prompts can be posed under a persona drawn from a pool.

    RLVR and PerMix-RLVR mix such personas into their training prompts (``algorithm.persona_none_prob``
    below 1); a trainer checks ``isinstance(task, PersonaPool)`` rather than probing attributes.
    """

    def persona_pool(self, split: str = "train") -> list[str]:
        """The persona ids of a split, ``none`` (no persona) included."""
        ...

    def persona_options(self, persona: str) -> dict[str, Any]:
        """Reset options that pose an episode under ``persona`` (``none``: no persona)."""
        ...

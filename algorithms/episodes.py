"""Playing episodes with a policy: the one place where sampled text becomes env steps.

:func:`take_turn` generates one turn for every live episode of a batch (with a head, per-episode
head weights, the equal blend or a plain model), turns the texts into actions and steps the envs.
Rollout workers call it once per request; :func:`play_episodes` calls it turn after turn to drive
whole held-out episodes for evaluations, router data and benchmarks, with any way of choosing the
head (fixed, or a function of the observations such as a router).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents import generate
from agents.generation import GenerationOutput
from agents.prefix_cache import PrefixCache
from algorithms.seeds import turn_seed
from envs.tasks.base import EpisodeBatch, EpisodeRecord, Task

Selection = dict[str, Any]
Selector = Callable[[list[Any], int], Selection]


@dataclass
class Turn:
    """One turn taken in every episode of a batch.

    Attributes:
        generation: The sampled tokens, log-probabilities and texts.
        actions: The texts as env actions.
        observations: The observations after the turn.
        rewards: ``(B,)`` rewards.
        terminated: ``(B,)`` whether each episode really ended.
        truncated: ``(B,)`` whether each episode hit its time limit.
        infos: The step infos (``feedback``, ``label``, ...).
        gen_s: Seconds spent sampling.
        env_s: Seconds spent in the envs (their students, critics and judges).
    """

    generation: GenerationOutput
    actions: list[str]
    observations: list[Any]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict]
    gen_s: float = 0.0
    env_s: float = 0.0


@torch.no_grad()
def take_turn(policy, tokenizer, task: Task, batch: EpisodeBatch, observations: Sequence[Any], selection: Selection,
              *, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int | None = None,
              batch_size: int | None = None, prompt_features: bool = False,
              prefix_cache: PrefixCache | None = None) -> Turn:
    """Samples one turn per episode from the observations and steps the episodes with it.

    Args:
        policy: A MultiHeadPolicy, or a plain causal LM with ``selection={}``.
        tokenizer: Its tokenizer.
        task: The task (prompts and actions).
        batch: The live episodes the observations belong to.
        observations: One observation per episode.
        selection: ``generate`` keyword arguments (``{"head": 1}``, a head per row ``{"head": (B,)}``,
            a mixture per row ``{"weights": (B, K)}``, ``{}``).
        max_new_tokens: Length limit of a turn.
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus threshold.
        seed: Seeds the sampling (without touching the global random state).
        batch_size: Prompts per ``generate`` call (None: all at once).
        prompt_features: Keep each prompt's last-token backbone state from the prefill
            (``turn.generation.prompt_features``).
        prefix_cache: Keys and values of the batch's previous turns (:mod:`agents.prefix_cache`), read
            and updated: only the new part of each dialogue is run through the model.
    """
    start = time.perf_counter()
    was_training = policy.training
    policy.eval()
    generation = generate(policy, tokenizer, [task.policy_messages(o) for o in observations],
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          batch_size=batch_size, prompt_features=prompt_features, prefix_cache=prefix_cache,
                          **selection)
    policy.train(was_training)
    actions = task.actions(generation.texts)
    gen_s, start = time.perf_counter() - start, time.perf_counter()
    observations, rewards, terminated, truncated, infos = batch.step(actions)
    return Turn(generation, actions, list(observations), np.asarray(rewards, dtype=np.float64),
                np.asarray(terminated), np.asarray(truncated), list(infos), gen_s, time.perf_counter() - start)


@torch.no_grad()
def play_episodes(policy, tokenizer, task: Task, selector: Selector | Selection, options: Sequence[dict[str, Any]],
                  *, driver: str, turns: int, max_new_tokens: int, temperature: float, seed: int,
                  split: str = "eval", top_p: float = 1.0, batch_size: int | None = None,
                  keep_states: bool = False, keep_features: bool = False,
                  reuse_kv: bool = False) -> list[EpisodeRecord]:
    """Plays one episode per reset option for ``turns`` turns (fewer when every episode has ended).

    Args:
        policy: A MultiHeadPolicy (or a plain causal LM with ``selector={}``).
        tokenizer: Its tokenizer.
        task: The task.
        selector: Fixed ``generate`` keyword arguments, or a function ``(observations, turn) ->
            kwargs`` called before every turn (a router). A selector with an ``observe(infos,
            rewards)`` method is shown each turn's outcome (an online router).
        options: One reset option per episode (``task.eval_options(...)``).
        driver: Name recorded in every record.
        turns: Turns to generate (capped by ``task.max_turns``).
        max_new_tokens: Length limit of a turn.
        temperature: Sampling temperature.
        seed: Seeds the episodes' openings (identical for every driver) and the sampling.
        split: Which contexts the batch draws from.
        top_p: Nucleus threshold.
        batch_size: Prompts per ``generate`` call.
        keep_states: Also record each episode's state before every turn.
        keep_features: Also record the backbone's last-token state of every turn's prompt, taken
            from the turn's prefill (``record.features``; the router's input at no extra cost).
        reuse_kv: Keep each episode's keys and values from turn to turn, so a turn's prefill runs
            only over what is new in its dialogue (:mod:`agents.prefix_cache`). The logits match a
            full prefill's up to rounding, so a near-tie can sample another token than without it.
            Turns decoded by a ``decoder`` (Persona-judge, reranking) run their own loop and are
            prefilled whole.

    Returns:
        One record per option, in order.
    """
    batch = task.make_batch(len(options), split=split)
    observations, infos = batch.reset(seed=seed, options_list=list(options))
    records = [EpisodeRecord(driver, dict(o), dict(info["label"]), dict(info), token_limit=max_new_tokens)
               for o, info in zip(options, infos)]
    active = np.ones(len(records), dtype=bool)
    prefix_cache = PrefixCache(len(records)) if reuse_kv else None
    for turn in tqdm(range(min(turns, task.max_turns)), desc=driver, unit="turn", leave=False):
        if not active.all():  # single-turn envs end after one step; others never end early here
            break
        selection = selector(observations, turn) if callable(selector) else dict(selector)
        weights = selection.get("weights")
        states = batch.get_states() if keep_states else None
        for i, record in enumerate(records):
            record.observations.append(observations[i])
            if states is not None:
                record.states.append(states[i])
            if torch.is_tensor(weights) and weights.dim() == 2:
                record.weights.append(weights[i].tolist())
        step = take_turn(policy, tokenizer, task, batch, observations, selection, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, seed=turn_seed(seed, turn), batch_size=batch_size,
                         prompt_features=keep_features,
                         prefix_cache=None if "decoder" in selection else prefix_cache)
        if hasattr(selector, "observe"):
            selector.observe(step.infos, step.rewards)
        lengths = step.generation.completion_mask.sum(1).tolist()
        for i, record in enumerate(records):
            record.actions.append(step.actions[i])
            record.tokens.append(int(lengths[i]))
            record.feedback.append(step.infos[i]["feedback"])
            record.rewards.append(float(step.rewards[i]))
            record.infos.append(step.infos[i])
            if keep_features:
                record.features.append(step.generation.prompt_features[i].tolist())
            if "label" in step.infos[i]:  # a label can grow once the episode is played (e.g. ``correct``)
                record.label = dict(step.infos[i]["label"])
        observations = step.observations
        active &= ~(step.terminated | step.truncated)
    for record, observation in zip(records, observations):
        record.final = observation
    batch.close()
    return records

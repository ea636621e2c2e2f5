"""The router's data: episode prefixes played by fixed heads, and every head's candidate from each prefix.

Written against the task contract only (:mod:`envs.tasks.base`): the label that supervises a
router is ``label["persona"]``, the prefixes are observations, candidates are scored by replaying
the episode's state with each candidate turn, so the environment's own feedback and reward (the
student's reply and the satisfaction judge in tutoring) judge them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from agents import MultiHeadPolicy, Router, RouterFeatures, generate
from agents.router import DEFAULT_POOLING
from algorithms.episodes import play_episodes
from envs.judges.pairwise import PairwiseJudge
from envs.tasks.base import Task


@dataclass
class PrefixExample:
    """One episode prefix the router learns from.

    Attributes:
        observation: The observation before the next turn (the only thing the router reads).
        persona: ``label["persona"]``, the hidden ground truth (supervision only, never an input).
        context: The episode's reset info (its topic, request...).
        episode: Index of the episode it comes from.
        turn: Index of the generated turn that follows (0: the first one).
        driver: Name of the head that drove the episode; None for an opening (:func:`collect_openings`),
            which no head has written in yet.
        matched: Whether that head is the persona's own (False for an opening).
        state: The episode's state at the prefix (to replay it with other candidates).
        head_scores: The env reward of each head's candidate turn (with candidates).
        blend_score: The env reward of the equal blend's candidate.
        deltas: Judged preference of each head's candidate over the blend's.
        candidates: The candidate turns: one per head, then the blend's.
        feedback: The env's feedback on each candidate, in the same order.
        feature: The policy backbone's last-token state of the observation's prompt, kept while the
            rollout prefilled it (the router's ``last_token`` input, so it needs no second forward
            pass); None where it was not kept (openings, reused prefixes, other poolings).
    """

    observation: Any
    persona: str
    context: dict[str, Any]
    episode: int
    turn: int
    driver: str | None
    matched: bool
    state: dict[str, Any]
    head_scores: list[float] | None = None
    blend_score: float | None = None
    deltas: list[float] | None = None
    candidates: list[str] | None = None
    feedback: list[str] | None = None
    feature: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The example without its replay state and feature, as JSON-compatible data."""
        return {k: v for k, v in self.__dict__.items() if k not in ("state", "feature")}

    def to_record(self) -> dict[str, Any]:
        """Every field, the replay state included (JSON-compatible): what a resumable run keeps."""
        return dict(self.__dict__)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PrefixExample:
        """The example :meth:`to_record` wrote."""
        return cls(**record)


CANDIDATE_FIELDS = ("candidates", "feedback", "head_scores", "blend_score", "deltas")  # set by score_candidates


def load_prefixes(run: str | Path, *, policy: str | Path, needs_candidates: bool
                  ) -> tuple[list[PrefixExample], list[PrefixExample]]:
    """The train and validation prefixes of the episodes an earlier router run played (its ``data.jsonl``).

    Reusing them skips playing the episodes (most of a router run's time), e.g. to fit a router on
    other features or settings. The replay states are not saved, so no new candidates can be
    scored: a method that needs candidates needs a run that wrote them.

    Args:
        run: The earlier router run folder (``data.jsonl`` and ``summary.json``).
        policy: This run's ``policy=``; it must be the one that wrote the prefixes.
        needs_candidates: Whether this run's method reads candidate scores.

    Raises:
        ValueError: If the folder holds no saved prefixes, they came from another policy, or they
            lack the candidates the method needs.
    """
    run = Path(run)
    data, summary = run / "data.jsonl", run / "summary.json"
    if not data.is_file() or not summary.is_file():
        raise ValueError(f"prefixes={run} is not a finished router run folder (no data.jsonl and summary.json); "
                         "pass the folder of an earlier `python -m algorithms.router` run.")
    wrote = json.loads(summary.read_text()).get("policy")
    if wrote is None or Path(wrote).resolve() != Path(policy).resolve():
        raise ValueError(f"prefixes={run} was collected with policy={wrote}, not policy={policy}: its prefixes "
                         "and labels come from that policy's heads. Reuse it with the same policy=, or leave "
                         "prefixes= out to collect new ones.")
    split: dict[str, list[PrefixExample]] = {"train": [], "val": []}
    with data.open() as f:
        for line in f:
            row = json.loads(line)
            if row.get("driver") is not None:  # openings are not reused: each run makes its own
                split[row.pop("split")].append(PrefixExample(**row, state={}))
    if needs_candidates and any(e.deltas is None for e in split["train"] + split["val"]):
        raise ValueError(f"prefixes={run} holds no candidate scores (it was a router.method=matched run); "
                         "this router.method needs them: reuse a pairwise, hedge or micro run, or leave "
                         "prefixes= out.")
    return split["train"], split["val"]


def matched_head(policy_or_names, persona: str) -> int:
    """Index of the head named after ``persona`` (the heads of a MAH policy are named after the personas)."""
    names = list(getattr(policy_or_names, "head_names", policy_or_names))
    if persona not in names:
        raise ValueError(f"No head is named after persona '{persona}' (heads: {names}); router supervision "
                         "needs a MAH policy whose head names are the persona names.")
    return names.index(persona)


def _drivers(personas: Sequence[str], names: Sequence[str], matched_fraction: float) -> tuple[list[int], list[bool]]:
    """One driving head per episode: the matched head for ``matched_fraction`` of each persona's episodes."""
    drivers, matched, seen = [], [], {}
    for persona in personas:
        own, j = matched_head(names, persona), seen.get(persona, 0)
        others = [d for d in range(len(names)) if d != own]
        is_matched = not others or int((j + 1) * matched_fraction) > int(j * matched_fraction)  # spread evenly
        drivers.append(own if is_matched else others[j % len(others)])
        matched.append(is_matched)
        seen[persona] = j + 1
    return drivers, matched


@torch.no_grad()
def collect_prefixes(policy: MultiHeadPolicy, tokenizer, task: Task, data: Any, *, split: str, episodes: int,
                     seed: int, start: int = 0, stop: int | None = None,
                     keep_features: bool = False) -> list[PrefixExample]:
    """Plays episodes ``start`` to ``stop`` of ``episodes`` of ``split``, each driven by one fixed head.

    The ``episodes`` cover every persona label equally (``task.eval_options`` of the split); within
    each label, ``data.matched_fraction`` of them are driven by the matched head and the rest by
    another head, so the prefixes show both engaged and disengaged feedback. Episodes last
    ``data.turns`` turns or the env's own limit, whichever is smaller (one for the persona critic).
    Episode ``i`` is reset with ``seed + i`` whichever part is played, so a run can play its
    episodes in parts (units it keeps as they finish) and get the same openings and labels.

    Returns:
        Every prefix of the played episodes (episode-major within each turn); ``episode`` is the
        index among all ``episodes``.
    """
    options = _options(task, split, episodes)
    personas = [info["label"]["persona"] for info in _reset(task, options, split, seed)[1]]
    names = policy.head_names
    drivers, matched = _drivers(personas, names, data.matched_fraction)
    stop = episodes if stop is None else min(stop, episodes)
    if start >= stop:
        return []
    heads = torch.tensor(drivers[start:stop])  # (n,): each episode played by its driver head
    records = play_episodes(policy, tokenizer, task, {"head": heads}, options[start:stop], driver="router-data",
                            turns=min(data.turns, task.max_turns), max_new_tokens=data.max_new_tokens,
                            temperature=data.temperature,
                            seed=seed + start, split=split, batch_size=data.gen_batch_size, keep_states=True,
                            keep_features=keep_features, reuse_kv=data.reuse_kv)
    return [PrefixExample(observation=r.observations[t], persona=r.label["persona"], context=r.start,
                          episode=start + i, turn=t, driver=names[drivers[start + i]], matched=matched[start + i],
                          state=r.states[t], feature=r.features[t] if keep_features else None)
            for t in range(len(records[0].observations)) for i, r in enumerate(records)]


@dataclass
class PrefixWorker:
    """What playing the router's episodes needs: the frozen policy, its tokenizer, the task, the data settings."""

    policy: MultiHeadPolicy
    tokenizer: Any
    task: Task
    data: Any


def prefix_unit(worker: PrefixWorker, **kwargs: Any) -> list[dict[str, Any]]:
    """One unit of the router's episodes (:func:`collect_prefixes` with ``kwargs``), as journal records."""
    return [e.to_record() for e in collect_prefixes(worker.policy, worker.tokenizer, worker.task, worker.data,
                                                    **kwargs)]


def collect_openings(task: Task, *, split: str, episodes: int, seed: int) -> list[PrefixExample]:
    """The first observation of ``episodes`` freshly reset episodes of ``split``, as labelled prefixes.

    Nothing is generated, so these cost only a reset each: cheap extra data for the first turn,
    where the router has the least to go on (in tutoring: the seed turn and the student's reaction
    to it). The options cover every persona label equally, as in :func:`collect_prefixes`.
    """
    if episodes < 1:
        return []
    observations, infos, states = _reset(task, _options(task, split, episodes), split, seed)
    return [PrefixExample(observation=o, persona=info["label"]["persona"], context=dict(info), episode=i, turn=0,
                          driver=None, matched=False, state=state)
            for i, (o, info, state) in enumerate(zip(observations, infos, states))]


def _options(task: Task, split: str, episodes: int) -> list[dict[str, Any]]:
    """Reset options of ``episodes`` episodes of ``split`` that cover every persona label equally."""
    # eval_options(n) gives at least n episodes whether the task pairs each context with every
    # label (tutoring) or plays each once with the labels cycling (persona critic); keep the first n
    return task.eval_options(max(1, episodes), split=split, repeat=True)[:episodes]


def _reset(task: Task, options: Sequence[dict], split: str, seed: int) -> tuple[list[Any], list[dict], list[dict]]:
    """Resets one episode per option (the labels are in the infos: options use the env's own keys).

    Returns:
        The observations, infos and states of the fresh episodes.
    """
    batch = task.make_batch(len(options), split=split)
    observations, infos = batch.reset(seed=seed, options_list=list(options))
    states = batch.get_states()
    batch.close()
    return observations, infos, states


@torch.no_grad()
def score_candidates(policy: MultiHeadPolicy, tokenizer, task: Task, examples: Sequence[PrefixExample],
                     judge: PairwiseJudge, data: Any, *, split: str, seed: int) -> None:
    """Fills ``candidates``, ``feedback``, ``head_scores``, ``blend_score`` and ``deltas`` in place.

    From each prefix every head and the equal blend write one turn. Each candidate is sent to a copy
    of the episode restored from the prefix's state (the same draws for every candidate), so the
    environment's feedback and reward score it; ``judge`` then compares each head's candidate with
    the blend's.
    """
    if not examples:
        return
    prompts = [task.policy_messages(e.observation) for e in examples]
    selections = [{"head": d} for d in range(policy.num_heads)] + [{}]  # the heads, then the equal blend
    batch = task.make_batch(len(examples), split=split)
    texts, feedback, rewards = [], [], []
    for s, selection in enumerate(tqdm(selections, desc="router candidates", unit="writer", leave=False)):
        out = generate(policy, tokenizer, prompts, max_new_tokens=data.max_new_tokens, temperature=data.temperature,
                       seed=seed * 104729 + s, batch_size=data.gen_batch_size, **selection)
        actions = task.actions(out.texts)
        batch.set_states([e.state for e in examples])
        _, reward, _, _, infos = batch.step(actions)
        texts.append(actions)
        feedback.append([info["feedback"] for info in infos])
        rewards.append([float(r) for r in reward])
    batch.close()
    blend = len(selections) - 1
    comparisons = [task.comparison(e.observation, e.context, texts[d][i], texts[blend][i], feedback[d][i],
                                   feedback[blend][i])
                   for d in range(blend) for i, e in enumerate(examples)]
    deltas = judge.compare_batch(comparisons)
    n = len(examples)
    for i, e in enumerate(examples):
        e.candidates = [texts[s][i] for s in range(len(selections))]
        e.feedback = [feedback[s][i] for s in range(len(selections))]
        e.head_scores = [rewards[d][i] for d in range(blend)]
        e.blend_score = rewards[blend][i]
        e.deltas = [float(deltas[d * n + i]) for d in range(blend)]


def prefix_features(features: RouterFeatures, task: Task, observations: Sequence[Any]) -> torch.Tensor:
    """``(N, H)`` router inputs: the frozen backbone's features of the policy's prompts; nothing else is read."""
    return features([task.policy_messages(o) for o in observations])


@torch.no_grad()
def route(router: Router, features: RouterFeatures, task: Task, observations: Sequence[Any]):
    """The router's :class:`agents.RouterOutput` for observations (in eval mode)."""
    pooling = router.hparams.get("pooling", DEFAULT_POOLING)
    if features.pooling != pooling:
        raise ValueError(f"This router was trained on {pooling!r} features, not {features.pooling!r}; build "
                         f"RouterFeatures(..., pooling={pooling!r}) for it.")
    router.eval()
    return router(prefix_features(features, task, observations).to(next(router.parameters()).device))

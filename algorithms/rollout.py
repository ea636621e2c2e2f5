"""Rollout workers: sample turns and step the environments, in-process or on Ray.

A :class:`RolloutWorker` is a plain class. It holds a copy of the policy (or shares the learner's)
and the task (its environments and their plug-ins: students, critics, judges). Given a
:class:`RolloutRequest` it takes one turn in each requested episode and returns a
:class:`RolloutResult`: the sampled tokens with their log-probabilities, the privileged feedback,
the rewards, the hidden labels and the episode states to continue from.

A request is a pure function of its episode states, its seeds and the weight version, so it can
be run again anywhere with the same outcome. That is what makes the Ray pool fault tolerant: when
a worker dies mid-rollout, Ray restarts the actor and the pool sends it exactly the lost request.

Two pools run requests:

- :class:`LocalRolloutPool` runs them in the learner's process with the learner's own policy;
- :class:`RayRolloutPool` runs them in Ray actors (``ray.enabled=true``). After every update the
  learner publishes its trainable weights once (one versioned object in the object store); a
  worker pulls a version the first time a request needs it.

Results come back as :class:`Submission` handles, so the trainer can collect the next batch while it
learns on the current one (``ray.max_staleness=1``).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from agents import MultiHeadPolicy
from agents.generation import GenerationOutput
from agents.models import AgentConfig, resolve_device
from algorithms.components import LoRASettings, apply_lora, build_policy, task_from_node
from algorithms.episodes import take_turn
from algorithms.ray_pool import Call, RayActorPool, RayConfig
from envs.chat import chat_counters

Messages = list[dict[str, str]]


@dataclass
class RolloutRequest:
    """One turn in each of a few episodes, for one worker.

    Attributes:
        step: The trainer step this turn feeds.
        shard: Index of this request among the step's requests.
        uids: A stable id per episode (unique over the run).
        personas: Persona index per episode (whose privileged prompt the learner will build).
        heads: Head index that samples each episode's turn.
        version: Weight version to sample with (the number of updates behind those weights).
        gen_seed: Seed of the sampling.
        turn: Which turn of its episode this is (1-based), the same for every row.
        states: Episode states to continue (``None`` when ``reset_seeds`` is given).
        reset_seeds: Seeds to start fresh episodes with, one per episode.
        reset_options: Reset options of those fresh episodes (None: every draw left to the seed).
    """

    step: int
    shard: int
    uids: list[str]
    personas: list[int]
    heads: list[int]
    version: int
    gen_seed: int
    turn: int = 1
    states: list[dict] | None = None
    reset_seeds: list[int] | None = None
    reset_options: list[dict] | None = None

    def __post_init__(self):
        n = len(self.uids)
        if len(self.personas) != n or len(self.heads) != n:
            raise ValueError(f"request has {n} uids but {len(self.personas)} personas and {len(self.heads)} heads")
        if (self.states is None) == (self.reset_seeds is None):
            raise ValueError("a rollout request needs either episode states or reset seeds, not both")
        if len(self.states if self.states is not None else self.reset_seeds) != n:
            raise ValueError(f"request has {n} uids but a different number of states or seeds")


@dataclass
class RolloutResult:
    """What one request produced (tensors on the CPU).

    Attributes:
        step, shard, version, uids, personas, heads: Copied from the request.
        prompts: ``B`` observations the turns answer.
        generation: The policy's prompts and sampled turns: tokens, masks, log-probabilities under
            each row's head, and the decoded texts.
        actions: ``B`` turns as sent to the env (the texts made valid actions by the task).
        feedback: ``B`` student replies (the privileged signal).
        rewards: ``B`` satisfaction rewards.
        labels: ``B`` hidden labels (``label["persona"]`` and the task's own keys).
        infos: ``B`` step infos.
        turn_index: ``B`` turn number of each sampled turn within its episode (1-based).
        states: ``B`` episode states after the turn, to continue from.
        gen_s: Seconds spent sampling; env_s: seconds spent in the env (students and judge).
        worker: Name of the worker that ran it (with its process id).
        chat: Traffic of the task's chat clients during the turn (``requests``, ``retries``,
            ``failures``, ``fallbacks``, ...; empty when no plug-in talks to a chat model).
    """

    step: int
    shard: int
    version: int
    uids: list[str]
    personas: list[int]
    heads: list[int]
    prompts: list[Messages]
    generation: GenerationOutput
    actions: list[str]
    feedback: list[str]
    rewards: list[float]
    labels: list[dict[str, Any]]
    infos: list[dict[str, Any]]
    turn_index: list[int]
    states: list[dict]
    gen_s: float = 0.0
    env_s: float = 0.0
    worker: str = ""
    chat: dict[str, int] = field(default_factory=dict)

    @property
    def turn_ids(self) -> list[str]:
        """One id per sampled turn, ``<episode uid>@<turn>``: unique over a run."""
        return [f"{uid}@{turn}" for uid, turn in zip(self.uids, self.turn_index)]


def merge_results(results: Sequence[RolloutResult], pad_id: int) -> RolloutResult:
    """Concatenates the results of one step in shard order (prompts re-padded on the left).

    Args:
        results: The step's results, in any order.
        pad_id: The tokenizer's pad token id.

    Returns:
        One result whose rows follow the shards' order; ``gen_s`` and ``env_s`` are summed
        (worker-seconds), ``version`` is the oldest one.
    """
    if not results:
        raise ValueError("merge_results needs at least one result")
    results = sorted(results, key=lambda r: r.shard)
    if len(results) == 1:
        return results[0]

    def cat(name):
        return [x for r in results for x in getattr(r, name)]

    return RolloutResult(
        step=results[0].step, shard=0, version=min(r.version for r in results),
        uids=cat("uids"), personas=cat("personas"), heads=cat("heads"), prompts=cat("prompts"),
        generation=GenerationOutput.concat([r.generation for r in results], pad_id),
        actions=cat("actions"), feedback=cat("feedback"), rewards=cat("rewards"), labels=cat("labels"),
        infos=cat("infos"),
        turn_index=cat("turn_index"), states=cat("states"),
        gen_s=sum(r.gen_s for r in results), env_s=sum(r.env_s for r in results),
        worker=",".join(sorted({r.worker for r in results})),
        chat={k: sum(r.chat.get(k, 0) for r in results) for k in sorted({k for r in results for k in r.chat})},
    )


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a rollout worker needs, parsed once by the learner (a plain, picklable value).

    Attributes:
        agent: The backbone settings.
        env: The env node resolved to plain data, plug-ins included; a worker builds its own task from it.
        variant: ``mah`` (one head per persona) or ``mt`` (one shared head).
        seed: The run's seed (the heads' initial noise; the copy is overwritten by published weights).
        lora: The adapter settings when the policy trains LoRA adapters, else None.
        max_new_tokens: Length limit of a sampled turn.
        temperature: Sampling temperature.
        top_p: Nucleus threshold.
        device: Where the worker runs (``cpu``, ``cuda``, ``auto``...).
    """

    agent: AgentConfig
    env: dict[str, Any]
    variant: str
    seed: int
    lora: LoRASettings | None
    max_new_tokens: int
    temperature: float
    top_p: float
    device: str = "auto"


class RolloutWorker:
    """Takes turns in a task's episodes with a policy copy (or the learner's policy) and the task.

    Args:
        settings: What to build and how to sample (:class:`WorkerSettings`).
        task: Use this task instead of building one from ``settings.env`` (the in-process worker
            shares the learner's).
        policy: Use this policy instead of loading a copy (the in-process worker shares the
            learner's weights, so publishing is a no-op).
        tokenizer: The policy's tokenizer (required with ``policy``).
        name: Shown in results and errors.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        task: Any = None,
        policy: MultiHeadPolicy | None = None,
        tokenizer: Any = None,
        name: str = "local",
    ):
        self.settings = settings
        self.name = name
        self.device = resolve_device(settings.device)
        self.task = task if task is not None else task_from_node(settings.env)
        self.shared = policy is not None
        if policy is None:
            names = [p.name for p in self.task.personas]
            policy, tokenizer, _ = build_policy(settings.agent, names, settings.variant, self.device,
                                                seed=settings.seed)
            if settings.lora is not None:
                apply_lora(policy, settings.lora)
            policy.requires_grad_(False)
        elif tokenizer is None:
            raise ValueError("RolloutWorker: pass the tokenizer together with the policy")
        self.policy, self.tokenizer = policy, tokenizer
        self.version = -1 if not self.shared else 0
        self._batches: dict[int, Any] = {}

    # ---- weights -----------------------------------------------------------------------

    def set_weights(self, version: int, state: Mapping[str, Any]) -> None:
        """Loads published trainable weights (tensors or numpy arrays by parameter name)."""
        params = dict(self.policy.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise KeyError(f"worker {self.name}: published weights name parameters this policy lacks: "
                           f"{unknown[:5]}; the worker was built from a different agent/algorithm config")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays from the object store
            for key, value in state.items():
                params[key].copy_(torch.as_tensor(value))
        self.version = int(version)

    def note_version(self, version: int) -> None:
        """Marks the shared weights as being at ``version`` (in-process worker only)."""
        self.version = int(version)

    # ---- collection ----------------------------------------------------------------------

    def _batch(self, num: int):
        if num not in self._batches:
            self._batches[num] = self.task.make_batch(num)
        return self._batches[num]

    def collect(self, request: RolloutRequest) -> RolloutResult:
        """Takes one turn in each requested episode.

        Raises:
            RuntimeError: if the worker holds a different weight version than the request names.
        """
        if request.version != self.version:
            raise RuntimeError(f"worker {self.name} holds weights version {self.version}, but the request for "
                               f"step {request.step} needs version {request.version}")
        batch = self._batch(len(request.uids))
        if request.reset_seeds is not None:
            prompts, _ = batch.reset(seed=[int(s) for s in request.reset_seeds], options_list=request.reset_options)
        else:
            prompts = batch.set_states(request.states)
        policy = self.policy
        selection = {"head": torch.tensor(request.heads)}  # each row samples from its own head
        chat_before = chat_counters(*self.task.chat_plugins())
        turn = take_turn(policy, self.tokenizer, self.task, batch, prompts, selection,
                         max_new_tokens=self.settings.max_new_tokens, temperature=self.settings.temperature,
                         top_p=self.settings.top_p,
                         seed=request.gen_seed)
        chat_after = chat_counters(*self.task.chat_plugins())
        gen, infos = turn.generation, turn.infos
        return RolloutResult(
            step=request.step, shard=request.shard, version=self.version, uids=list(request.uids),
            personas=list(request.personas), heads=list(request.heads), prompts=list(prompts),
            generation=gen.cpu(), actions=turn.actions, feedback=[info["feedback"] for info in infos],
            rewards=[float(r) for r in turn.rewards], labels=[dict(info["label"]) for info in infos], infos=infos,
            turn_index=[request.turn] * len(infos), states=batch.get_states(),
            gen_s=turn.gen_s, env_s=turn.env_s, worker=f"{self.name} (pid {os.getpid()})",
            chat={k: v - chat_before.get(k, 0) for k, v in chat_after.items()},
        )


def publishable_weights(policy: MultiHeadPolicy) -> dict[str, np.ndarray]:
    """The trainable parameters as numpy arrays (what workers need to mirror the learner)."""
    return {n: p.detach().cpu().numpy() for n, p in policy.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# Pools
# ----------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """Requests sent to a pool and not yet collected."""

    requests: list[RolloutRequest]
    handles: list[Any] = field(default_factory=list)
    results: list[RolloutResult] = field(default_factory=list)  # in-process pools fill these at once
    run_s: float = 0.0  # seconds an in-process pool spent running them


@dataclass
class Collected:
    """The results of one submission.

    Attributes:
        results: One per request, in shard order.
        wait_s: Seconds the caller blocked in :meth:`wait`.
        retries: Requests that had to be run again after a worker died.
    """

    results: list[RolloutResult]
    wait_s: float
    retries: int = 0


class LocalRolloutPool:
    """Runs requests in this process with the learner's own policy (the default, ``ray.enabled=false``).

    Requests run when they are submitted, so the weights are the learner's at that moment.
    """

    def __init__(self, worker: RolloutWorker):
        self.worker = worker

    def publish(self, version: int, policy: MultiHeadPolicy) -> None:
        """Notes the version: the worker shares the learner's weights, so nothing moves."""
        self.worker.note_version(version)

    def submit(self, requests: Sequence[RolloutRequest]) -> Submission:
        """Runs the requests now, in this process."""
        start = time.perf_counter()
        results = [self.worker.collect(r) for r in requests]
        return Submission(list(requests), results=results, run_s=time.perf_counter() - start)

    def wait(self, submission: Submission) -> Collected:
        """Returns the results; the learner "waited" for as long as it ran them itself."""
        return Collected(sorted(submission.results, key=lambda r: r.shard), wait_s=submission.run_s)

    def close(self) -> None:
        """Nothing to stop in-process."""
        pass


class RayRolloutWorker(RolloutWorker):
    """The worker as Ray runs it: pulls a published weight version before collecting with it."""

    def __init__(self, settings: WorkerSettings, *, name: str, torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        super().__init__(settings, name=name)

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is up: its name, process id and device."""
        return {"name": self.name, "pid": os.getpid(), "device": str(self.device)}

    def collect_version(self, version: int, weights: list, request: RolloutRequest) -> RolloutResult:
        """Collects ``request``, first pulling weights ``version`` when this worker lacks them.

        Args:
            version: The weight version named by the request.
            weights: ``[ObjectRef]`` of the published weights (wrapped in a list so Ray hands over
                the reference instead of fetching the object on every call).
            request: The request.
        """
        if version != self.version:
            import ray

            self.set_weights(version, ray.get(weights[0]))
        return self.collect(request)


class RayRolloutPool(RayActorPool):
    """Rollout workers as Ray actors (``ray.enabled=true``).

    Args:
        config: The ``ray`` settings.
        worker: What each worker builds (its ``device`` is replaced by ``cuda`` or ``cpu`` from
            ``config.num_gpus_per_worker``).

    Raises:
        RolloutWorkerError: if the cluster cannot be reached or the workers cannot start.
    """

    def __init__(self, config: RayConfig, worker: WorkerSettings):
        self.weights_ref = None
        self.version = -1
        settings = replace(worker, device="cuda" if config.num_gpus_per_worker > 0 else "cpu")
        super().__init__(config, RayRolloutWorker, (settings,), kind="rollout")

    # ---- weights ------------------------------------------------------------------------

    def publish(self, version: int, policy: MultiHeadPolicy) -> None:
        """Puts the trainable weights in the object store once; workers pull them on demand."""
        self.weights_ref = self.ray.put(publishable_weights(policy))
        self.version = int(version)

    # ---- requests -----------------------------------------------------------------------

    def submit(self, requests: Sequence[RolloutRequest]) -> Submission:
        """Sends each request to a worker (request ``i`` to worker ``i mod num_workers``).

        The call holds the weights' reference until its request is collected, so a re-sent
        request finds the same version.
        """
        if self.weights_ref is None:
            raise RuntimeError("publish() the weights before submitting requests")
        calls = []
        for i, request in enumerate(requests):
            if request.version != self.version:
                raise ValueError(f"request for step {request.step} names weights version {request.version}, "
                                 f"but the published version is {self.version}")
            calls.append(self.send(Call(i % self.num_workers, "collect_version",
                                        (request.version, [self.weights_ref], request),
                                        f"collecting step {request.step}, shard {request.shard}")))
        return Submission(list(requests), handles=calls)

    def wait(self, submission: Submission) -> Collected:
        """Blocks until every request of ``submission`` has a result, re-running any a dead worker lost.

        Raises:
            RolloutWorkerError: when one worker died ``ray.max_failures`` times in a row, or raised
                an error of its own (a bug or a bad config, which a re-run would repeat).
        """
        start = time.perf_counter()
        results, retries = [], 0
        for _, result, retries in self.gather(submission.handles):
            results.append(result)
        return Collected(sorted(results, key=lambda r: r.shard), wait_s=time.perf_counter() - start,
                         retries=retries)

"""What every on-policy trainer shares: settings, the rollout pool, checkpoints and the run loop.

A trainer (``algorithms.opsd.OPSDTrainer``, ...) subclasses :class:`Trainer` and supplies two
things: :meth:`Trainer.requests` (which episodes to roll out at a step) and :meth:`Trainer.learn`
(the update on the collected turns, returning namespaced metrics). :func:`fit` runs it:

- a new run claims its folder (refusing one that already holds a run unless ``overwrite=true``),
  checks every setting and builds everything before it writes ``config.yaml``;
- every ``save_every`` steps (and at the last step, or when ``stop_after`` stops the process) it
  writes ``checkpoint.safetensors`` atomically: trainable weights, optimiser, scheduler, random
  states and live episode states, loadable without running any code (:mod:`algorithms.checkpoint`);
- ``resume=<run>`` continues from that checkpoint, first dropping the ``history.jsonl`` rows and
  TensorBoard events written after it, so no step is ever logged twice; a finished run is left as it is;
- at the end it saves ``policy/``, evaluates, writes ``summary.json`` and deletes the checkpoint
  (unless ``keep_checkpoint=true``).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler, set_seed

from agents.models import resolve_device
from algorithms.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from algorithms.components import (
    LoRASettings,
    agent_config,
    build_policy,
    build_task,
    configure_trainable,
    make_optimizer,
    trainable_state,
)
from algorithms.evaluation import evaluate_policy, play_rows
from algorithms.host_memory import keep_freed_memory
from algorithms.ray_pool import ray_config
from algorithms.rollout import (
    LocalRolloutPool,
    RayRolloutPool,
    RolloutRequest,
    RolloutResult,
    RolloutWorker,
    Submission,
    WorkerSettings,
    merge_results,
)
from algorithms.runs import (
    claim_run_dir,
    json_line,
    peak_memory_mb,
    read_history,
    truncate_history,
    write_config,
    write_json,
)
from configs.validation import check_types, require, require_choice, structured
from envs.chat import ChatClientError, check_servers

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"


@dataclass
class EvalSettings:
    """Held-out evaluation of a run's heads (node ``algorithm.eval``; also used by ``evaluate=<run>``).

    Attributes:
        enabled: Evaluate at the end of the run.
        split: The split of the end-of-run evaluation and of ``evaluate=<run>``: ``eval`` (for tuning;
            the default) or ``test`` (headline numbers only). Its report is written as
            ``<split>.json`` / ``.md`` / ``.png``. Learning curves always use ``eval``.
        contexts: Held-out contexts (topics, requests, questions); each is run against every persona
            label. Null: every context of the split. More than the split holds is refused.
        turns: Generated turns per evaluation episode (capped by the env's episode length).
        max_new_tokens: Length limit of a generated turn.
        temperature: Sampling temperature (0: greedy).
        seed: Fixes the held-out contexts and the sampling.
        baselines: Also evaluate the equal blend of the heads and the untrained base model.
        bootstrap: Bootstrap resamples of the report's intervals.
        confidence: Level of those intervals.
        every: Also evaluate the heads every this many steps, for the learning curve (0: only at the
            end). The figures go to ``history.jsonl`` and TensorBoard under ``curve/`` and are plotted
            into ``curve.png``; sampling is seeded apart from training, so the run trains the same.
        curve_contexts: Held-out contexts of those periodic evaluations (null: ``contexts``).
        batch_size: Episodes of a row sampled per ``generate`` call (null: all at once). Bounds the
            evaluation's memory on a whole split (1,020 math episodes in one batch peaked at 9.3 GB).
            Other values draw other samples, so compare rows evaluated with the same value.
        reuse_kv: Keep each episode's keys and values from one turn to the next, so a turn's
            prefill runs only over what is new in its dialogue (``play_episodes(reuse_kv=True)``).
            The logits equal a full prefill's up to rounding, so a near-tie could sample another
            token than with false; on tutoring's documented test runs none did (docs/tutoring.md).
    """

    enabled: bool = True
    split: str = "eval"
    contexts: int | None = None
    turns: int = 3
    max_new_tokens: int = 48
    temperature: float = 0.7
    seed: int = 1234
    baselines: bool = True
    bootstrap: int = 1000
    confidence: float = 0.95
    every: int = 0
    curve_contexts: int | None = None
    batch_size: int | None = None
    reuse_kv: bool = True

    def __post_init__(self):
        check_types(self, "algorithm.eval")
        require_choice("algorithm.eval.split", self.split, ("eval", "test"))
        require(self.contexts is None or self.contexts >= 1, "algorithm.eval.contexts", self.contexts,
                "must be null (the whole split) or an integer >= 1")
        for key in ("turns", "max_new_tokens", "bootstrap"):
            require(getattr(self, key) >= 1, f"algorithm.eval.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.every >= 0, "algorithm.eval.every", self.every, "must be an integer >= 0 (0: only at the end)")
        for key in ("curve_contexts", "batch_size"):
            require(getattr(self, key) is None or getattr(self, key) >= 1, f"algorithm.eval.{key}", getattr(self, key),
                    "must be null or an integer >= 1")
        require(self.temperature >= 0, "algorithm.eval.temperature", self.temperature, "must be >= 0 (0: greedy)")
        require(0 < self.confidence < 1, "algorithm.eval.confidence", self.confidence, "must be in (0, 1)")


@dataclass
class TrainerConfig:
    """Settings every trainer has (the algorithm configs extend it; see their docstrings for the defaults' reasons).

    Attributes:
        steps: Optimiser steps.
        lr: Backbone learning rate (AdamW).
        head_lr_mult: Head learning rate = lr * head_lr_mult.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        scheduler: A ``transformers.get_scheduler`` name (constant_with_warmup, cosine, linear...).
        max_grad_norm: Gradient clipping threshold.
        micro_batch: Sequences per forward/backward chunk (bounds memory).
        trainable: ``heads``, ``last_layers`` (heads + last N decoder layers), ``lora`` or ``full``.
        last_n_layers: N for ``last_layers`` (every layer when N exceeds the depth).
        lora: Adapter settings for ``trainable=lora``.
        max_new_tokens: Length limit of a sampled turn.
        temperature: Sampling temperature of rollouts (0: greedy).
        top_p: Nucleus threshold of rollouts.
        save_every: Write a checkpoint every this many steps (and at the last step); a crash loses
            at most the steps since the last one.
        keep_checkpoint: Keep the last checkpoint once the run has finished (only needed to train
            the run further with a larger ``steps``); by default it is deleted after ``policy/`` is saved.
        stop_after: Stop this process after this many steps, as an interruption would (null: never).
        chat_fallback_warn: Warn when more than this share of a step's chat-model replies (LLM
            judges, critics) were unusable and replaced by defaults, whose rewards are placeholders.
        chat_fallback_stop: Stop the run (before learning on the step) above this share; null: never.
        eval: The held-out evaluation.
    """

    steps: int = 40
    lr: float = 1e-4
    head_lr_mult: float = 2.0
    weight_decay: float = 0.0
    warmup_steps: int = 4
    scheduler: str = "constant_with_warmup"
    max_grad_norm: float = 1.0
    micro_batch: int = 4
    trainable: str = "last_layers"
    last_n_layers: int = 4
    lora: LoRASettings = field(default_factory=LoRASettings)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    save_every: int = 10
    keep_checkpoint: bool = False
    stop_after: int | None = None
    chat_fallback_warn: float = 0.2
    chat_fallback_stop: float | None = None
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self):
        if isinstance(self.lora, dict):  # built from plain Python values
            self.lora = LoRASettings(**self.lora)
        if isinstance(self.eval, dict):
            self.eval = EvalSettings(**self.eval)
        check_types(self, "algorithm")
        require_choice("algorithm.trainable", self.trainable, ("heads", "last_layers", "lora", "full"))
        require_choice("algorithm.scheduler", self.scheduler, [s.value for s in SchedulerType])
        for key in ("steps", "micro_batch", "max_new_tokens", "save_every"):
            require(getattr(self, key) >= 1, f"algorithm.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.lr > 0, "algorithm.lr", self.lr, "must be a number > 0")
        require(self.head_lr_mult > 0, "algorithm.head_lr_mult", self.head_lr_mult, "must be a number > 0")
        require(self.weight_decay >= 0, "algorithm.weight_decay", self.weight_decay, "must be >= 0")
        require(self.warmup_steps >= 0, "algorithm.warmup_steps", self.warmup_steps, "must be an integer >= 0")
        require(self.max_grad_norm > 0, "algorithm.max_grad_norm", self.max_grad_norm, "must be a number > 0")
        require(self.last_n_layers >= 0, "algorithm.last_n_layers", self.last_n_layers, "must be an integer >= 0")
        require(self.temperature >= 0, "algorithm.temperature", self.temperature, "must be >= 0 (0: greedy)")
        require(0 < self.top_p <= 1, "algorithm.top_p", self.top_p, "must be in (0, 1]")
        require(self.stop_after is None or self.stop_after >= 1, "algorithm.stop_after", self.stop_after,
                "must be null or an integer >= 1")
        require(0 <= self.chat_fallback_warn <= 1, "algorithm.chat_fallback_warn", self.chat_fallback_warn,
                "must be in [0, 1]")
        require(self.chat_fallback_stop is None or 0 <= self.chat_fallback_stop <= 1, "algorithm.chat_fallback_stop",
                self.chat_fallback_stop, "must be null or in [0, 1]")


def accumulated_step(optimizer: torch.optim.Optimizer, rows: int, micro_batch: int,
                     chunk_loss: Callable[[torch.Tensor], torch.Tensor], max_grad_norm: float) -> float:
    """One optimiser step whose gradient is accumulated over micro-batches of ``rows`` rows.

    OPSD and RLVR both update this way: the rows of a step are cut into chunks of ``micro_batch``
    (each a backward pass, so memory is bounded by the chunk), then the gradient is clipped and the
    optimiser steps once.

    Args:
        optimizer: The optimiser; its parameter groups are the parameters clipped.
        rows: How many rows the step has.
        micro_batch: Rows per chunk.
        chunk_loss: ``positions -> loss``: the scalar loss of the rows at ``positions`` (a long
            tensor), already scaled for its share of the step; it may record per-row figures.
        max_grad_norm: Clipping threshold of the total gradient norm.

    Returns:
        The gradient norm before clipping.
    """
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, rows, micro_batch):
        chunk_loss(torch.arange(start, min(start + micro_batch, rows))).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    return grad_norm


class ChatHealthError(RuntimeError):
    """Too many chat-model replies of a step were unusable (``algorithm.chat_fallback_stop``)."""


def chat_fallback_rate(chat: dict[str, int]) -> float | None:
    """Share of a step's chat requests whose reply was replaced by a default (None: no request)."""
    asked = chat.get("requests", 0) - chat.get("retries", 0) + chat.get("cache_hits", 0)
    return chat.get("fallbacks", 0) / asked if asked > 0 else None


class Trainer:
    """The policy, frozen base model, optimiser, rollout pool and live episodes of one run.

    Subclasses set :attr:`config_cls` and implement :meth:`requests` and :meth:`learn`.

    Args:
        cfg: The composed Hydra config.
        run_dir: Where checkpoints, TensorBoard logs and results go.
    """

    config_cls: type[TrainerConfig] = TrainerConfig
    name = "trainer"

    def uses_reference(self) -> bool:
        """Whether updates read the frozen base model (``self.reference``); False saves loading a copy."""
        return True

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.settings = structured(self.config_cls, cfg.algorithm, "algorithm")
        self.ray = ray_config(cfg)
        self.device = resolve_device(cfg.device)
        keep_freed_memory(self.device)  # each step's gradients reuse the last step's pages
        set_seed(int(cfg.seed))
        self.agent = agent_config(cfg)
        self.task = build_task(cfg)
        check_servers(*self.task.chat_plugins())  # a server that is down or lacks the model: one message, now
        self.personas = list(self.task.personas)
        built = build_policy(self.agent, [p.name for p in self.personas], self.policy_variant, self.device,
                             seed=int(cfg.seed))
        self.policy, self.tokenizer = built.policy, built.tokenizer
        self.reference = configure_trainable(built, self.settings, self.agent, self.device,
                                             reference=self.uses_reference())
        s = self.settings
        self.optimizer = make_optimizer(self.policy.param_groups(s.lr, s.head_lr_mult, s.weight_decay))
        self.scheduler = get_scheduler(s.scheduler, self.optimizer, num_warmup_steps=s.warmup_steps,
                                       num_training_steps=s.steps)
        self.step = 0
        self.episodes: list[dict] | None = None  # live episode states; None: fresh ones start next step
        self.wall_s = 0.0  # training wall time of earlier processes of this run (from the checkpoint)
        self.pool: LocalRolloutPool | RayRolloutPool | None = None
        self.pending: Submission | None = None

    # ---- to implement ------------------------------------------------------------------

    @property
    def policy_variant(self) -> str:
        """``mah`` (one head per persona) or ``mt`` (one shared head)."""
        return "mah"

    def requests(self, step: int) -> list[RolloutRequest]:
        """The rollout requests of ``step`` (one or more shards)."""
        raise NotImplementedError

    def learn(self, result: RolloutResult) -> dict[str, Any]:
        """Updates the policy on one step's turns; returns metrics keyed ``namespace/name``."""
        raise NotImplementedError

    def progress(self, metrics: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"loss": f"{metrics.get('loss/total', float('nan')):.4f}"}

    # ---- heads and rollouts ------------------------------------------------------------

    def head_of(self, persona: int) -> int:
        """The head that serves persona ``persona``."""
        return persona if self.policy_variant == "mah" else 0

    def start_pool(self) -> None:
        """Starts the rollout pool (in-process, or Ray actors with ``ray.enabled=true``) and publishes the weights."""
        if self.pool is not None:
            return
        if self.ray.enabled:
            self.pool = RayRolloutPool(self.ray, self.worker_settings())
        else:
            self.pool = LocalRolloutPool(RolloutWorker(self.worker_settings(), task=self.task, policy=self.policy,
                                                       tokenizer=self.tokenizer))
        self.pool.publish(self.step, self.policy)

    def worker_settings(self) -> WorkerSettings:
        """What a rollout worker needs, as parsed settings (Ray ships this value, never the run config)."""
        s = self.settings
        return WorkerSettings(agent=self.agent, env=OmegaConf.to_container(self.cfg.env, resolve=True),
                              variant=self.policy_variant, seed=int(self.cfg.seed),
                              lora=s.lora if s.trainable == "lora" else None, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, top_p=s.top_p, device=str(self.device))

    def close(self) -> None:
        """Stops the rollout pool (and a local Ray cluster it started)."""
        self.pending = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    @property
    def num_shards(self) -> int:
        """Rollout requests per step (``ray.num_shards``, else one per worker; one in-process)."""
        if self.ray.num_shards:
            return int(self.ray.num_shards)
        return int(self.ray.num_workers) if self.ray.enabled else 1

    @property
    def max_staleness(self) -> int:
        """Updates a rollout may lag behind (0 in-process)."""
        return int(self.ray.max_staleness) if self.ray.enabled else 0

    def train_step(self) -> dict[str, Any]:
        """Collects one turn in every live episode (unless already in flight), learns, and publishes the weights.

        With ``ray.max_staleness=1`` the next step's rollouts are sent to the workers before this
        step's update, so they are sampled by weights one update old while the learner works.
        """
        self.start_pool()
        rng = capture_rng()
        try:
            submission = self.pending or self.pool.submit(self.requests(self.step))
            self.pending = None
            collected = self.pool.wait(submission)
            result = merge_results(collected.results, self.tokenizer.pad_token_id)
            rate = self._check_chat(result.chat)
        except (ChatClientError, ChatHealthError):
            restore_rng(rng)  # nothing of the failed step is kept: a checkpoint now equals the last step's end
            self.pending = None
            raise
        expected = [uid for request in submission.requests for uid in request.uids]
        if result.uids != expected:  # every episode exactly once, in row order
            raise RuntimeError(f"step {self.step}: rollouts returned episodes {result.uids}, expected {expected}")
        self.episodes = result.states
        if self.max_staleness >= 1 and self.step + 1 < self.settings.steps:
            self.pending = self.pool.submit(self.requests(self.step + 1))
        staleness = self.step - result.version
        start = time.perf_counter()
        metrics = self.learn(result)
        self.scheduler.step()
        self.step += 1
        metrics.update({
            "perf/learn_s": time.perf_counter() - start, "perf/gen_s": result.gen_s, "perf/env_s": result.env_s,
            "perf/idle_s": collected.wait_s, "rollout/weights_version": result.version,
            "rollout/staleness": staleness, "rollout/retries": collected.retries,
            **{f"chat/{k}": v for k, v in result.chat.items()},
            **({} if rate is None else {"chat/fallback_rate": rate}),
        })
        self.pool.publish(self.step, self.policy)
        return metrics

    def _check_chat(self, chat: dict[str, int]) -> float | None:
        """Warns (or stops, per the settings) when too many of the step's chat replies were unusable."""
        rate = chat_fallback_rate(chat)
        if rate is None:
            return None
        s = self.settings
        what = (f"step {self.step + 1}: {chat.get('fallbacks', 0)} chat-model replies were unusable and replaced by "
                f"defaults ({chat.get('failures', 0)} requests failed after {chat.get('retries', 0)} retries)")
        if s.chat_fallback_stop is not None and rate > s.chat_fallback_stop:
            raise ChatHealthError(f"{what}: a share of {rate:.2f} > algorithm.chat_fallback_stop="
                                  f"{s.chat_fallback_stop}. "
                                  "Check the chat server (chat/ metrics in TensorBoard), then resume the run.")
        asked = chat.get("requests", 0) - chat.get("retries", 0)
        if asked > 0 and chat.get("failures", 0) >= asked:  # not one reply: the server is gone, whatever the settings
            raise ChatHealthError(f"step {self.step + 1}: the chat server answered none of the step's {asked} requests "
                                  f"(all failed after {chat.get('retries', 0)} retries). Start it again, then resume "
                                  "the run.")
        if rate > s.chat_fallback_warn:
            warnings.warn(f"{what}: a share of {rate:.2f}; rewards computed from them are placeholders. "
                          "Check the chat server (chat/ metrics in TensorBoard).", stacklevel=2)
        return rate

    # ---- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (plain data and tensors only)."""
        return {"step": self.step, "trainable": trainable_state(self.policy),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "episodes": self.episodes, "rng": capture_rng(), "wall_s": self.wall_s}

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restores :meth:`state_dict` output read from the checkpoint ``path``."""
        expected = {n for n, p in self.policy.named_parameters() if p.requires_grad}
        if set(state["trainable"]) != expected:
            raise CheckpointError(f"{path} was written for other trainable parameters (another agent or "
                                  "algorithm.trainable); resume with the run's own config.")
        self.policy.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.episodes, self.step, self.wall_s = state["episodes"], int(state["step"]), float(state["wall_s"])
        restore_rng(state["rng"])

    def save_checkpoint(self) -> dict[str, float]:
        """Writes the checkpoint atomically; returns its size (MiB) and write time (s)."""
        start = time.perf_counter()
        path = save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())
        return {"perf/checkpoint_s": time.perf_counter() - start, "perf/checkpoint_mb": path.stat().st_size / 2**20}

    # ---- evaluation --------------------------------------------------------------------

    @property
    def head_for_persona(self) -> list[int]:
        """The head that serves each persona."""
        return [self.head_of(p) for p in range(len(self.personas))]

    def evaluate(self, writer: SummaryWriter | None = None) -> dict[str, Any]:
        """The end-of-run evaluation: every head (and the blend and base model) on the held-out episodes."""
        settings = self.settings.eval
        base = None
        if settings.baselines:
            backbone = self.agent.load(self.device)
            backbone.tokenizer.padding_side = "left"
            base = (backbone.model, backbone.tokenizer)
        return evaluate_policy(self.policy, self.tokenizer, self.task, settings, self.run_dir,
                               head_for_persona=self.head_for_persona, base=base, writer=writer,
                               step=self.step)["summary"]

    def curve(self) -> dict[str, float]:
        """A periodic evaluation of the heads for the learning curve: the report's scalars under ``curve/``."""
        settings = replace(self.settings.eval, baselines=False)
        rows = play_rows(self.policy, self.tokenizer, self.task, settings, head_for_persona=self.head_for_persona,
                         contexts=settings.curve_contexts, split="eval")  # a curve is for tuning: never test
        report = self.task.evaluate(rows, heads=list(rows), bootstrap=settings.bootstrap,
                                    confidence=settings.confidence, seed=settings.seed)
        return {f"curve/{k}": v for k, v in report.scalars.items()}

    def save_policy(self) -> Path:
        """Saves the trained policy as ``<run>/policy`` (LoRA adapters are merged into the backbone first)."""
        if self.settings.trainable == "lora" and hasattr(self.policy.model, "merge_and_unload"):
            self.policy.model = self.policy.model.merge_and_unload()
        return self.policy.save_pretrained(self.run_dir / "policy", tokenizer=self.tokenizer)


# ----------------------------------------------------------------------------------------------
# The run loop
# ----------------------------------------------------------------------------------------------


def plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    """The learning curve of every ``curve/...`` figure over steps.

    A figure ``curve/<group>/<row>/<measure>`` (e.g. ``satisfaction/head_direct/interactive``) is
    drawn in panel ``<group>/<measure>`` with one line per row, so the heads meet in each panel and
    figures of different scales (shares, words per turn) never share an axis; a figure
    ``curve/<group>/<row>`` gets panel ``<group>``.
    """
    from envs.tasks.reporting import line_panels

    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("curve/") and isinstance(value, (int, float)) and value == value:
                group, *parts = key[len("curve/"):].split("/")
                panel = f"{group}/{parts[-1]}" if len(parts) >= 2 else group
                line = "/".join(parts[:-1]) if len(parts) >= 2 else (parts[0] if parts else group)
                series.setdefault(panel, {}).setdefault(line, []).append((row["step"], value))
    line_panels(series, path)


def _log(writer: SummaryWriter, metrics: dict[str, Any], step: int) -> None:
    for key, value in metrics.items():
        if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            writer.add_scalar(key, value, step)


def _resume_state(trainer: Trainer, run_dir: Path) -> None:
    """Loads the run's checkpoint into ``trainer`` (none yet: the run starts over from step 0)."""
    removed = remove_stale_temporaries(run_dir)
    if removed:
        print(f"[{trainer.name}] removed unfinished checkpoint write(s): {', '.join(p.name for p in removed)}")
    path = run_dir / CHECKPOINT
    if path.is_file():
        trainer.load_state_dict(load_checkpoint(path), path)
    elif (run_dir / LEGACY_CHECKPOINT).is_file():
        raise CheckpointError(
            f"{run_dir / LEGACY_CHECKPOINT} is a pickle written by an earlier version; it is never loaded, since "
            "unpickling can run code. Start a new run (its policy/ folder, if any, still evaluates with "
            f"evaluate={run_dir}).")
    else:
        print(f"[{trainer.name}] {run_dir} has no checkpoint yet: starting it over from step 0")
    dropped = truncate_history(run_dir, trainer.step)
    if dropped:
        print(f"[{trainer.name}] dropped {dropped} history row(s) logged after the checkpoint (step {trainer.step})")


def _summary(trainer: Trainer, run_dir: Path, started: float, finished: bool) -> dict[str, Any]:
    history = read_history(run_dir)

    def mean(key: str) -> float | None:
        values = [row[key] for row in history if isinstance(row.get(key), (int, float))]
        return round(float(np.mean(values)), 3) if values else None

    this_process = time.perf_counter() - started
    return {
        "run_dir": str(run_dir), "trainer": trainer.name, "model": trainer.cfg.agent.model,
        "device": str(trainer.device), "step": trainer.step, "steps": trainer.settings.steps, "finished": finished,
        "wall_s_total": round(trainer.wall_s, 1), "wall_s_this_process": round(this_process, 1),
        "peak_memory_mb": round(peak_memory_mb(trainer.device), 1),
        "last_step": history[-1] if history else None,
        "rollout": {"workers": f"ray x {trainer.ray.num_workers}" if trainer.ray.enabled else "in-process",
                    "max_staleness": trainer.max_staleness, "mean_idle_s": mean("perf/idle_s"),
                    "mean_learn_s": mean("perf/learn_s"),
                    "retries": int(sum(row.get("rollout/retries", 0) for row in history))},
        "chat": {key.split("/", 1)[1]: int(sum(row.get(key, 0) for row in history))
                 for key in sorted({k for row in history for k in row if k.startswith("chat/")})},
        "checkpoint": {"mean_write_s": mean("perf/checkpoint_s"), "size_mb": mean("perf/checkpoint_mb")},
    }


def fit(trainer_cls: type[Trainer], cfg: DictConfig, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Trains (or continues) one run and returns its summary.

    Args:
        trainer_cls: The trainer.
        cfg: The composed config.
        run_dir: Output folder (``checkpoint.safetensors``, ``tb/``, ``history.jsonl``, ``policy/``, ``summary.json``).
        resume: Continue the run in ``run_dir`` from its checkpoint.

    Returns:
        The summary written to ``summary.json``.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    if resume:
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            done = json.loads(summary_path.read_text())
            if done.get("finished") and done.get("step", 0) >= int(cfg.algorithm.steps):
                print(f"[{trainer_cls.name}] {run_dir} finished at step {done['step']}: nothing to resume "
                      f"(evaluate it again with evaluate={run_dir})")
                return done
    else:
        claim_run_dir(run_dir, overwrite=bool(cfg.get("overwrite", False)),
                      resume_hint=f"python -m algorithms.{trainer_cls.name} resume={run_dir}")
    trainer = trainer_cls(cfg, run_dir)  # checks every setting and builds everything before a file is written
    if resume:
        _resume_state(trainer, run_dir)
        print(f"[{trainer.name}] resumed {run_dir} at step {trainer.step}/{trainer.settings.steps}")
    else:
        write_config(cfg, run_dir / "config.yaml")
    s = trainer.settings
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=trainer.step + 1 if resume else None)
    history = (run_dir / "history.jsonl").open("a")
    bar = tqdm(total=s.steps, initial=trainer.step, desc=trainer.name, unit="step", dynamic_ncols=True)
    steps_this_run, process_start = 0, time.perf_counter()
    try:
        while trainer.step < s.steps:
            if s.stop_after is not None and steps_this_run >= s.stop_after:
                print(f"[{trainer.name}] stopping after {steps_this_run} steps (stop_after); "
                      f"resume with resume={run_dir}")
                break
            metrics = trainer.train_step()
            steps_this_run += 1
            trainer.wall_s += time.perf_counter() - process_start
            process_start = time.perf_counter()
            stopping = s.stop_after is not None and steps_this_run >= s.stop_after
            if s.eval.every and (trainer.step % s.eval.every == 0 or trainer.step == s.steps):
                metrics.update(trainer.curve())
            if trainer.step % s.save_every == 0 or trainer.step == s.steps or stopping:
                metrics.update(trainer.save_checkpoint())
            metrics["perf/peak_memory_mb"] = peak_memory_mb(trainer.device)
            _log(writer, metrics, trainer.step)
            history.write(json_line({"step": trainer.step, **metrics}))
            history.flush()
            bar.update(1)
            bar.set_postfix(trainer.progress(metrics))
    except KeyboardInterrupt:
        print(f"\n[{trainer.name}] interrupted at step {trainer.step}; continue from the last checkpoint with: "
              f"python -m algorithms.{trainer.name} resume={run_dir}")
        raise
    except (ChatClientError, ChatHealthError) as err:
        kept = "no step had finished"
        if trainer.step > 0:  # the failed step left no trace, so this checkpoint is the last step's end
            trainer.save_checkpoint()
            kept = f"steps 1-{trainer.step} are saved"
        print(f"\n[{trainer.name}] stopped in step {trainer.step + 1}: {err}\n[{trainer.name}] {kept}; once the chat "
              f"server answers, continue with: python -m algorithms.{trainer.name} resume={run_dir}")
        raise
    finally:
        trainer.close()  # stops rollout workers (and a local Ray cluster) on success, error or Ctrl-C
        bar.close()
        history.close()
        writer.flush()

    finished = trainer.step >= s.steps
    summary = _summary(trainer, run_dir, started, finished)
    if finished:
        summary["policy_dir"] = str(trainer.save_policy())
        if s.eval.enabled:
            summary["eval"] = trainer.evaluate(writer)
            summary["eval_split"] = s.eval.split
        if s.eval.every:
            plot_curve(read_history(run_dir), run_dir / "curve.png")
        write_json(run_dir / "summary.json", summary)
        if not s.keep_checkpoint and (run_dir / CHECKPOINT).is_file():
            (run_dir / CHECKPOINT).unlink()
    writer.close()
    return summary

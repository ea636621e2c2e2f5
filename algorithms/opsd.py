"""Multi-action-head on-policy self-distillation (MAH-OPSD) and its single-head ablation (MT-OPSD).

Run it with Hydra (configs/opsd.yaml)::

    python -m algorithms.opsd env=tutoring                       # embedded SmolLM2-135M, scripted student
    python -m algorithms.opsd env=tutoring algorithm=opsd_quick  # ~3 minute smoke run
    python -m algorithms.opsd env=tutoring algorithm.variant=mt  # MT-OPSD: one head takes every loss
    python -m algorithms.opsd resume=runs/opsd/<run>             # continue from the last checkpoint
    python -m algorithms.opsd evaluate=runs/opsd/<run>           # (re-)evaluate a finished run

One training step, for every persona d (teaching style) and each of its live dialogues:

1. head d (the shared head for MT) samples the next teacher turn from the observation alone;
2. the environment answers with the student's reply, the privileged feedback;
3. the frozen base model scores the sampled tokens under a privileged prompt that differs from the
   policy's only by a block holding persona d's label and that reply;
4. the turn's loss is the reverse KL from the head to that teacher on the head's top-k tokens,
   averaged over the turn's tokens; the step minimises ``sum_d alpha_d mean(L_d)``.

Dialogues run for ``turns_per_dialogue`` turns before fresh ones start, so later turns are trained
on states the policy itself reached; each dialogue's hidden student type is drawn independently of
the head, so every head meets matched and mismatched students.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_scheduler

from agents import MultiHeadPolicy, completion_logits, load_backbone
from agents.generation import encode_prompts
from agents.models import resolve_device
from algorithms.evaluation import count_questions, evaluate_policy
from algorithms.losses import normalized_alphas, opsd_sequence_loss
from algorithms.components import apply_lora, build_policy, build_task, read_config
from algorithms.rollout import (
    LocalRolloutPool,
    RayRolloutPool,
    RolloutRequest,
    RolloutResult,
    RolloutWorker,
    Submission,
    merge_results,
    ray_config,
)
from envs.tutoring import DialogueState

CHECKPOINT = "checkpoint.pt"

# hydra.run.dir: a resumed or re-evaluated run writes into its own folder, a new run into a fresh one.
if not OmegaConf.has_resolver("pg_run_dir"):
    OmegaConf.register_new_resolver("pg_run_dir", lambda resume, evaluate, fresh: resume or evaluate or fresh)


@dataclass
class OPSDConfig:
    """Hyper-parameters of one OPSD run (values live in configs/algorithm/*.yaml).

    Attributes:
        variant: ``mah`` (one head per persona) or ``mt`` (one shared head: the MT-OPSD ablation).
        steps: Optimiser steps.
        dialogues_per_persona: Live dialogues per persona; each step samples one turn in each.
        turns_per_dialogue: Turns before a dialogue is replaced by a fresh one (<= env max_turns).
        topk: Size of the student's top-k support for the reverse KL (null: full vocabulary).
        alphas: Per-persona loss weights (null: uniform); rescaled to sum to 1.
        lr: Backbone learning rate (AdamW).
        head_lr_mult: Head learning rate = lr * head_lr_mult.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        scheduler: A ``transformers.get_scheduler`` name (constant_with_warmup, cosine, linear...).
        max_grad_norm: Gradient clipping threshold.
        micro_batch: Sequences per forward/backward chunk (bounds memory).
        trainable: ``heads``, ``last_layers`` (heads + last N decoder layers), ``lora`` or ``full``.
        last_n_layers: N for ``last_layers`` (every layer when N exceeds the depth).
        lora: peft LoRA settings for ``trainable=lora`` (r, alpha, dropout, target_modules).
        max_new_tokens: Length limit of a sampled teacher turn.
        temperature: Sampling temperature of rollouts.
        top_p: Nucleus threshold of rollouts.
        save_every: Checkpoint every this many steps (1: a crash loses at most the step in progress).
        stop_after: Stop this process after this many steps, as an interruption would (null: never).
    """

    variant: str
    steps: int
    dialogues_per_persona: int
    turns_per_dialogue: int
    topk: int | None
    alphas: list[float] | None
    lr: float
    head_lr_mult: float
    weight_decay: float
    warmup_steps: int
    scheduler: str
    max_grad_norm: float
    micro_batch: int
    trainable: str
    last_n_layers: int
    lora: dict = field(default_factory=dict)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    save_every: int = 1
    stop_after: int | None = None

    def __post_init__(self):
        if self.variant not in ("mah", "mt"):
            raise ValueError(f"algorithm.variant must be 'mah' or 'mt', got '{self.variant}'.")
        if self.trainable not in ("heads", "last_layers", "lora", "full"):
            raise ValueError(f"algorithm.trainable must be heads, last_layers, lora or full, got '{self.trainable}'.")
        if self.steps < 1 or self.dialogues_per_persona < 1 or self.micro_batch < 1 or self.turns_per_dialogue < 1:
            raise ValueError("steps, dialogues_per_persona, micro_batch and turns_per_dialogue must be positive.")


def algorithm_config(cfg: DictConfig) -> OPSDConfig:
    """Reads ``cfg.algorithm`` into an :class:`OPSDConfig`, naming any unknown or missing key."""
    return read_config(OPSDConfig, cfg.algorithm, where="algorithm", compare_with="configs/algorithm/opsd.yaml",
                       drop=("name", "eval"))


# ----------------------------------------------------------------------------------------------
# Building the pieces
# ----------------------------------------------------------------------------------------------


class AdapterTeacher(nn.Module):
    """The frozen base model as the LoRA policy's own weights with adapters disabled.

    Costs no extra memory: the backbone is shared, and the base output layer is the input
    embedding matrix (tied models) or a frozen copy of the original head.
    """

    def __init__(self, policy: MultiHeadPolicy, base_head: torch.Tensor):
        super().__init__()
        self.policy = policy
        self.register_buffer("base_head", base_head.detach().clone(), persistent=False)

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0, **_):
        with self.policy.model.disable_adapter():
            hidden = self.policy.model.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        return _Logits(nn.functional.linear(hidden, self.base_head))


@dataclass
class _Logits:
    logits: torch.Tensor


def configure_trainable(policy: MultiHeadPolicy, opsd: OPSDConfig, cfg: DictConfig, device) -> nn.Module:
    """Freezes what ``opsd.trainable`` says and returns the frozen teacher (the base model)."""
    decoder = policy.model.get_decoder()
    if opsd.trainable == "lora":
        base_head = policy.model.get_input_embeddings().weight if cfg.agent.get("tied_base_head", True) \
            else policy.heads.weights[0]
        apply_lora(policy, opsd.lora)
        for p in policy.head_parameters():
            p.requires_grad_(True)
        return AdapterTeacher(policy, base_head)
    for p in policy.backbone_parameters():
        p.requires_grad_(opsd.trainable == "full")
    if opsd.trainable == "last_layers":
        layers = decoder.layers
        if opsd.last_n_layers < 0:
            raise ValueError(f"last_n_layers must be >= 0, got {opsd.last_n_layers}.")
        first = max(0, len(layers) - opsd.last_n_layers)  # all layers when N exceeds the depth
        for module in list(layers[first:]) + [decoder.norm]:
            for p in module.parameters():
                p.requires_grad_(True)
    teacher = load_backbone(cfg.agent.model, device=device, dtype=cfg.agent.dtype,
                            **dict(cfg.agent.get("tiny", None) or {})).model
    teacher.requires_grad_(False)
    return teacher.eval()


def make_optimizer(param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it (8x faster steps over several 28M-parameter heads on CPU)."""
    try:
        return torch.optim.AdamW(param_groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(param_groups)


def trainable_state(policy: MultiHeadPolicy) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in policy.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------


def _trim_left(ids: torch.Tensor, mask: torch.Tensor):
    keep = int(mask.sum(dim=1).max())
    return ids[:, -keep:], mask[:, -keep:]


@dataclass
class DistillBatch:
    """The tokens one distillation update needs.

    Attributes:
        prompt_ids: ``(B, P)`` the policy's prompts (left-padded).
        prompt_mask: ``(B, P)``.
        teacher_ids: ``(B, P')`` the privileged prompts (left-padded).
        teacher_mask: ``(B, P')``.
        completion_ids: ``(B, T)`` the sampled turns.
        completion_mask: ``(B, T)``.
        groups: ``(head, rows, alpha)`` per persona: which head trains on which rows, with what weight.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    groups: list[tuple[int, list[int], float]]


def distill_step(
    policy: MultiHeadPolicy,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: DistillBatch,
    *,
    topk: int | None,
    micro_batch: int,
    max_grad_norm: float,
) -> tuple[list[float], float]:
    """One OPSD update: minimises ``sum_g alpha_g mean_{rows of g} L_row`` and steps the optimiser.

    Each row goes through its group's head only (only that head's logits are computed); rows of all
    groups are packed into chunks of ``micro_batch`` with a backward pass per chunk to bound
    memory; the teacher runs without gradients.

    Returns:
        The mean per-turn loss of each group and the gradient norm before clipping.
    """
    length = int(batch.completion_mask.sum(1).max())
    comp, comp_mask = batch.completion_ids[:, :length], batch.completion_mask[:, :length]
    # Rows of every group share micro-batches (so K heads cost as many backbone passes as one);
    # each row goes through its own head via a one-hot weight row and carries alpha_g / |g|.
    order = [(g, row) for g, (_, rows, _) in enumerate(batch.groups) for row in rows]
    head_of = torch.tensor([batch.groups[g][0] for g, _ in order])
    scale = torch.tensor([batch.groups[g][2] / len(batch.groups[g][1]) for g, _ in order])
    rows_all = torch.tensor([row for _, row in order])
    policy.train()
    optimizer.zero_grad(set_to_none=True)
    group_total = [0.0] * len(batch.groups)
    for i in range(0, len(order), micro_batch):
        part = slice(i, i + micro_batch)
        idx = rows_all[part]
        selection = {"head": 0} if policy.num_heads == 1 else \
            {"weights": nn.functional.one_hot(head_of[part], policy.num_heads).float()}
        with torch.no_grad():
            teacher_logits = completion_logits(teacher, *_trim_left(batch.teacher_ids[idx], batch.teacher_mask[idx]),
                                               comp[idx], comp_mask[idx])  # (b, T, V)
        student_logits = completion_logits(policy, *_trim_left(batch.prompt_ids[idx], batch.prompt_mask[idx]),
                                           comp[idx], comp_mask[idx], **selection)  # (b, T, V)
        per_turn = opsd_sequence_loss(student_logits, teacher_logits, comp_mask[idx], topk)  # (b,)
        (per_turn * scale[part].to(per_turn)).sum().backward()
        for (g, _), value in zip(order[part], per_turn.detach().tolist()):
            group_total[g] += value
    group_loss = [total / len(rows) if rows else float("nan")
                  for total, (_, rows, _) in zip(group_total, batch.groups)]
    params = [q for g in optimizer.param_groups for q in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    return group_loss, grad_norm


@dataclass
class StepRecord:
    """What one OPSD step measured.

    Attributes:
        loss: The weighted objective ``sum_d alpha_d mean(L_d)``.
        head_loss: Mean per-turn loss for each persona.
        reward: Mean env reward for each persona.
        reward_matched: Mean reward where the student's hidden type equals the persona (tutoring).
        reward_mismatched: Mean reward on the other dialogues.
        questions: Mean questions per sampled turn for each persona.
        turn_tokens: Mean sampled turn length in tokens.
        gen_s: Worker-seconds spent sampling; env_s: in the environment (summed over workers).
        learn_s: Seconds in forward/backward/update.
        idle_s: Seconds the learner waited for this step's rollouts.
        grad_norm: Gradient norm before clipping.
        lr: Backbone learning rate used.
        version: Weight version that sampled this step's turns.
        staleness: Updates between that version and the weights being updated.
        retries: Rollout requests run again because a worker died.
        turns: ``<dialogue uid>@<turn>`` of every sampled turn.
    """

    loss: float
    head_loss: dict[str, float]
    reward: dict[str, float]
    reward_matched: float
    reward_mismatched: float
    questions: dict[str, float]
    turn_tokens: float
    gen_s: float
    env_s: float
    learn_s: float
    idle_s: float
    grad_norm: float
    lr: float
    version: int = 0
    staleness: int = 0
    retries: int = 0
    turns: list[str] = field(default_factory=list)


class OPSDTrainer:
    """Holds the policy, teacher, optimiser, rollout pool and live dialogues of one run, and steps them.

    The live dialogues are ``dialogues_per_persona`` per persona, in persona-major rows; their
    states live here (and in checkpoints), and every step sends them to the rollout pool, which
    takes one turn in each.

    Args:
        cfg: The composed Hydra config.
        run_dir: Where checkpoints, TensorBoard logs and results go.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.opsd = algorithm_config(cfg)
        self.ray = ray_config(cfg)
        self.device = resolve_device(cfg.device)
        _seed_everything(cfg.seed)
        self.task = build_task(cfg)
        if self.opsd.turns_per_dialogue > self.task.max_turns:
            raise ValueError(f"turns_per_dialogue={self.opsd.turns_per_dialogue} exceeds the env's "
                             f"{self.task.max_turns} turns per episode.")
        self.personas = self.task.personas
        self.alphas = normalized_alphas(self.opsd.alphas, len(self.personas))
        self.policy, self.tokenizer = build_policy(cfg, self.task.persona_names, self.opsd.variant, self.device)
        self.teacher = configure_trainable(self.policy, self.opsd, cfg, self.device)
        self.optimizer = make_optimizer(
            self.policy.param_groups(self.opsd.lr, self.opsd.head_lr_mult, self.opsd.weight_decay)
        )
        self.scheduler = get_scheduler(self.opsd.scheduler, self.optimizer, num_warmup_steps=self.opsd.warmup_steps,
                                       num_training_steps=self.opsd.steps)
        n = self.opsd.dialogues_per_persona
        self.row_persona = [p for p in range(len(self.personas)) for _ in range(n)]
        self.dialogues: list[DialogueState] | None = None  # None: fresh dialogues start at the next step
        self.step = 0
        self.pool: LocalRolloutPool | RayRolloutPool | None = None
        self.pending: Submission | None = None

    # ---- heads -------------------------------------------------------------------------

    def head_of(self, persona: int) -> int:
        return persona if self.opsd.variant == "mah" else 0

    # ---- rollouts ----------------------------------------------------------------------

    def start_pool(self) -> None:
        """Starts the rollout pool (in-process, or Ray actors with ``ray.enabled=true``) and publishes the weights."""
        if self.pool is not None:
            return
        if self.ray.enabled:
            self.pool = RayRolloutPool(self.cfg)
        else:
            self.pool = LocalRolloutPool(RolloutWorker(self.cfg, task=self.task, policy=self.policy,
                                                       tokenizer=self.tokenizer, device=self.device))
        self.pool.publish(self.step, self.policy)

    def close(self) -> None:
        """Stops the rollout pool (and a local Ray cluster it started)."""
        self.pending = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def requests(self, step: int) -> list[RolloutRequest]:
        """The rollout requests for ``step``: one turn in every live dialogue, split into shards.

        Every ``turns_per_dialogue`` steps the dialogues are replaced by fresh ones, with seeds
        fixed by the run seed, the episode and the row; the sampling seed is fixed by the step and
        the shard, so a request gives the same turns wherever it runs.
        """
        num, n = len(self.personas), self.opsd.dialogues_per_persona
        episode = step // self.opsd.turns_per_dialogue
        fresh = step % self.opsd.turns_per_dialogue == 0
        if not fresh and self.dialogues is None:
            raise RuntimeError(f"step {step} continues dialogues, but none are live")
        rows = list(range(num * n))
        uids = [f"e{episode}-{self.personas[p].name}-{r % n}" for r, p in zip(rows, self.row_persona)]
        shards = [list(part) for part in np.array_split(rows, self.num_shards) if len(part)]
        out = []
        for k, part in enumerate(shards):
            personas = [self.row_persona[r] for r in part]
            out.append(RolloutRequest(
                step=step, shard=k, uids=[uids[r] for r in part], personas=personas,
                heads=[self.head_of(p) for p in personas], version=self.step,
                gen_seed=self.cfg.seed * 1_000_003 + step + k * 1_000_000_007,
                reset_seeds=[self.cfg.seed * 10_000_019 + episode * num * n + r for r in part] if fresh else None,
                states=None if fresh else [self.dialogues[r] for r in part],
            ))
        return out

    @property
    def num_shards(self) -> int:
        if self.ray.num_shards:
            return int(self.ray.num_shards)
        return int(self.ray.num_workers) if self.ray.enabled else 1

    @property
    def max_staleness(self) -> int:
        return int(self.ray.max_staleness) if self.ray.enabled else 0

    # ---- the step ----------------------------------------------------------------------

    def train_step(self) -> StepRecord:
        """Collects one turn in every live dialogue (unless already in flight), distils, and steps the optimiser.

        With ``ray.max_staleness=1`` the next step's rollouts are sent to the workers before this
        step's update, so they are sampled by weights one update old while the learner works.
        """
        self.start_pool()
        submission = self.pending or self.pool.submit(self.requests(self.step))
        self.pending = None
        collected = self.pool.wait(submission)
        result = merge_results(collected.results, self.tokenizer.pad_token_id)
        expected = [uid for request in submission.requests for uid in request.uids]
        if result.uids != expected:  # every dialogue exactly once, in row order
            raise RuntimeError(f"step {self.step}: rollouts returned dialogues {result.uids}, expected {expected}")
        self.dialogues = result.states
        if self.max_staleness >= 1 and self.step + 1 < self.opsd.steps:
            self.pending = self.pool.submit(self.requests(self.step + 1))
        record = self.learn(result, idle_s=collected.wait_s, retries=collected.retries)
        self.pool.publish(self.step, self.policy)
        return record

    def learn(self, result: RolloutResult, *, idle_s: float = 0.0, retries: int = 0) -> StepRecord:
        """Distils the policy on one step's turns and takes one optimiser step."""
        opsd = self.opsd
        num, n = len(self.personas), opsd.dialogues_per_persona
        if result.personas != self.row_persona:
            raise RuntimeError("the rollout rows do not follow the trainer's persona-major order")
        staleness = self.step - result.version
        start = time.perf_counter()
        teacher_prompts = [self.task.teacher_messages(o, self.personas[p], fb)
                           for p, o, fb in zip(result.personas, result.prompts, result.feedback)]
        t_ids, t_mask = encode_prompts(self.tokenizer, teacher_prompts, self.device)
        dev = self.device
        batch = DistillBatch(result.prompt_ids.to(dev), result.prompt_mask.to(dev), t_ids, t_mask,
                             result.completion_ids.to(dev), result.completion_mask.to(dev),
                             groups=[(self.head_of(p), list(range(p * n, (p + 1) * n)), self.alphas[p])
                                     for p in range(num)])
        lr = self.optimizer.param_groups[0]["lr"]
        head_loss, grad_norm = distill_step(self.policy, self.teacher, self.optimizer, batch, topk=opsd.topk,
                                            micro_batch=opsd.micro_batch, max_grad_norm=opsd.max_grad_norm)
        self.scheduler.step()
        learn_s = time.perf_counter() - start
        self.step += 1

        names = [p.name for p in self.personas]
        matched = [label.get("student_type") == self.personas[p].name
                   for p, label in zip(result.personas, result.labels)]

        def per_persona(values):
            return {names[p]: float(np.mean(values[p * n:(p + 1) * n])) for p in range(num)}

        def mean_where(values, flags):
            chosen = [v for v, f in zip(values, flags) if f]
            return float(np.mean(chosen)) if chosen else float("nan")

        return StepRecord(
            loss=float(sum(a * l for a, l in zip(self.alphas, head_loss))),
            head_loss=dict(zip(names, head_loss)),
            reward=per_persona(result.rewards),
            reward_matched=mean_where(result.rewards, matched),
            reward_mismatched=mean_where(result.rewards, [not m for m in matched]),
            questions=per_persona([count_questions(t) for t in result.texts]),
            turn_tokens=float(result.completion_mask.sum(1).float().mean()),
            gen_s=result.gen_s, env_s=result.env_s, learn_s=learn_s, idle_s=idle_s, grad_norm=grad_norm, lr=lr,
            version=result.version, staleness=staleness, retries=retries, turns=result.turn_ids,
        )

    # ---- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Writes everything needed to continue exactly (atomically: a crash leaves the last one intact)."""
        state = {
            "step": self.step,
            "trainable": trainable_state(self.policy),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "dialogues": self.dialogues,
            "rng": _rng_state(),
        }
        path = self.run_dir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "dialogues" not in state:
            raise ValueError(f"{path} was written by an older version that kept env objects, not dialogue states; "
                             "start a new run (its policy/ folder still evaluates with evaluate=<run>).")
        expected = {n for n, p in self.policy.named_parameters() if p.requires_grad}
        if set(state["trainable"]) != expected:
            raise ValueError(f"{path} was written for other trainable parameters (different agent or "
                             "algorithm.trainable); resume with the run's own config.")
        self.policy.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.dialogues, self.step = state["dialogues"], state["step"]
        _set_rng_state(state["rng"])

    def save_policy(self) -> Path:
        """Saves the trained policy as ``<run>/policy`` (LoRA adapters are merged into the backbone first)."""
        if self.opsd.trainable == "lora" and hasattr(self.policy.model, "merge_and_unload"):
            self.policy.model = self.policy.model.merge_and_unload()
        return self.policy.save_pretrained(self.run_dir / "policy", tokenizer=self.tokenizer)


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(writer: SummaryWriter, record: StepRecord, step: int, device) -> None:
    writer.add_scalar("loss/total", record.loss, step)
    for name, value in record.head_loss.items():
        writer.add_scalar(f"loss/{name}", value, step)
    for name, value in record.reward.items():
        writer.add_scalar(f"env/reward_{name}", value, step)
    for name, value in record.questions.items():
        writer.add_scalar(f"env/questions_per_turn_{name}", value, step)
    if not np.isnan(record.reward_matched):
        writer.add_scalar("env/reward_matched", record.reward_matched, step)
    if not np.isnan(record.reward_mismatched):
        writer.add_scalar("env/reward_mismatched", record.reward_mismatched, step)
    writer.add_scalar("env/turn_tokens", record.turn_tokens, step)
    writer.add_scalar("train/grad_norm", record.grad_norm, step)
    writer.add_scalar("train/lr", record.lr, step)
    for key in ("gen_s", "env_s", "learn_s", "idle_s"):
        writer.add_scalar(f"perf/{key}", getattr(record, key), step)
    writer.add_scalar("rollout/weights_version", record.version, step)
    writer.add_scalar("rollout/staleness", record.staleness, step)
    writer.add_scalar("rollout/retries", record.retries, step)
    writer.add_scalar("perf/peak_memory_mb", peak_memory_mb(device), step)


def train(cfg: DictConfig, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Trains (or continues) one run and returns its summary.

    Args:
        cfg: The composed config.
        run_dir: Output folder (``checkpoint.pt``, ``tb/``, ``history.jsonl``, ``policy/``, ``summary.json``).
        resume: Continue from ``run_dir/checkpoint.pt``.

    Returns:
        The summary written to ``summary.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    started = time.perf_counter()
    trainer = OPSDTrainer(cfg, run_dir)
    if resume:
        trainer.load_checkpoint(run_dir / CHECKPOINT)
        print(f"[opsd] resumed {run_dir} at step {trainer.step}/{trainer.opsd.steps}")
    opsd = trainer.opsd
    writer = SummaryWriter(str(run_dir / "tb"))
    history = (run_dir / "history.jsonl").open("a")
    bar = tqdm(total=opsd.steps, initial=trainer.step, desc="opsd", unit="step", dynamic_ncols=True)
    steps_this_run = 0
    last: StepRecord | None = None
    records: list[StepRecord] = []
    try:
        while trainer.step < opsd.steps:
            if opsd.stop_after is not None and steps_this_run >= opsd.stop_after:
                print(f"[opsd] stopping after {steps_this_run} steps (stop_after); resume with resume={run_dir}")
                break
            last = trainer.train_step()
            records.append(last)
            steps_this_run += 1
            _log(writer, last, trainer.step, trainer.device)
            history.write(json.dumps({"step": trainer.step, **last.__dict__}) + "\n")
            history.flush()
            if trainer.step % opsd.save_every == 0 or trainer.step == opsd.steps:
                trainer.save_checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{last.loss:.4f}", matched=f"{last.reward_matched:+.2f}",
                            mismatched=f"{last.reward_mismatched:+.2f}")
    except KeyboardInterrupt:
        print(f"\n[opsd] interrupted at step {trainer.step}; continue with: python -m algorithms.opsd resume={run_dir}")
        raise
    finally:
        trainer.close()  # stops rollout workers (and a local Ray cluster) on success, error or Ctrl-C
        bar.close()
        writer.flush()
        history.close()

    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "variant": opsd.variant,
        "model": cfg.agent.model,
        "device": str(trainer.device),
        "step": trainer.step,
        "steps": opsd.steps,
        "wall_s_this_process": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(peak_memory_mb(trainer.device), 1),
        "last_step": None if last is None else last.__dict__,
        "rollout": {
            "workers": f"ray x {trainer.ray.num_workers}" if trainer.ray.enabled else "in-process",
            "max_staleness": trainer.max_staleness,
            "mean_idle_s": round(float(np.mean([r.idle_s for r in records])), 2) if records else None,
            "mean_learn_s": round(float(np.mean([r.learn_s for r in records])), 2) if records else None,
            "retries": sum(r.retries for r in records),
        },
    }
    if trainer.step >= opsd.steps:
        summary["policy_dir"] = str(trainer.save_policy())
        if cfg.algorithm.eval.enabled:
            results = evaluate_policy(trainer.policy, trainer.tokenizer, trainer.task, cfg.algorithm.eval, run_dir,
                                      head_for_persona=trainer.head_of, writer=writer, step=trainer.step)
            summary["eval"] = results["summary"]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    writer.close()
    return summary


def evaluate_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluates the saved policy of a finished run with the run's own task settings."""
    device = resolve_device(cfg.device)
    policy = MultiHeadPolicy.from_pretrained(run_dir / "policy", device=device)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "policy")
    tokenizer.padding_side = "left"
    variant = algorithm_config(cfg).variant
    return evaluate_policy(policy, tokenizer, build_task(cfg), cfg.algorithm.eval, run_dir,
                           head_for_persona=(lambda p: p) if variant == "mah" else (lambda p: 0))


def _run_config(cfg: DictConfig) -> tuple[DictConfig, Path, str]:
    """Chooses the run folder and config: a new run, a resumed one, or an evaluation."""
    target = cfg.get("resume") or cfg.get("evaluate")
    if not target:
        return cfg, Path(HydraConfig.get().runtime.output_dir), "train"
    run_dir = Path(target)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{run_dir} is not an OPSD run folder (no config.yaml there).")
    run_cfg = OmegaConf.load(saved)
    # Explicit command-line overrides (other than resume/evaluate) still apply, e.g. algorithm.stop_after.
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+")
        if key not in ("resume", "evaluate") and "." in key:
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), force_add=True)
    return run_cfg, run_dir, "resume" if cfg.get("resume") else "evaluate"


@hydra.main(version_base="1.3", config_path="../configs", config_name="opsd")
def main(cfg: DictConfig) -> None:
    cfg, run_dir, mode = _run_config(cfg)
    if mode == "evaluate":
        results = evaluate_run(cfg, run_dir)
        print(results["markdown"])
        return
    if mode == "resume" and not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT} to resume from.")
    summary = train(cfg, run_dir, resume=mode == "resume")
    print(f"\n[opsd] run folder: {run_dir}")
    print(f"[opsd] steps {summary['step']}/{summary['steps']}, wall {summary['wall_s_this_process']} s, "
          f"peak memory {summary['peak_memory_mb']} MiB")
    if "eval" in summary:
        print((run_dir / "eval.md").read_text())


if __name__ == "__main__":
    main()

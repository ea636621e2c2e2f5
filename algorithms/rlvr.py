"""RLVR and PerMix-RLVR: GRPO on a verifiable reward, without or with personas mixed into the prompts.

Run it with Hydra (configs/rlvr.yaml)::

    python -m algorithms.rlvr env=persona_math                     # RLVR: every prompt without a persona
    python -m algorithms.rlvr env=persona_math algorithm=permix    # PerMix-RLVR: personas mixed into training
    python -m algorithms.rlvr resume=runs/rlvr/<run>               # continue from the last checkpoint
    python -m algorithms.rlvr evaluate=runs/rlvr/<run>             # (re-)evaluate a finished run

One step, for ``prompts_per_step`` groups of ``group_size`` answers:

1. each group draws one question; its persona condition is "no persona" with probability
   ``persona_none_prob``, else a persona drawn uniformly from the task's training pool (one per
   group by default, so advantages compare answers under the same condition; one per answer with
   ``persona_mixing=rollout``);
2. the policy answers every prompt; the environment's verifiable reward scores each answer;
3. advantages are the rewards normalised within their group (a group of equal rewards teaches
   nothing and is skipped); ``inner_iterations`` optimiser steps minimise GRPO's clipped
   surrogate, per answer averaged over its tokens, plus ``kl_coef`` times the k3 KL to the frozen
   base model (:func:`algorithms.losses.grpo_loss`, checked against TRL's own loss). Every
   log-probability is taken at the rollout temperature, as TRL and verl do, so the ratio compares
   the policy with the distribution the answers were sampled from.

RLVR is the same run with ``persona_none_prob=1``. The policy class, rollout workers (Ray
included), checkpoints, resume and evaluation are the ones OPSD uses (:mod:`algorithms.trainer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from agents import score_completions
from algorithms import cli
from algorithms.losses import group_advantages, grpo_loss
from algorithms.rollout import RolloutRequest, RolloutResult
from algorithms.seeds import episode_seed, rollout_seed
from algorithms.trainer import EvalSettings, Trainer, TrainerConfig, accumulated_step, fit
from configs import register, store_settings
from configs.validation import ConfigError, require, require_choice
from envs.tasks import PersonaPool


@dataclass
class RLVRConfig(TrainerConfig):
    """Hyper-parameters of one RLVR / PerMix-RLVR run: the ``algorithm`` group (``algorithm=rlvr|permix``).

    The paper gives no algorithm or hyper-parameters (SPECS B2); these are the project's, sized for
    the embedded 135M model on a 2-core CPU (about 30 minutes with the evaluation).

    Attributes:
        prompts_per_step: Questions (groups) per step.
        group_size: G answers per question.
        clip_eps: GRPO's ratio clipping range.
        kl_coef: Weight of the KL to the frozen base model (0: none, and no reference pass).
        scale_advantages: Divide advantages by their group's std (false: only centre them).
        persona_none_prob: Share of groups asked without a persona (1: RLVR; PerMix mixes personas in).
        persona_mixing: ``group`` (one persona per group) or ``rollout`` (one per answer).
        inner_iterations: Optimiser steps on each batch of answers (GRPO's mu, TRL's
            ``num_iterations``). From the second step on the policy has moved away from the one
            that sampled, so the ratio differs from 1 and the clipping can bind; 1 takes a single
            step, where the ratio is 1 and the clipped surrogate is plain policy gradient.
    """

    # Chosen on the training reward and the eval split (seed 0, docs/rlvr.md): with 4 groups of 8 drills per
    # step at lr 5e-5 the sampled reward rose from 0.33 (steps 1-10) to 0.65 (steps 31-40); 14 minutes.
    steps: int = 40
    lr: float = 5e-5
    head_lr_mult: float = 1.0
    max_new_tokens: int = 48  # a drill's answer is one line; the base model's accuracy was measured at 48 tokens
    # Sampling at 1.0 the embedded model answers 6% of level-1 questions right and writes '####' in
    # 23%; at 0.5, 12.5% and 50% (48 questions, benchmarks/math_accuracy.py --temperature), so more
    # groups hold a right and a wrong answer to learn from.
    temperature: float = 0.5
    prompts_per_step: int = 4
    group_size: int = 8  # at ~12% accuracy a group of 8 holds a right answer 64% of the time, one of 4 only 40%
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    scale_advantages: bool = True
    persona_none_prob: float = 1.0
    persona_mixing: str = "group"
    inner_iterations: int = 1
    # Held-out questions, each asked under all 10 evaluation personas, sampled (seeded, the same draws
    # for every row) at the rollout temperature: greedy answers of the embedded model explain at
    # length before their '####'. 16 questions keep the default run within 30 minutes (24.5 measured,
    # evaluation and fidelity included) but give intervals of +-0.13 to +-0.19 on the mean accuracy;
    # headline numbers ask the whole split with contexts=null (130 eval, 102 test drills; 28 minutes for
    # the test evaluation of a trained row and the base row).
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(contexts=16, max_new_tokens=48, temperature=0.5))

    def __post_init__(self):
        super().__post_init__()
        require(self.prompts_per_step >= 1, "algorithm.prompts_per_step", self.prompts_per_step,
                "must be an integer >= 1")
        require(self.group_size >= 2, "algorithm.group_size", self.group_size,
                "must be an integer >= 2 (advantages compare the answers of a group)")
        require(0 < self.clip_eps < 1, "algorithm.clip_eps", self.clip_eps, "must be in (0, 1)")
        require(self.kl_coef >= 0, "algorithm.kl_coef", self.kl_coef, "must be >= 0")
        require(0 <= self.persona_none_prob <= 1, "algorithm.persona_none_prob", self.persona_none_prob,
                "must be in [0, 1]")
        require_choice("algorithm.persona_mixing", self.persona_mixing, ("group", "rollout"))
        require(self.inner_iterations >= 1, "algorithm.inner_iterations", self.inner_iterations,
                "must be an integer >= 1 (optimiser steps per batch of answers)")


def draw_personas(pool: list[str], groups: int, group_size: int, *, none_prob: float, mixing: str,
                  rng: np.random.Generator) -> list[str]:
    """The persona condition of every answer of a step, group-major (``none``: no persona).

    Args:
        pool: Persona ids to draw from (``none`` is left out of the uniform draw).
        groups: Groups this step.
        group_size: Answers per group.
        none_prob: Probability of the no-persona condition (per group, or per answer).
        mixing: ``group`` (one draw per group) or ``rollout`` (one per answer).
        rng: The step's generator.
    """
    personas = [p for p in pool if p != "none"]

    def draw() -> str:
        if rng.random() < none_prob or not personas:
            return "none"
        return personas[int(rng.integers(len(personas)))]

    if mixing == "group":
        return [p for _ in range(groups) for p in [draw()] * group_size]
    return [draw() for _ in range(groups * group_size)]


class RLVRTrainer(Trainer):
    """GRPO on one head (the task's single persona, e.g. ``solver``) with optional persona mixing."""

    config_cls = RLVRConfig
    name = "rlvr"

    def uses_reference(self) -> bool:
        """The frozen base model is read only by the KL term."""
        return self.settings.kl_coef > 0

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        s = self.settings
        if self.task.max_turns != 1:
            raise ConfigError(f"RLVR trains on single-turn episodes; env={cfg.env.get('_target_')} has "
                              f"{self.task.max_turns} turns per episode.")
        pooled = isinstance(self.task, PersonaPool)
        if s.persona_none_prob < 1 and not pooled:
            raise ConfigError(f"algorithm.persona_none_prob={s.persona_none_prob} mixes personas into the prompts, "
                              "but this task has no persona_pool(); use a persona-prefixed task (env=persona_math) "
                              "or persona_none_prob=1.")
        self.pool_ids = self.task.persona_pool("train") if pooled else ["none"]

    def requests(self, step: int) -> list[RolloutRequest]:
        """``prompts_per_step`` groups of ``group_size`` fresh single-turn episodes, each group on one question."""
        s = self.settings
        g, n = s.prompts_per_step, s.group_size
        rng = np.random.default_rng([int(self.cfg.seed), step])
        personas = draw_personas(self.pool_ids, g, n, none_prob=s.persona_none_prob, mixing=s.persona_mixing,
                                 rng=rng)
        rows = list(range(g * n))
        seeds = [episode_seed(self.cfg.seed, step * g + r // n) for r in rows]  # one question per group
        shards = [list(part) for part in np.array_split(rows, self.num_shards) if len(part)]
        return [RolloutRequest(
            step=step, shard=k, uids=[f"s{step}-q{r // n}-a{r % n}" for r in part], personas=[0] * len(part),
            heads=[0] * len(part), version=self.step, gen_seed=rollout_seed(self.cfg.seed, step, k),
            reset_seeds=[seeds[r] for r in part],
            reset_options=([self.task.persona_options(personas[r]) for r in part]
                           if isinstance(self.task, PersonaPool) else None),
        ) for k, part in enumerate(shards)]

    def learn(self, result: RolloutResult) -> dict[str, Any]:
        """One GRPO update on the step's answers."""
        s = self.settings
        rewards = torch.tensor(result.rewards, dtype=torch.float32)
        advantages = group_advantages(rewards, s.group_size, scale=s.scale_advantages)  # (B,)
        grouped = rewards.view(-1, s.group_size)
        flat_groups = (grouped == grouped[:, :1]).all(1)
        dev, gen = self.device, result.generation
        prompt_ids, prompt_mask = gen.prompt_ids.to(dev), gen.prompt_mask.to(dev)
        completion_ids, completion_mask = gen.completion_ids.to(dev), gen.completion_mask.to(dev)
        old = gen.logprobs.to(dev)
        rows = [i for i in range(len(rewards)) if advantages[i] != 0 or s.kl_coef > 0]  # others add exactly 0
        total = len(rewards)
        self.policy.train()
        trained = torch.tensor(rows, dtype=torch.long)
        iterations = []  # (losses, kls, clipped, ratio deviation, grad norm) of each inner step
        for _ in range(s.inner_iterations if rows else 0):
            losses, kls, clips, moved = [], [], [], []

            def chunk_loss(part: torch.Tensor) -> torch.Tensor:
                idx = trained[part]
                length = int(completion_mask[idx].sum(1).max())
                args = (prompt_ids[idx], prompt_mask[idx], completion_ids[idx, :length], completion_mask[idx, :length])
                # At the rollout temperature: the ratio compares the distribution the answers were sampled from.
                logp = score_completions(self.policy, *args, head=0, temperature=s.temperature)  # (b, T)
                ref = None
                if s.kl_coef > 0:
                    with torch.no_grad():
                        ref = score_completions(self.reference, *args, temperature=s.temperature)
                loss, kl, clipped = grpo_loss(logp, old[idx, :length], advantages[idx].to(dev), args[3],
                                              clip_eps=s.clip_eps, ref_logprobs=ref, beta=s.kl_coef)
                gap = ((logp.detach() - old[idx, :length]).exp() - 1).abs() * args[3]
                losses.extend(loss.detach().tolist())
                kls.extend(kl.tolist())
                clips.extend(clipped.tolist())
                moved.extend((gap.sum(1) / args[3].sum(1).clamp(min=1)).tolist())
                return loss.sum() / total

            grad_norm = accumulated_step(self.optimizer, len(rows), s.micro_batch, chunk_loss, s.max_grad_norm)
            iterations.append((losses, kls, clips, moved, grad_norm))
        losses, kls, clips, moved, grad_norm = iterations[0] if iterations else ([], [], [], [], 0.0)
        last = iterations[-1] if iterations else (losses, kls, clips, moved, grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        conditions = [label["persona"] for label in result.labels]
        metrics: dict[str, Any] = {
            "loss/total": float(np.sum(losses) / total), "train/grad_norm": grad_norm, "train/lr": lr,
            "rl/reward": float(rewards.mean()), "rl/zero_variance_groups": float(flat_groups.float().mean()),
            "rl/kl": float(np.mean(kls)) if kls else 0.0, "rl/clip_fraction": float(np.mean(clips)) if clips else 0.0,
            "rl/clip_fraction_last": float(np.mean(last[2])) if last[2] else 0.0,
            "rl/ratio_deviation_last": float(np.mean(last[3])) if last[3] else 0.0,
            "rl/advantage_abs": float(advantages.abs().mean()), "rl/trained_answers": len(rows),
            "env/turn_tokens": float(gen.completion_mask.sum(1).float().mean()), "turns": result.turn_ids,
        }
        for name, flags in (("no_persona", [c == "none" for c in conditions]),
                            ("persona", [c != "none" for c in conditions])):
            chosen = [r for r, f in zip(result.rewards, flags) if f]
            if chosen:
                metrics[f"rl/reward_{name}"] = float(np.mean(chosen))
        for key, values in self.task.step_metrics(result.actions, result.infos).items():
            metrics[f"env/{key}"] = float(np.mean(values))
        return metrics

    def progress(self, metrics: dict[str, Any]) -> dict[str, str]:
        """Loss, reward and the share of groups that taught nothing, for the progress bar."""
        return {"loss": f"{metrics['loss/total']:+.4f}", "reward": f"{metrics['rl/reward']:.2f}",
                "flat": f"{metrics['rl/zero_variance_groups']:.2f}"}


def train(cfg: DictConfig, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Trains (or continues) one RLVR / PerMix run and returns its summary (see :func:`algorithms.trainer.fit`)."""
    return fit(RLVRTrainer, cfg, run_dir, resume=resume)


def evaluate_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluates the saved policy of a finished RLVR / PerMix run with the run's own task settings."""
    return cli.evaluate_run(RLVRTrainer, cfg, Path(run_dir))


store_settings("algorithm", "rlvr", RLVRConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="rlvr")
def _main(cfg: DictConfig) -> None:
    cli.run(RLVRTrainer, cfg)


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()

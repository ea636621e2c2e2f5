"""Multi-action-head on-policy self-distillation (MAH-OPSD) and its single-head ablation (MT-OPSD).

Run it with Hydra (configs/opsd.yaml)::

    python -m algorithms.opsd env=tutoring                       # embedded SmolLM2-135M, scripted student
    python -m algorithms.opsd env=tutoring algorithm=opsd_quick  # ~2 minute smoke run
    python -m algorithms.opsd env=tutoring algorithm.variant=mt  # MT-OPSD: one head takes every loss
    python -m algorithms.opsd resume=runs/opsd/<run>             # continue from the last checkpoint
    python -m algorithms.opsd evaluate=runs/opsd/<run>           # (re-)evaluate a finished run

One training step, for every persona d (teaching style) and each of its live episodes:

1. head d (the shared head for MT) samples the next turn from the observation alone;
2. the environment answers with its privileged feedback (the student's reply);
3. the frozen base model scores the sampled tokens under a privileged prompt that differs from the
   policy's only by a block holding persona d's label and that feedback;
4. the turn's loss is the reverse KL from the head to that teacher on the head's top-k tokens,
   averaged over the turn's tokens; the step minimises ``sum_d alpha_d mean(L_d)``.

Episodes run for ``turns_per_episode`` turns before fresh ones start, so later turns are trained on
states the policy itself reached. Where the feedback is about the head's own persona (the persona
critic critiques facet d for head d), each episode's persona is pinned to its head's; where the
persona label is the environment's hidden state (the tutoring student's learning style), it is drawn
independently of the head, so every head meets matched and mismatched episodes. The run loop,
checkpoints and resume are :mod:`algorithms.trainer`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from agents import MultiHeadPolicy, completion_logits
from agents.generation import encode_prompts
from algorithms import cli
from algorithms.losses import (
    advantage_loss,
    centred_advantages,
    contrastive_teacher_logits,
    feedback_contrastive_logits,
    feedback_shift,
    normalized_alphas,
    opsd_sequence_loss,
    sampled_logprobs,
)
from algorithms.rollout import RolloutRequest, RolloutResult
from algorithms.seeds import episode_seed, rollout_seed
from algorithms.trainer import EvalSettings, Trainer, TrainerConfig, accumulated_step, fit
from configs import register, store_settings
from configs.validation import ConfigError, require, require_choice, structured


@dataclass
class OPSDConfig(TrainerConfig):
    """Hyper-parameters of one OPSD run: the ``algorithm`` config group (``algorithm=opsd``).

    These defaults (with :class:`algorithms.trainer.TrainerConfig`'s) are the only place they are
    written: presets such as ``configs/algorithm/opsd_quick.yaml`` override some of them, and every
    value is checked before anything is loaded. They are sized for the embedded 135M model on a
    2-core CPU (about 20 minutes for tutoring, with the learning curve) and were chosen by the sweeps
    in docs/tutoring.md (the sweeps): a learning rate of 3e-4 on the shared layers and
    training on each dialogue's first teacher turn only separated the heads most within that time.
    Other envs set their own in ``configs/env_opsd/<env>.yaml``.

    Attributes:
        lr: Learning rate of the shared trainable layers (overrides the trainer's default).
        variant: ``mah`` (one head per persona) or ``mt`` (one shared head: the MT-OPSD ablation).
        episodes_per_persona: Live episodes per persona; each step samples one turn in each.
        turns_per_episode: Turns before an episode is replaced by a fresh one (<= the env's episode
            length); 1 trains on first turns only, where the student's style shows most.
        topk: Size of the student's top-k support for the reverse KL (null: full vocabulary).
        alphas: Per-persona loss weights (null: uniform); rescaled to sum to 1.
        contrast: Per-persona strength ``w_d`` of the contrastive teacher, in persona order like
            ``alphas`` (null: the paper's plain teacher for every persona). With ``w_d > 0``, persona
            d's teacher becomes ``(1 + w_d) log q_d - w_d mean_j log q_j`` over the other personas'
            privileged prompts (:func:`algorithms.losses.contrastive_teacher_logits`), which
            amplifies what sets d apart, at one more teacher pass per other persona for d's turns.
            Not in the paper. Off here; the tutoring env turns it on for its INTERACTIVE persona
            (``configs/env_opsd/tutoring.yaml``), whose blocks name the episode's topic: with
            blocks that differ in other words the trained head repeats those words instead (docs/tutoring.md,
            "The contrastive teacher"; ``benchmarks/teacher_contrast.py`` measures a teacher before
            training).
        contrast_plausibility: ``alpha`` in ``[0, 1)`` for the contrastive teacher: only tokens the
            plain teacher gives at least ``alpha`` times its top token's probability are contrasted
            (the adaptive plausibility constraint of contrastive decoding); 0 contrasts every token.
            Has no effect without ``contrast``.
        feedback_contrast: Strength ``w`` of the feedback-contrastive teacher (0: off, the paper's
            teacher): ``(1 + w) log q(. | feedback) - w log q(. | no feedback)``, guidance between
            the privileged prompts with and without the feedback
            (:func:`algorithms.losses.feedback_contrastive_logits`), applied after any persona
            contrast; one more teacher pass per turn. Needs a task that shows the teacher its
            feedback (``env.teacher_feedback=true``); otherwise both prompts agree and it changes
            nothing.
        feedback_advantage: Weight ``beta`` of the feedback advantage (0: off, the paper's OPSD).
            With ``beta > 0`` the feedback is no longer distilled: every head is distilled towards
            the teacher *without* the feedback (as with ``env.teacher_feedback=false``), and each
            turn also gets the policy-gradient loss ``beta * -A (1/|y|) sum_t log pi(y_t)``. Its
            advantage ``A`` is the turn's feedback shift (:func:`algorithms.losses.feedback_shift`:
            how much the feedback raises the frozen teacher's log-probability of the turn) centred
            within its persona's rows and scaled by the batch's spread. So the teacher reading the
            feedback acts as a judge of the sampled turn instead of proposing a replacement turn.
            Only rows whose hidden persona matches the head get an advantage (every row where the
            feedback follows the head): a tutoring head that met the other style's student would
            otherwise be rewarded for teaching in that style.
            Needs a task that shows the teacher its feedback (``env.teacher_feedback=true``); costs
            one more teacher pass per turn. Not in the paper.
    """

    lr: float = 3e-4
    variant: str = "mah"
    episodes_per_persona: int = 4
    turns_per_episode: int = 1
    topk: int | None = 256
    alphas: list[float] | None = None
    contrast: list[float] | None = None
    contrast_plausibility: float = 0.0
    feedback_contrast: float = 0.0
    feedback_advantage: float = 0.0
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(every=10, curve_contexts=8))

    def __post_init__(self):
        super().__post_init__()
        require_choice("algorithm.variant", self.variant, ("mah", "mt"))
        for key in ("episodes_per_persona", "turns_per_episode"):
            require(getattr(self, key) >= 1, f"algorithm.{key}", getattr(self, key), "must be an integer >= 1")
        require(self.topk is None or self.topk >= 1, "algorithm.topk", self.topk,
                "must be an integer >= 1 (the size of the student's top-k support), or null for the full vocabulary")
        require(self.alphas is None or (all(a >= 0 for a in self.alphas) and sum(self.alphas) > 0),
                "algorithm.alphas", self.alphas, "must be null or non-negative weights with a positive sum")
        require(self.contrast is None or all(w >= 0 for w in self.contrast), "algorithm.contrast", self.contrast,
                "must be null or one non-negative weight per persona (0: that persona's plain teacher)")
        require(self.feedback_contrast >= 0, "algorithm.feedback_contrast", self.feedback_contrast,
                "must be >= 0 (0: the plain teacher)")
        require(self.feedback_advantage >= 0, "algorithm.feedback_advantage", self.feedback_advantage,
                "must be >= 0 (0: off)")
        require(not (self.feedback_advantage > 0 and self.feedback_contrast > 0), "algorithm.feedback_advantage",
                self.feedback_advantage, "cannot be combined with algorithm.feedback_contrast > 0: the advantage "
                "distils the teacher without the feedback, so there is no feedback teacher to contrast; set one of "
                "them to 0")
        require(0.0 <= self.contrast_plausibility < 1.0, "algorithm.contrast_plausibility", self.contrast_plausibility,
                "must be in [0, 1): the share of the plain teacher's top-token probability a token needs to be "
                "contrasted (0: every token)")


def algorithm_config(cfg: DictConfig) -> OPSDConfig:
    """The ``algorithm`` node as a checked :class:`OPSDConfig` (raises ConfigError naming a bad key)."""
    return structured(OPSDConfig, cfg.algorithm, "algorithm")


# ----------------------------------------------------------------------------------------------
# One distillation update
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
        contrast: For the contrastive teacher, one ``(ids, mask)`` pair of privileged prompts per
            other persona: slot i of row r holds the prompt of the i-th persona other than row r's
            (empty: the plain teacher for every row).
        contrast_weights: ``(B,)`` each row's contrast weight (None: 0 for every row); only rows
            with a positive weight are scored under the other prompts.
        contrast_plausibility: Plausibility threshold ``alpha`` of the contrast (0: every token).
        feedback_free: ``(ids, mask)`` of the privileged prompts without the feedback, for the
            feedback-contrastive teacher (None: off).
        feedback_contrast: Its strength ``w``.
        with_feedback: ``(ids, mask)`` of the privileged prompts with the feedback, for the feedback
            advantage (None: off); ``teacher_ids`` then hold the prompts without it.
        feedback_advantage: Its weight ``beta``.
        advantage_groups: Rows whose shifts are centred together (None: each group's rows); rows in
            none get advantage 0.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    groups: list[tuple[int, list[int], float]]
    contrast: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    contrast_weights: torch.Tensor | None = None
    contrast_plausibility: float = 0.0
    feedback_free: tuple[torch.Tensor, torch.Tensor] | None = None
    feedback_contrast: float = 0.0
    with_feedback: tuple[torch.Tensor, torch.Tensor] | None = None
    feedback_advantage: float = 0.0
    advantage_groups: list[list[int]] | None = None


@dataclass
class DistillStats:
    """What one distillation update reports.

    Attributes:
        group_loss: Mean per-turn loss of each group (distillation plus any advantage term).
        grad_norm: Gradient norm before clipping.
        shift: ``(B,)`` each turn's feedback shift (None without the feedback advantage).
        advantages: ``(B,)`` the advantages taken from it (None without the feedback advantage).
    """

    group_loss: list[float]
    grad_norm: float
    shift: torch.Tensor | None = None
    advantages: torch.Tensor | None = None


def distill_step(
    policy: MultiHeadPolicy,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: DistillBatch,
    *,
    topk: int | None,
    micro_batch: int,
    max_grad_norm: float,
) -> DistillStats:
    """One OPSD update: minimises ``sum_g alpha_g mean_{rows of g} L_row`` and steps the optimiser.

    Each row goes through its group's head only (only that head's logits are computed); rows of all
    groups are packed into chunks of ``micro_batch`` with a backward pass per chunk to bound
    memory; the teacher runs without gradients. Rows with a positive ``batch.contrast_weights``
    learn from the contrastive teacher (:func:`algorithms.losses.contrastive_teacher_logits`), and
    with ``batch.feedback_contrast`` every row's teacher is then contrasted against its prompt
    without the feedback (:func:`algorithms.losses.feedback_contrastive_logits`). With
    ``batch.feedback_advantage`` every turn's feedback shift is measured first (one more teacher
    pass than plain OPSD: the pass without the feedback is kept for the loss; no gradient), turned
    into advantages within each group, and each row adds ``beta`` times its policy-gradient loss
    (:func:`algorithms.losses.advantage_loss`).

    Returns:
        The mean per-turn loss of each group, the gradient norm before clipping, and any shifts
        and advantages.
    """
    length = int(batch.completion_mask.sum(1).max())
    comp, comp_mask = batch.completion_ids[:, :length], batch.completion_mask[:, :length]
    # Rows of every group share micro-batches (so K heads cost as many backbone passes as one);
    # each row goes through its own head (a head index per row) and carries alpha_g / |g|.
    order = [(g, row) for g, (_, rows, _) in enumerate(batch.groups) for row in rows]
    head_of = torch.tensor([batch.groups[g][0] for g, _ in order])
    scale = torch.tensor([batch.groups[g][2] / len(batch.groups[g][1]) for g, _ in order])
    rows_all = torch.tensor([row for _, row in order])
    policy.train()
    group_total = [0.0] * len(batch.groups)

    def score(ids, mask, rows):  # (b, T, V) teacher logits of these rows' turns under the given prompts
        with torch.no_grad():
            return completion_logits(teacher, *_trim_left(ids[rows], mask[rows]), comp[rows], comp_mask[rows])

    shift = advantages = None
    plain_teacher: dict[int, torch.Tensor] = {}  # chunk start -> its teacher logits, kept from the shift's pass
    if batch.with_feedback is not None and batch.feedback_advantage > 0:
        shift = torch.zeros(len(comp))
        for start in range(0, len(order), micro_batch):  # the chunks accumulated_step will ask for, in its order
            rows = rows_all[start:start + micro_batch]
            plain_teacher[start] = score(batch.teacher_ids, batch.teacher_mask, rows)
            shift[rows] = feedback_shift(score(*batch.with_feedback, rows), plain_teacher[start], comp[rows],
                                         comp_mask[rows]).cpu()
        groups = batch.advantage_groups
        advantages = centred_advantages(shift, [rows for _, rows, _ in batch.groups] if groups is None else groups)

    def chunk_loss(part: torch.Tensor) -> torch.Tensor:
        idx = rows_all[part]
        with torch.no_grad():
            teacher_logits = plain_teacher.pop(int(part[0]), None)
            if teacher_logits is None:
                teacher_logits = score(batch.teacher_ids, batch.teacher_mask, idx)
            if batch.contrast and batch.contrast_weights is not None:
                w = batch.contrast_weights[idx]
                on = (w > 0).nonzero()[:, 0]
                if len(on):
                    teacher_logits = teacher_logits.float()
                    teacher_logits[on] = contrastive_teacher_logits(
                        teacher_logits[on], [score(ids, mask, idx[on]) for ids, mask in batch.contrast],
                        w[on, None, None].to(teacher_logits), batch.contrast_plausibility)
            if batch.feedback_free is not None and batch.feedback_contrast > 0:
                teacher_logits = feedback_contrastive_logits(
                    teacher_logits, score(*batch.feedback_free, idx), batch.feedback_contrast)
        student_logits = completion_logits(policy, *_trim_left(batch.prompt_ids[idx], batch.prompt_mask[idx]),
                                           comp[idx], comp_mask[idx], head=head_of[part])  # (b, T, V)
        per_turn = opsd_sequence_loss(student_logits, teacher_logits, comp_mask[idx], topk)  # (b,)
        if advantages is not None:
            per_turn = per_turn + batch.feedback_advantage * advantage_loss(
                sampled_logprobs(student_logits, comp[idx]), advantages[idx].to(per_turn), comp_mask[idx])
        for position, value in zip(part.tolist(), per_turn.detach().tolist()):
            group_total[order[position][0]] += value
        return (per_turn * scale[part].to(per_turn)).sum()

    grad_norm = accumulated_step(optimizer, len(order), micro_batch, chunk_loss, max_grad_norm)
    group_loss = [total / len(rows) if rows else float("nan")
                  for total, (_, rows, _) in zip(group_total, batch.groups)]
    return DistillStats(group_loss, grad_norm, shift, advantages)


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class OPSDTrainer(Trainer):
    """MAH-OPSD / MT-OPSD: live episodes per persona, one turn each per step, distilled towards the privileged teacher.

    The live episodes are ``episodes_per_persona`` per persona, in persona-major rows; their
    states live here (and in checkpoints), and every step sends them to the rollout pool, which
    takes one turn in each.
    """

    config_cls = OPSDConfig
    name = "opsd"

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        s = self.settings
        if s.turns_per_episode > self.task.max_turns:
            turns = self.task.max_turns
            raise ConfigError(f"algorithm.turns_per_episode={s.turns_per_episode} is not allowed: the env's "
                              f"episodes last {turns} turns. Pass algorithm.turns_per_episode={turns}, "
                              "or set it once for the env in configs/env_opsd/<env>.yaml.")
        try:
            self.alphas = normalized_alphas(s.alphas, len(self.personas))
        except ValueError as err:
            raise ConfigError(f"algorithm.alphas={s.alphas} is not allowed: {err}") from None
        if s.contrast is not None and len(s.contrast) != len(self.personas):
            raise ConfigError(f"algorithm.contrast={s.contrast} is not allowed: it needs one weight per persona "
                              f"({len(self.personas)}: {', '.join(p.name for p in self.personas)}), or null. An env "
                              f"may set its own in configs/env_opsd/<env>.yaml; with other personas, set it on the "
                              f"command line (algorithm.contrast=[{','.join(['0'] * len(self.personas))}] or "
                              f"algorithm.contrast=null).")
        n = s.episodes_per_persona
        self.row_persona = [p for p in range(len(self.personas)) for _ in range(n)]

    @property
    def teacher(self) -> nn.Module:
        """The frozen base model that scores turns under the privileged prompt."""
        return self.reference

    @property
    def policy_variant(self) -> str:
        """``mah`` or ``mt``, from ``algorithm.variant``."""
        return self.settings.variant

    def requests(self, step: int) -> list[RolloutRequest]:
        """The rollout requests for ``step``: one turn in every live episode, split into shards.

        Every ``turns_per_episode`` steps the episodes are replaced by fresh ones, with seeds fixed
        by the run seed, the episode and the row; the sampling seed is fixed by the step and the
        shard, so a request gives the same turns wherever it runs.
        """
        num, n = len(self.personas), self.settings.episodes_per_persona
        episode = step // self.settings.turns_per_episode
        fresh = step % self.settings.turns_per_episode == 0
        if not fresh and self.episodes is None:
            raise RuntimeError(f"step {step} continues episodes, but none are live")
        rows = list(range(num * n))
        uids = [f"e{episode}-{self.personas[p].name}-{r % n}" for r, p in zip(rows, self.row_persona)]
        shards = [list(part) for part in np.array_split(rows, self.num_shards) if len(part)]
        out = []
        for k, part in enumerate(shards):
            personas = [self.row_persona[r] for r in part]
            out.append(RolloutRequest(
                step=step, shard=k, uids=[uids[r] for r in part], personas=personas,
                heads=[self.head_of(p) for p in personas], version=self.step,
                gen_seed=rollout_seed(self.cfg.seed, step, k),
                turn=step % self.settings.turns_per_episode + 1,
                reset_seeds=[episode_seed(self.cfg.seed, episode * num * n + r) for r in part] if fresh else None,
                reset_options=[self.task.persona_options(self.personas[p].name) for p in personas]
                if fresh and self.task.feedback_follows_head else None,
                states=None if fresh else [self.episodes[r] for r in part],
            ))
        return out

    def learn(self, result: RolloutResult) -> dict[str, Any]:
        """Distils the policy on one step's turns and takes one optimiser step."""
        num, n = len(self.personas), self.settings.episodes_per_persona
        if result.personas != self.row_persona:
            raise RuntimeError("the rollout rows do not follow the trainer's persona-major order")
        s = self.settings
        advantage = s.feedback_advantage > 0
        # With the feedback advantage the feedback judges each turn and is not distilled: the
        # teacher (and any persona contrast) then sees the prompts without it.
        no_feedback = [None] * len(result.feedback)
        distilled = no_feedback if advantage else result.feedback

        def prompts(personas, feedback):
            return encode_prompts(self.tokenizer, [self.task.teacher_messages(o, self.personas[p], fb)
                                                   for p, o, fb in zip(personas, result.prompts, feedback)],
                                  self.device)

        t_ids, t_mask = prompts(result.personas, distilled)
        contrast, contrast_weights = [], None
        if s.contrast is not None and any(w > 0 for w in s.contrast):  # slot i: each row's i-th other persona
            others = [[j for j in range(num) if j != p] for p in result.personas]
            contrast = [prompts([js[i] for js in others], distilled) for i in range(num - 1)]
            contrast_weights = torch.tensor([float(s.contrast[p]) for p in result.personas])
        feedback_free = prompts(result.personas, no_feedback) if s.feedback_contrast > 0 else None
        with_feedback = prompts(result.personas, result.feedback) if advantage else None
        if with_feedback is not None and with_feedback[0].shape == t_ids.shape and torch.equal(with_feedback[0], t_ids):
            raise ConfigError(f"algorithm.feedback_advantage={s.feedback_advantage} needs a teacher that sees the "
                              "feedback, but this task's privileged prompts are the same with and without it. "
                              "Pass env.teacher_feedback=true (or algorithm.feedback_advantage=0).")
        matched = [label.get("persona") == self.personas[p].name for p, label in zip(result.personas, result.labels)]
        dev, gen = self.device, result.generation
        batch = DistillBatch(gen.prompt_ids.to(dev), gen.prompt_mask.to(dev), t_ids, t_mask,
                             gen.completion_ids.to(dev), gen.completion_mask.to(dev),
                             groups=[(self.head_of(p), list(range(p * n, (p + 1) * n)), self.alphas[p])
                                     for p in range(num)], contrast=contrast, contrast_weights=contrast_weights,
                             contrast_plausibility=s.contrast_plausibility,
                             feedback_free=feedback_free, feedback_contrast=s.feedback_contrast,
                             with_feedback=with_feedback, feedback_advantage=s.feedback_advantage,
                             advantage_groups=[[r for r in range(p * n, (p + 1) * n) if matched[r]]
                                               for p in range(num)])
        lr = self.optimizer.param_groups[0]["lr"]
        stats = distill_step(self.policy, self.teacher, self.optimizer, batch, topk=s.topk,
                             micro_batch=s.micro_batch, max_grad_norm=s.max_grad_norm)
        head_loss, grad_norm = stats.group_loss, stats.grad_norm
        names = [p.name for p in self.personas]

        def mean_where(values, flags):
            chosen = [v for v, f in zip(values, flags) if f]
            return float(np.mean(chosen)) if chosen else float("nan")

        metrics: dict[str, Any] = {"loss/total": float(sum(a * loss for a, loss in zip(self.alphas, head_loss)))}
        for p, name in enumerate(names):
            rows = slice(p * n, (p + 1) * n)
            metrics[f"loss/{name}"] = head_loss[p]
            metrics[f"env/reward_{name}"] = float(np.mean(result.rewards[rows]))
        metrics["env/reward"] = float(np.mean(result.rewards))
        if not self.task.feedback_follows_head:  # otherwise every episode is its head's own persona
            metrics["env/reward_matched"] = mean_where(result.rewards, matched)
            metrics["env/reward_mismatched"] = mean_where(result.rewards, [not m for m in matched])
        for key, values in self.task.step_metrics(result.actions, result.infos).items():
            for p, name in enumerate(names):
                metrics[f"env/{key}_{name}"] = float(np.mean(values[p * n:(p + 1) * n]))
        if stats.shift is not None:  # does the teacher's reading of the feedback track the env's reward?
            shift = stats.shift.tolist()  # matched rows only: the ones the advantage uses
            rewarded = [r > 0 for r in result.rewards]
            metrics["feedback/shift_rewarded"] = mean_where(shift, [r and m for r, m in zip(rewarded, matched)])
            metrics["feedback/shift_unrewarded"] = mean_where(shift, [not r and m for r, m in zip(rewarded, matched)])
        metrics.update({"env/turn_tokens": float(gen.completion_mask.sum(1).float().mean()),
                        "train/grad_norm": grad_norm, "train/lr": lr, "turns": result.turn_ids})
        return metrics

    def progress(self, metrics: dict[str, Any]) -> dict[str, str]:
        """Loss and reward (and matched / mismatched reward where personas are drawn apart from heads)."""
        shown = {"loss": f"{metrics['loss/total']:.4f}", "reward": f"{metrics['env/reward']:+.2f}"}
        for key in ("matched", "mismatched"):
            if f"env/reward_{key}" in metrics:
                shown[key] = f"{metrics[f'env/reward_{key}']:+.2f}"
        return shown


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------


def train(cfg: DictConfig, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Trains (or continues) one OPSD run and returns its summary (see :func:`algorithms.trainer.fit`)."""
    return fit(OPSDTrainer, cfg, run_dir, resume=resume)


def evaluate_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluates the saved policy of a finished OPSD run with the run's own task settings."""
    return cli.evaluate_run(OPSDTrainer, cfg, Path(run_dir))


store_settings("algorithm", "opsd", OPSDConfig)


@hydra.main(version_base="1.3", config_path="../configs", config_name="opsd")
def _main(cfg: DictConfig) -> None:
    cli.run(OPSDTrainer, cfg)


def main() -> None:
    """Entry point: registers the structured configs, then lets Hydra compose and run."""
    register()
    _main()


if __name__ == "__main__":
    main()

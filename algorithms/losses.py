"""Pure loss functions of the trainers (no model, no state; shapes in each docstring).

Notation: B sequences (or router examples), T completion positions, V vocabulary, K heads (or, for
the top-K support, the number of kept tokens ``k``).

- Self-distillation (OPSD): :func:`topk_reverse_kl`, :func:`opsd_sequence_loss`,
  :func:`contrastive_teacher_logits`, :func:`feedback_contrastive_logits`, :func:`weighted_head_sum`,
  :func:`normalized_alphas`; the feedback advantage: :func:`feedback_shift`,
  :func:`centred_advantages`, :func:`advantage_loss` (with :func:`sampled_logprobs`).
- Router learning: :func:`matched_head_loss`, :func:`pairwise_preference_loss` (REBEL-style),
  :func:`hedge_targets` / :func:`hedge_router_loss` (MiCRo-style), :func:`pairwise_log_losses`,
  :func:`bt_mixture_loss` (MiCRo's Stage 1), :func:`hedge_step` and
  :func:`reaction_head_losses` (the benchmark's online router), :func:`weight_entropy`,
  :func:`soft_cross_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean over valid positions.

    Args:
        values: ``(B, T)`` per-token values.
        mask: ``(B, T)`` 1 for positions that count, 0 otherwise.

    Returns:
        ``(B,)`` mean of each row over its masked positions (0 for a row with none).
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def topk_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int | None = 256
) -> torch.Tensor:
    """Per-token reverse KL ``KL(p || q)`` on the student's top-``k`` tokens, both renormalised there.

    For each position, ``S`` is the set of the student's ``k`` most likely tokens; ``p`` and ``q``
    are the student's and teacher's softmax restricted to ``S``. The teacher is treated as a
    constant (no gradient reaches it). With ``k >= V`` (or None) this is the full reverse KL.

    Args:
        student_logits: ``(..., V)`` student logits (differentiable).
        teacher_logits: ``(..., V)`` teacher logits at the same positions.
        k: Size of the support; None for the whole vocabulary.

    Returns:
        ``(...)`` non-negative KL per position.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"Student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}.")
    teacher_logits = teacher_logits.detach()
    vocab = student_logits.shape[-1]
    if k is not None and k < vocab:
        idx = student_logits.detach().topk(k, dim=-1).indices  # (..., k)
        student_logits = student_logits.gather(-1, idx)
        teacher_logits = teacher_logits.gather(-1, idx)
    log_p = torch.log_softmax(student_logits.float(), dim=-1)
    log_q = torch.log_softmax(teacher_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)


def opsd_sequence_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, k: int | None = 256
) -> torch.Tensor:
    """Self-distillation loss of each sampled turn: top-k reverse KL averaged over its tokens.

    Args:
        student_logits: ``(B, T, V)`` student logits at the turn's positions.
        teacher_logits: ``(B, T, V)`` teacher logits at the same positions (privileged context).
        mask: ``(B, T)`` 1 for the turn's real tokens.
        k: Top-k support size (None: full vocabulary).

    Returns:
        ``(B,)`` per-turn loss ``L = (1/|y|) sum_t KL_t``.
    """
    return masked_mean(topk_reverse_kl(student_logits, teacher_logits, k), mask)


def contrastive_teacher_logits(
    own: torch.Tensor, others: Sequence[torch.Tensor], weight: float | torch.Tensor, plausibility: float = 0.0
) -> torch.Tensor:
    """A teacher that amplifies what sets one persona apart from the others.

    ``(1 + w) log q_d - w mean_j log q_j``, where ``q_d`` is the teacher under persona d's
    privileged prompt and ``q_j`` the same teacher under each other persona's prompt (same
    dialogue, same feedback). It is the contrast of classifier-free guidance, taken between
    personas: tokens every persona's prompt likes equally keep their odds, tokens persona d's
    prompt likes more than the others' gain by a factor ``(q_d / q_j)^w``. ``w = 0`` (or no other
    persona) gives the plain teacher back; the result is unnormalised log-probabilities, which
    :func:`topk_reverse_kl` renormalises on its support.

    ``plausibility`` (``alpha`` in ``[0, 1)``) is the adaptive plausibility constraint of
    contrastive decoding: only tokens with ``q_d(v) >= alpha * max_u q_d(u)`` are contrasted, the
    others keep the plain teacher's ``log q_d``, so the contrast can reorder what persona d's
    teacher already finds likely but cannot lift a token it would hardly ever write (a word of
    the other block, a name from nowhere). ``alpha = 0`` contrasts every token.

    Args:
        own: ``(..., V)`` teacher logits under the persona's own prompt.
        others: Teacher logits under each other persona's prompt, each shaped like ``own``.
        weight: ``w >= 0``, the strength of the contrast: a number, or a tensor that broadcasts
            against ``own`` (``(B, 1, 1)`` gives each sequence its own weight).
        plausibility: ``alpha``, the share of the most likely token's probability below which a
            token is left uncontrasted.

    Returns:
        ``(..., V)`` logits of the contrastive teacher (``own`` itself when there is no contrast).
    """
    w = torch.as_tensor(weight, dtype=torch.float32, device=own.device)
    if bool((w < 0).any()):
        raise ValueError(f"The contrast weight must be >= 0, got {weight}.")
    if not 0.0 <= plausibility < 1.0:
        raise ValueError(f"The plausibility threshold must be in [0, 1), got {plausibility}.")
    if not others or not bool((w != 0).any()):
        return own
    for other in others:
        if other.shape != own.shape:
            raise ValueError(f"Teacher logits differ in shape: {tuple(own.shape)} vs {tuple(other.shape)}.")
    log_own = torch.log_softmax(own.float(), dim=-1)
    log_ref = torch.stack([torch.log_softmax(o.float(), dim=-1) for o in others]).mean(0)
    mixed = (1 + w) * log_own - w * log_ref
    if plausibility > 0:
        plausible = log_own >= log_own.amax(-1, keepdim=True) + math.log(plausibility)
        mixed = torch.where(plausible, mixed, log_own)
    return mixed



def feedback_contrastive_logits(with_feedback: torch.Tensor, without_feedback: torch.Tensor,
                                weight: float | torch.Tensor) -> torch.Tensor:
    """A teacher that amplifies what the privileged feedback changes.

    ``(1 + w) log q(. | context, feedback) - w log q(. | context)``: guidance between the teacher's
    prompts with and without the feedback (the student's reply, the critique), so tokens the
    feedback makes likelier gain by ``(q_fb / q_none)^w`` and tokens it leaves alone keep their
    odds. ``w = 0`` is the plain teacher. It is :func:`contrastive_teacher_logits` with the
    feedback-free prompt as the single other context, so it composes with a persona contrast
    applied first.

    Args:
        with_feedback: ``(..., V)`` teacher logits under the privileged prompt with the feedback.
        without_feedback: The same prompt without the feedback, shaped like ``with_feedback``.
        weight: ``w >= 0``: a number, or a tensor that broadcasts against the logits.

    Returns:
        ``(..., V)`` unnormalised log-probabilities of the feedback-contrastive teacher.
    """
    return contrastive_teacher_logits(with_feedback, [without_feedback], weight)


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` log-probabilities of ``tokens`` (``(B, T)``) under ``(B, T, V)`` logits (in float32)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None].long())[..., 0]


def feedback_shift(with_feedback: torch.Tensor, without_feedback: torch.Tensor, tokens: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """How much the privileged feedback raises the teacher's probability of each sampled turn.

    ``Delta = (1/|y|) sum_t [log q(y_t | context, feedback) - log q(y_t | context)]``: the mean
    per-token log-probability shift the feedback causes. A turn the feedback makes more plausible
    (the student answered "Ohh, that's clever") gets a positive shift; ``benchmarks/feedback_signal.py``
    measures how well it separates good turns from bad ones (its AUC).

    Args:
        with_feedback: ``(B, T, V)`` teacher logits under the prompt with the feedback.
        without_feedback: ``(B, T, V)`` the same teacher under the prompt without it.
        tokens: ``(B, T)`` the sampled turn's tokens.
        mask: ``(B, T)`` 1 for the turn's real tokens.

    Returns:
        ``(B,)`` the shift of each turn (0 for a row with no tokens).
    """
    return masked_mean(sampled_logprobs(with_feedback, tokens) - sampled_logprobs(without_feedback, tokens), mask)


def centred_advantages(values: torch.Tensor, groups: Sequence[Sequence[int]], eps: float = 1e-4) -> torch.Tensor:
    """Advantages from per-row scores: each row minus its group's mean, over the spread of the batch.

    Centring within a group (one persona's rows) removes what every turn of that persona shares;
    dividing by the standard deviation of all centred values (not each group's, which is noisy
    with a handful of rows) puts the advantages on a unit scale whatever the score's units.

    Args:
        values: ``(B,)`` one score per row.
        groups: Row indices of each group; rows in no group get advantage 0.
        eps: Keeps a batch of equal scores at 0 instead of 0/0.

    Returns:
        ``(B,)`` advantages in float32; a group of one row, or of equal scores, gets exactly 0.
    """
    values = values.detach().float()
    centred = torch.zeros_like(values)
    for rows in groups:
        if len(rows):
            idx = torch.as_tensor(list(rows), dtype=torch.long, device=values.device)
            centred[idx] = values[idx] - values[idx].mean()
    spread = centred.std() if centred.numel() > 1 else centred.new_zeros(())
    return centred / (spread + eps)


def advantage_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """On-policy policy-gradient loss of each sampled turn: ``-A (1/|y|) sum_t log pi(y_t)``.

    Its gradient raises the probability of turns with a positive advantage and lowers it for a
    negative one (REINFORCE on samples from the current policy, so no importance ratio).

    Args:
        logprobs: ``(B, T)`` log-probabilities of the sampled tokens under the policy (differentiable).
        advantages: ``(B,)`` one advantage per turn (treated as a constant).
        mask: ``(B, T)`` 1 for the turn's real tokens.

    Returns:
        ``(B,)`` per-turn loss.
    """
    return -advantages.detach().to(logprobs.dtype) * masked_mean(logprobs, mask)


def weighted_head_sum(per_head: Sequence[torch.Tensor], alphas: Sequence[float]) -> torch.Tensor:
    """MAH-OPSD objective ``sum_d alpha_d L_d`` from per-head scalar losses.

    Args:
        per_head: K scalar losses (each already averaged over that head's turns).
        alphas: K non-negative weights.

    Returns:
        The scalar objective.
    """
    if len(per_head) != len(alphas):
        raise ValueError(f"Got {len(per_head)} head losses but {len(alphas)} alphas.")
    if any(a < 0 for a in alphas):
        raise ValueError(f"alphas must be non-negative, got {list(alphas)}.")
    return sum(a * loss for a, loss in zip(alphas, per_head))


def normalized_alphas(alphas: Sequence[float] | None, num: int) -> list[float]:
    """Head weights that sum to 1: uniform when None, else the given ones rescaled.

    Args:
        alphas: Weights, or None.
        num: Number of heads (or styles).

    Returns:
        ``num`` floats summing to 1.
    """
    if alphas is None:
        return [1.0 / num] * num
    alphas = [float(a) for a in alphas]
    if len(alphas) != num or any(a < 0 for a in alphas) or sum(alphas) <= 0:
        raise ValueError(f"alphas must be {num} non-negative numbers with a positive sum, got {alphas}.")
    total = sum(alphas)
    return [a / total for a in alphas]


# ----------------------------------------------------------------------------------------------
# Router losses (B examples, K heads)
# ----------------------------------------------------------------------------------------------


def matched_head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the router to the matched head as a one-hot target.

    Args:
        logits: ``(B, K)`` router logits.
        target: ``(B,)`` index of the head that matches each prefix's (hidden) student type.

    Returns:
        Scalar mean cross-entropy.
    """
    return F.cross_entropy(logits.float(), target.long())


def weight_entropy(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(B,)`` entropy in nats of ``(B, K)`` weight rows (0 log 0 taken as 0)."""
    return -(weights * weights.clamp(min=eps).log()).sum(-1)


def pairwise_preference_loss(weights: torch.Tensor, delta: torch.Tensor, entropy_coef: float = 0.0) -> torch.Tensor:
    """REBEL-style router objective: ``-mean_i w_i . delta_i - lambda mean_i H(w_i)``.

    Args:
        weights: ``(B, K)`` router weights (softmax rows).
        delta: ``(B, K)`` judged preference of each head's turn over the equal blend's, in
            ``{-1, -0.5, 0, 0.5, 1}`` (positive: the head was better).
        entropy_coef: lambda; the entropy bonus keeps the router from collapsing onto one head early.

    Returns:
        Scalar loss (lower is better; ``-1`` is the best value without the entropy term).
    """
    expected = (weights * delta.to(weights.dtype)).sum(-1)  # (B,)
    return -expected.mean() - entropy_coef * weight_entropy(weights).mean()


def hedge_targets(prior: torch.Tensor, head_losses: torch.Tensor, tau: float) -> torch.Tensor:
    """Multiplicative-weights (Hedge) update of prior weights by per-head losses.

    ``target_{i,k} = prior_{i,k} exp(-loss_{i,k} / tau) / sum_j prior_{i,j} exp(-loss_{i,j} / tau)``,
    the minimiser of ``sum_k f_k loss_k + tau KL(f || prior)`` over the simplex.

    Args:
        prior: ``(B, K)`` current weights (rows on the simplex; no gradient is taken through them).
        head_losses: ``(B, K)`` loss of each head on each example (lower is better).
        tau: Temperature > 0.

    Returns:
        ``(B, K)`` target weights (rows sum to 1).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}.")
    log_prior = prior.detach().float().clamp(min=1e-12).log()
    return torch.softmax(log_prior - head_losses.float() / tau, dim=-1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(B, K)`` logits to ``(B, K)`` soft targets (constant); scalar mean over B."""
    return -(targets.detach() * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def hedge_router_loss(logits: torch.Tensor, head_losses: torch.Tensor, tau: float) -> torch.Tensor:
    """MiCRo's router step: Hedge targets from the router's own (detached) weights, then cross-entropy.

    Args:
        logits: ``(B, K)`` router logits.
        head_losses: ``(B, K)`` per-head losses.
        tau: Hedge temperature.

    Returns:
        Scalar loss.
    """
    targets = hedge_targets(torch.softmax(logits.detach().float(), -1), head_losses, tau)
    return soft_cross_entropy(logits, targets)


def pairwise_log_losses(delta: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Per-head losses on a log-loss scale from judged preferences over the blend (for MiCRo's Hedge).

    ``delta`` in [-1, 1] is read as the chance ``(1 + delta) / 2`` that the head's candidate beats the
    blend's, and the loss is its negative log, clipped at ``eps``: 0 for a clear win, log 2 for a
    tie, ``-log eps`` for a clear loss (the scale of the Bradley-Terry log-losses MiCRo's tau is set for).

    Args:
        delta: ``(B, K)`` judged preferences.
        eps: Smallest probability before the log.

    Returns:
        ``(B, K)`` losses >= 0.
    """
    return -((1.0 + delta.float()) / 2.0).clamp(min=eps, max=1.0).log()


def bt_mixture_loss(router_weights: torch.Tensor, margins: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """MiCRo's Stage-1 loss: mixture Bradley-Terry likelihood plus a pull of the router towards uniform.

    ``L = -mean_i log sum_k f_ik sigma(m_ik) + alpha mean_i sum_k f_ik log f_ik`` with
    ``m_ik = r_k(x_i, chosen_i) - r_k(x_i, rejected_i)`` (003 Eqs. 3-5).

    Args:
        router_weights: ``(B, K)`` mixture weights ``f(x)`` (rows on the simplex).
        margins: ``(B, K)`` reward margin of the chosen over the rejected answer under each head.
        alpha: Weight of the negative-entropy term (0.5 in the paper).

    Returns:
        Scalar loss.
    """
    f = router_weights.float()
    log_mix = torch.logsumexp(f.clamp(min=1e-12).log() + F.logsigmoid(margins.float()), dim=-1)
    neg_entropy = (f * f.clamp(min=1e-12).log()).sum(-1)
    return -log_mix.mean() + alpha * neg_entropy.mean()


def hedge_step(weights: torch.Tensor, head_losses: torch.Tensor, lr: float, floor: float = 0.0) -> torch.Tensor:
    """One online Hedge step ``w' ∝ w exp(-lr loss)``, then mixed with the uniform by ``floor``.

    Args:
        weights: ``(..., K)`` current weights.
        head_losses: ``(..., K)`` losses observed for each head.
        lr: Learning rate eta >= 0 (0 leaves the weights unchanged).
        floor: Share of the uniform distribution mixed in, so no head's weight reaches 0 for good.

    Returns:
        ``(..., K)`` new weights.
    """
    new = hedge_targets(weights, head_losses, 1.0 / lr) if lr > 0 else weights.float()
    return (1.0 - floor) * new + floor / weights.shape[-1]


def reaction_head_losses(weights: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Per-head losses from the reaction to a turn written by the mixture ``weights``.

    Only the mixture's turn was seen, so each head takes the blame (or credit) in proportion to its
    share of it: ``loss_{i,k} = -reward_i w_{i,k}``. A good reaction moves weight towards the heads
    that wrote the turn, a bad one away from them; under equal weights nothing changes.

    Args:
        weights: ``(B, K)`` weights that produced the turn.
        reward: ``(B,)`` reaction score in [-1, 1] (+1 good, 0 neutral, -1 bad).

    Returns:
        ``(B, K)`` losses.
    """
    return -reward.float().unsqueeze(-1) * weights.float()


# ----------------------------------------------------------------------------------------------
# GRPO (RLVR and PerMix-RLVR; B sampled answers in groups of G, T completion positions)
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages: each reward minus its group's mean, divided by the group's std.

    Args:
        rewards: ``(B,)`` rewards, groups of ``group_size`` consecutive answers to the same prompt.
        group_size: G (>= 2).
        scale: Divide by the group's (unbiased) standard deviation plus ``eps``; off: only centre.
        eps: Keeps a group of identical rewards at advantage 0 instead of 0/0.

    Returns:
        ``(B,)`` advantages; a group whose rewards are all equal gets exactly 0.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (G must be >= 2).")
    grouped = rewards.float().view(-1, group_size)  # (B/G, G)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO's clipped surrogate with an optional KL penalty to a reference, per sequence.

    Per token: ``-min(r A, clip(r, 1 - eps, 1 + eps) A) + beta KL_t`` with ``r = exp(logp - old_logp)``
    and the ``k3`` estimator ``KL_t = exp(ref - logp) - (ref - logp) - 1``; each sequence averages
    its tokens (TRL's ``loss_type="grpo"``), and the batch loss is the mean over sequences.

    Args:
        logprobs: ``(B, T)`` log-probabilities of the sampled tokens under the policy being trained.
        old_logprobs: ``(B, T)`` the same under the policy that sampled them (no gradient).
        advantages: ``(B,)`` one advantage per sequence.
        mask: ``(B, T)`` 1 for the completion's real tokens.
        clip_eps: The ratio's clipping range.
        ref_logprobs: ``(B, T)`` log-probabilities under the frozen reference (needed when ``beta > 0``).
        beta: Weight of the KL penalty.

    Returns:
        ``(per_sequence_loss (B,), per_sequence_kl (B,), per_sequence_clipped (B,))``: the loss to
        average, and the mean KL and share of clipped tokens of each sequence (for logging).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # (B, 1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    kl = torch.zeros_like(logprobs)
    if beta:
        if ref_logprobs is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logprobs.")
        delta = ref_logprobs.detach() - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    clipped = (((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))).to(logprobs.dtype)
    return masked_mean(per_token, mask), masked_mean(kl.detach(), mask), masked_mean(clipped, mask)

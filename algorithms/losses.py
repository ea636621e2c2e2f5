"""Pure loss functions of the trainers (no model, no state; shapes in each docstring).

Notation: B sequences (or router examples), T completion positions, V vocabulary, K heads (or, for
the top-K support, the number of kept tokens ``k``).

- Self-distillation (OPSD): :func:`topk_reverse_kl`, :func:`opsd_sequence_loss`,
  :func:`weighted_head_sum`, :func:`normalized_alphas`.
- Router learning: :func:`matched_head_loss`, :func:`pairwise_preference_loss` (REBEL-style),
  :func:`hedge_targets` / :func:`hedge_router_loss` (MiCRo-style), :func:`hedge_step` and
  :func:`reaction_head_losses` (the benchmark's online router), :func:`weight_entropy`,
  :func:`soft_cross_entropy`.
"""

from __future__ import annotations

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

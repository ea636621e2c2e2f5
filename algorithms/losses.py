"""Pure loss functions of the trainers (no model, no state; shapes in each docstring).

Notation: B sequences, T completion positions, V vocabulary, K heads (or, for the top-K support,
the number of kept tokens ``k``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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

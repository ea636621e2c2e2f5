import math

import pytest
import torch

from algorithms.losses import (
    masked_mean,
    normalized_alphas,
    opsd_sequence_loss,
    topk_reverse_kl,
    weighted_head_sum,
)


def full_reverse_kl(s, t):
    p = torch.softmax(s, -1)
    return (p * (torch.log_softmax(s, -1) - torch.log_softmax(t, -1))).sum(-1)


def test_identical_distributions_have_zero_kl():
    logits = torch.randn(3, 5, 100)
    assert torch.allclose(topk_reverse_kl(logits, logits.clone(), k=10), torch.zeros(3, 5), atol=1e-6)
    assert torch.allclose(topk_reverse_kl(logits, logits + 7.0, k=None), torch.zeros(3, 5), atol=1e-5)


def test_k_equal_to_vocab_is_full_reverse_kl():
    s, t = torch.randn(2, 4, 50), torch.randn(2, 4, 50)
    expected = full_reverse_kl(s, t)
    torch.testing.assert_close(topk_reverse_kl(s, t, k=50), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(topk_reverse_kl(s, t, k=None), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(topk_reverse_kl(s, t, k=10_000), expected, atol=1e-5, rtol=1e-5)


def test_known_two_token_case():
    # Student puts mass (0.5, 0.5) on two tokens, teacher (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2).
    s = torch.log(torch.tensor([0.5, 0.5, 1e-9]))
    t = torch.log(torch.tensor([0.8, 0.2, 5.0]))  # a third token the student never considers
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert topk_reverse_kl(s, t, k=2).item() == pytest.approx(expected, rel=1e-5)


def test_topk_support_ignores_teacher_mass_outside_it():
    s = torch.tensor([3.0, 2.0, -5.0, -5.0])
    t1 = torch.tensor([1.0, 0.0, 9.0, -9.0])
    t2 = torch.tensor([1.0, 0.0, -9.0, -9.0])  # differs only outside the student top-2
    assert topk_reverse_kl(s, t1, k=2).item() == pytest.approx(topk_reverse_kl(s, t2, k=2).item())
    assert topk_reverse_kl(s, t1, k=None).item() != pytest.approx(topk_reverse_kl(s, t2, k=None).item())


def test_gradient_reaches_student_only():
    s = torch.randn(2, 3, 20, requires_grad=True)
    t = torch.randn(2, 3, 20, requires_grad=True)
    topk_reverse_kl(s, t, k=5).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_masked_mean_and_sequence_loss():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert masked_mean(values, mask).tolist() == [1.5, 5.0, 0.0]
    s, t = torch.randn(3, 3, 12), torch.randn(3, 3, 12)
    per_token = topk_reverse_kl(s, t, k=4)
    torch.testing.assert_close(opsd_sequence_loss(s, t, mask, k=4), masked_mean(per_token, mask))


def test_weighted_head_sum_and_alphas():
    losses = [torch.tensor(2.0), torch.tensor(4.0)]
    assert weighted_head_sum(losses, [0.25, 0.75]).item() == pytest.approx(3.5)
    assert normalized_alphas(None, 4) == [0.25] * 4
    assert normalized_alphas([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="alphas"):
        normalized_alphas([1, -1], 2)
    with pytest.raises(ValueError, match="2 head losses but 3 alphas"):
        weighted_head_sum(losses, [0.2, 0.3, 0.5])


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="differ in shape"):
        topk_reverse_kl(torch.randn(2, 5), torch.randn(2, 6))

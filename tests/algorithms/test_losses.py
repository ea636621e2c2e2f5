import math

import pytest
import torch

from algorithms.losses import (
    advantage_loss,
    centred_advantages,
    contrastive_teacher_logits,
    feedback_contrastive_logits,
    feedback_shift,
    masked_mean,
    normalized_alphas,
    opsd_sequence_loss,
    sampled_logprobs,
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


def test_feedback_contrastive_teacher_on_a_two_token_case():
    with_fb, without = torch.tensor([0.8, 0.2]).log(), torch.tensor([0.5, 0.5]).log()
    # (1+1) log q_fb - log q_none: odds 0.64/0.5 against 0.04/0.5, i.e. 0.941 : 0.059
    probs = feedback_contrastive_logits(with_fb, without, 1.0).softmax(-1)
    assert probs.tolist() == pytest.approx([0.64 / 0.68, 0.04 / 0.68], rel=1e-5)
    # w = 2: odds 0.512/0.25 against 0.008/0.25
    assert feedback_contrastive_logits(with_fb, without, 2.0).softmax(-1).tolist() == pytest.approx(
        [0.512 / 0.52, 0.008 / 0.52], rel=1e-5)
    # w = 0 is the plain teacher; feedback that changes nothing leaves it as it is
    assert feedback_contrastive_logits(with_fb, without, 0.0) is with_fb
    assert feedback_contrastive_logits(with_fb, with_fb, 3.0).softmax(-1).tolist() == pytest.approx([0.8, 0.2],
                                                                                                     rel=1e-5)


def test_feedback_shift_on_a_two_token_case():
    # two positions of one turn: the feedback moves the sampled token 0 from 0.5 to 0.8, then token 1 from 0.5 to 0.2
    with_fb = torch.tensor([[[0.8, 0.2], [0.8, 0.2], [0.9, 0.1]]]).log()
    without = torch.tensor([[[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]]).log()
    tokens, mask = torch.tensor([[0, 1, 0]]), torch.tensor([[1, 1, 0]])  # the third position is padding
    assert sampled_logprobs(with_fb, tokens)[0, :2].tolist() == pytest.approx([math.log(0.8), math.log(0.2)])
    shift = feedback_shift(with_fb, without, tokens, mask)
    assert shift.tolist() == pytest.approx([(math.log(0.8 / 0.5) + math.log(0.2 / 0.5)) / 2], rel=1e-5)
    # feedback that changes nothing shifts nothing
    assert feedback_shift(without, without, tokens, mask).tolist() == [0.0]


def test_centred_advantages_centre_within_groups_and_scale_by_the_batch_spread():
    values = torch.tensor([1.0, 3.0, 10.0, 10.0, 7.0])
    adv = centred_advantages(values, [[0, 1], [2, 3]], eps=0.0)  # row 4 belongs to no group
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0])
    assert adv.tolist() == pytest.approx((centred / centred.std()).tolist(), rel=1e-6)
    # equal scores, and a group of one, give exactly zero
    assert centred_advantages(torch.tensor([2.0, 2.0, 5.0]), [[0, 1], [2]]).tolist() == [0.0, 0.0, 0.0]


def test_advantage_loss_raises_the_turn_with_a_positive_advantage():
    logits = torch.zeros(2, 2, 3, requires_grad=True)
    tokens, mask = torch.tensor([[0, 0], [1, 1]]), torch.ones(2, 2)
    loss = advantage_loss(sampled_logprobs(logits, tokens), torch.tensor([1.0, -1.0]), mask)
    assert loss.tolist() == pytest.approx([math.log(3.0), -math.log(3.0)], rel=1e-6)  # -A * mean log(1/3)
    loss.sum().backward()
    step = -logits.grad  # a gradient step raises token 0 in turn 0 and lowers token 1 in turn 1
    assert (step[0, :, 0] > 0).all() and (step[1, :, 1] < 0).all()
    assert advantage_loss(sampled_logprobs(logits, tokens), torch.zeros(2), mask).tolist() == [0.0, 0.0]


def test_contrastive_teacher_on_a_two_token_case():
    own, other = torch.tensor([0.6, 0.4]).log(), torch.tensor([0.4, 0.6]).log()
    # (1+1) log own - log other: odds 0.36/0.4 against 0.16/0.6, i.e. 0.9 : 0.2667
    probs = contrastive_teacher_logits(own, [other], 1.0).softmax(-1)
    assert probs.tolist() == pytest.approx([0.9 / (0.9 + 0.16 / 0.6), (0.16 / 0.6) / (0.9 + 0.16 / 0.6)], rel=1e-5)
    # no weight or no other persona: the plain teacher; the same prompt twice: nothing to contrast
    assert contrastive_teacher_logits(own, [other], 0.0) is own and contrastive_teacher_logits(own, [], 2.0) is own
    assert contrastive_teacher_logits(own, [own], 3.0).softmax(-1).tolist() == pytest.approx([0.6, 0.4], rel=1e-5)
    # several others are averaged in log space
    third = torch.tensor([0.5, 0.5]).log()
    mixed = contrastive_teacher_logits(own, [other, third], 1.0)
    assert mixed.tolist() == pytest.approx((2 * own.log_softmax(-1) - (other + third) / 2).tolist(), rel=1e-5)
    # one weight per row: row 0 keeps the plain teacher, row 1 is contrasted
    pair = torch.stack([own, own]), [torch.stack([other, other])]
    rows = contrastive_teacher_logits(*pair, torch.tensor([[0.0], [1.0]]))
    assert rows.softmax(-1).flatten().tolist() == pytest.approx([0.6, 0.4, *probs.tolist()], rel=1e-5)
    with pytest.raises(ValueError, match=">= 0"):
        contrastive_teacher_logits(own, [other], -1.0)
    with pytest.raises(ValueError, match="shape"):
        contrastive_teacher_logits(own, [torch.zeros(3)], 1.0)


def test_the_plausibility_constraint_contrasts_only_likely_tokens():
    own = torch.tensor([0.70, 0.25, 0.05]).log()
    other = torch.tensor([0.80, 0.10, 0.10]).log()
    # alpha = 0.2: tokens 0 and 1 (0.70 and 0.25 >= 0.14) are contrasted, token 2 keeps log 0.05
    mixed = contrastive_teacher_logits(own, [other], 1.0, plausibility=0.2)
    expected = [2 * math.log(0.70) - math.log(0.80), 2 * math.log(0.25) - math.log(0.10), math.log(0.05)]
    assert mixed.tolist() == pytest.approx(expected, rel=1e-5)
    # without the constraint token 2 is contrasted too (and pushed down, here); alpha = 0 is the default
    free = contrastive_teacher_logits(own, [other], 1.0)
    assert free[2].item() == pytest.approx(2 * math.log(0.05) - math.log(0.10), rel=1e-5)
    assert contrastive_teacher_logits(own, [other], 1.0, plausibility=0.0).tolist() == free.tolist()
    # a token the own prompt finds unlikely cannot be lifted, however much the other prompt dislikes it
    rare = contrastive_teacher_logits(torch.tensor([0.9, 0.1 - 1e-4, 1e-4]).log(), [torch.tensor([0.5, 0.5 - 1e-8, 1e-8]).log()],
                                      4.0, plausibility=0.1).softmax(-1)
    assert rare[2] < 1e-3
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="plausibility"):
            contrastive_teacher_logits(own, [other], 1.0, plausibility=bad)


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


# ---- GRPO ------------------------------------------------------------------------------------------


def test_group_advantages_on_a_hand_computed_case_and_equal_rewards_give_zero():
    from algorithms.losses import group_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    adv = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()  # unbiased: sqrt(0.25 * 4 / 3) = 0.5
    torch.testing.assert_close(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # a group with identical rewards teaches nothing
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    with pytest.raises(ValueError):
        group_advantages(rewards, 3)


def test_grpo_loss_on_a_hand_computed_case():
    from algorithms.losses import grpo_loss

    logp = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.5], [0.2, 0.6]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, kl, clipped = grpo_loss(logp, old, adv, mask, clip_eps=0.2)
    # row 0: ratios 2 and 1 with A=+1 -> min(2, 1.2)=1.2 and 1 -> loss -(1.2 + 1)/2
    # row 1: ratio 1 with A=-1 (the masked token does not count) -> loss 1
    torch.testing.assert_close(loss, torch.tensor([-1.1, 1.0]))
    torch.testing.assert_close(clipped, torch.tensor([0.5, 0.0]))
    assert torch.equal(kl, torch.zeros(2))
    ref = torch.log(torch.tensor([[0.5, 0.25], [0.4, 0.9]]))
    loss_kl, kl, _ = grpo_loss(logp, old, adv, mask, clip_eps=0.2, ref_logprobs=ref, beta=0.5)
    k3 = lambda r, p: r / p - torch.log(torch.tensor(r / p)) - 1  # noqa: E731
    torch.testing.assert_close(kl, torch.tensor([(0 + k3(0.25, 0.5)) / 2, k3(0.4, 0.2)]))
    torch.testing.assert_close(loss_kl, loss + 0.5 * kl)


def _trl_grpo_loss(logp, old, adv, mask, ref, beta, eps):
    """TRL's own GRPOTrainer._compute_loss on the given per-token log-probabilities (its model call stubbed)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    accelerator = SimpleNamespace(reduce=lambda x, reduction="sum": x, gather=lambda x: x, num_processes=1)
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), loss_type="grpo", epsilon_low=eps,
        epsilon_high=eps, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), accelerator=accelerator,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None))
    inputs = {"prompt_ids": torch.zeros(logp.shape[0], 1, dtype=torch.long), "prompt_mask": torch.ones(logp.shape[0], 1),
              "completion_ids": torch.zeros_like(mask, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref}
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trls_on_identical_inputs(beta):
    from algorithms.losses import grpo_loss

    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 9, generator=g) * 3
    old = logp + 0.3 * torch.randn(6, 9, generator=g)  # ratios well outside the clip range, both signs
    ref = logp + 0.2 * torch.randn(6, 9, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 7, 5, 9, 3, 8])[:, None]).float()
    ours = grpo_loss(logp, old, adv, mask, clip_eps=0.2, ref_logprobs=ref, beta=beta)[0].mean()
    theirs = _trl_grpo_loss(logp, old, adv, mask, ref, beta, 0.2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)

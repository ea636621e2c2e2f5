import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from agents import MultiHeadPolicy, load_backbone
from agents.projection import use_skinny_linears


def test_one_hot_weights_equal_that_head_exactly(tiny_policy, batch):
    policy, _ = tiny_policy
    ids, mask = batch
    for d in range(3):
        one_hot = torch.nn.functional.one_hot(torch.tensor([d, d]), 3).float()
        assert torch.equal(policy(ids, mask, weights=one_hot).logits, policy(ids, mask, head=d).logits)


def test_a_head_index_per_row_equals_each_rows_own_head(tiny_policy, batch):
    """Per-row heads project each head's rows apart: fewer rows, so equal up to float rounding only."""
    policy, _ = tiny_policy
    ids, mask = batch
    per_row = policy(ids, mask, head=torch.tensor([2, 0])).logits
    torch.testing.assert_close(per_row[:1], policy(ids, mask, head=2).logits[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(per_row[1:], policy(ids, mask, head=0).logits[1:], rtol=0, atol=1e-6)
    assert torch.equal(policy(ids, mask, head=[1, 1]).logits, policy(ids, mask, head=1).logits)
    with pytest.raises(ValueError, match="out of range"):
        policy(ids, mask, head=[0, 3])
    with pytest.raises(ValueError, match="set for 3 sequences"):
        policy(ids, mask, head=[0, 1, 2])


def test_equal_blend_is_mean_of_head_logits(tiny_policy, batch):
    policy, _ = tiny_policy
    ids, mask = batch
    per_head = torch.stack([policy(ids, mask, head=d).logits for d in range(3)])  # (K, B, T, V)
    torch.testing.assert_close(policy(ids, mask).logits, per_head.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(policy(ids, mask, weights=[1 / 3] * 3).logits, per_head.mean(0), atol=1e-5, rtol=0)


def test_per_sample_mixture_is_weighted_sum_of_head_logits(tiny_policy, batch):
    policy, _ = tiny_policy
    ids, mask = batch
    w = torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    per_head = torch.stack([policy(ids, mask, head=d).logits for d in range(3)])  # (K, B, T, V)
    expected = torch.einsum("bk,kbtv->btv", w, per_head)
    torch.testing.assert_close(policy(ids, mask, weights=w).logits, expected, atol=1e-5, rtol=0)


def test_heads_differ_by_init_noise(tiny_policy):
    policy, _ = tiny_policy
    w0, w1 = policy.heads.weights[0], policy.heads.weights[1]
    diff = (w0 - w1).std().item()
    assert 0.01 < diff < 0.02  # two independent N(0, 0.01^2) perturbations: std ~ 0.0141


def test_single_head_at_zero_noise_equals_wrapped_model(batch):
    ids, mask = batch
    reference = load_backbone("tiny-random", seed=0).model
    policy = MultiHeadPolicy(load_backbone("tiny-random", seed=0).model, num_heads=1, init_noise_std=0.0)
    assert torch.equal(policy(ids, mask).logits, reference(input_ids=ids, attention_mask=mask).logits)


def test_heads_are_untied_from_embeddings(tiny_policy):
    policy, _ = tiny_policy
    emb = policy.model.get_input_embeddings().weight
    assert all(w.data_ptr() != emb.data_ptr() for w in policy.heads.weights)
    assert policy.config.tie_word_embeddings is False


@pytest.mark.parametrize("active", [0, 2])
def test_backward_through_one_head_leaves_other_heads_without_gradient(tiny_policy, batch, active):
    policy, _ = tiny_policy
    ids, mask = batch
    policy(ids, mask, head=active).logits.logsumexp(-1).mean().backward()
    for d, w in enumerate(policy.heads.weights):
        if d == active:
            assert w.grad is not None and w.grad.abs().sum() > 0
        else:
            assert w.grad is None or torch.count_nonzero(w.grad) == 0
    assert all(p.grad is not None for p in policy.backbone_parameters() if p.requires_grad)


def test_optimizer_step_through_one_head_changes_only_that_head(tiny_policy, batch):
    policy, _ = tiny_policy
    ids, mask = batch
    before = [w.detach().clone() for w in policy.heads.weights]
    emb_before = policy.model.get_input_embeddings().weight.detach().clone()
    opt = torch.optim.AdamW(policy.param_groups(lr=1e-2, head_lr_mult=2.0, weight_decay=0.1))
    policy(ids, mask, head=1).logits.logsumexp(-1).mean().backward()
    opt.step()
    assert torch.equal(policy.heads.weights[0], before[0]) and torch.equal(policy.heads.weights[2], before[2])
    assert not torch.equal(policy.heads.weights[1], before[1])
    assert not torch.equal(policy.model.get_input_embeddings().weight, emb_before)


def test_param_groups_apply_head_lr_multiplier(tiny_policy):
    policy, _ = tiny_policy
    groups = {g["name"]: g for g in policy.param_groups(lr=1e-4, head_lr_mult=2.0)}
    assert groups["heads"]["lr"] == pytest.approx(2e-4) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    n_heads = sum(p.numel() for p in groups["heads"]["params"])
    assert n_heads == 3 * policy.config.vocab_size * policy.config.hidden_size
    n_all = sum(p.numel() for p in policy.parameters())
    assert n_heads + sum(p.numel() for p in groups["backbone"]["params"]) == n_all


def test_head_names_and_bad_selections(tiny_policy, batch):
    policy, _ = tiny_policy
    ids, mask = batch
    assert torch.equal(policy(ids, mask, head="b").logits, policy(ids, mask, head=1).logits)
    with pytest.raises(ValueError, match="Unknown head 'z'"):
        policy(ids, mask, head="z")
    with pytest.raises(ValueError, match="out of range"):
        policy(ids, mask, head=3)
    with pytest.raises(ValueError, match=r"shape \(K,\) or \(B, K\)"):
        policy(ids, mask, weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="rows but the batch has 2"):
        policy(ids, mask, weights=torch.ones(3, 3) / 3)
    with pytest.raises(ValueError, match="either head= or weights="):
        policy(ids, mask, head=0, weights=[1, 0, 0])
    with pytest.raises(ValueError, match="distinct names"):
        MultiHeadPolicy(load_backbone("tiny-random").model, num_heads=2, head_names=["x", "x"])


def test_save_load_round_trip_is_exact(tiny_policy, batch, tmp_path):
    policy, tokenizer = tiny_policy
    ids, mask = batch
    policy.save_pretrained(tmp_path / "policy", tokenizer=tokenizer)
    meta = json.loads((tmp_path / "policy" / "pluralgym_policy.json").read_text())
    assert meta["num_heads"] == 3 and meta["head_names"] == ["a", "b", "c"]
    loaded = MultiHeadPolicy.from_pretrained(tmp_path / "policy")
    assert loaded.head_names == ["a", "b", "c"]
    for d in range(3):
        assert torch.equal(loaded(ids, mask, head=d).logits, policy(ids, mask, head=d).logits)
    w = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
    assert torch.equal(loaded(ids, mask, weights=w).logits, policy(ids, mask, weights=w).logits)


def test_saved_policy_folder_is_a_plain_checkpoint_of_the_equal_blend(tiny_policy, batch, tmp_path):
    policy, _ = tiny_policy
    ids, mask = batch
    policy.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, policy(ids, mask).logits,
                               atol=1e-5, rtol=0)


def test_exported_head_and_mixture_reproduce_policy_logits(tiny_policy, batch, tmp_path):
    policy, tokenizer = tiny_policy
    ids, mask = batch
    policy.export(tmp_path / "head_b", head="b", tokenizer=tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "head_b")
    expected = policy(ids, mask, head="b").logits
    # a plain transformers model multiplies few rows with linear, the policy with weight @ hidden.T
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-6)
    use_skinny_linears(plain)  # the same products: the same logits, bit for bit
    assert torch.equal(plain(input_ids=ids, attention_mask=mask).logits, expected)
    assert (tmp_path / "head_b" / "tokenizer.json").is_file()
    w = [0.25, 0.25, 0.5]
    policy.export(tmp_path / "mix", weights=w)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "mix")
    torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, policy(ids, mask, weights=w).logits,
                               atol=1e-5, rtol=0)
    # Exporting leaves the policy's heads in place.
    assert policy.heads.num_heads == 3


def test_from_pretrained_rejects_a_folder_that_is_not_a_policy(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved MultiHeadPolicy"):
        MultiHeadPolicy.from_pretrained(tmp_path)


def test_many_distinct_mixtures_mix_head_logits(tiny):
    # With at least as many distinct weight rows as heads, the heads' logits are mixed directly.
    policy = MultiHeadPolicy(tiny.model, num_heads=2, seed=1)
    enc = tiny.tokenizer(["one", "two words", "three more words", "four"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    w = torch.tensor([[0.1, 0.9], [0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    per_head = torch.stack([policy(ids, mask, head=d).logits for d in range(2)])  # (K, B, T, V)
    expected = torch.einsum("bk,kbtv->btv", w, per_head)
    for grad in (True, False):  # with autograd, and under no_grad where the plan is cached
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(policy(ids, mask, weights=w).logits, expected, atol=1e-5, rtol=0)
    assert torch.equal(policy(ids, mask, weights=w).logits[2], per_head[0, 2])


@pytest.mark.parametrize("shape", [(8, 1, 64), (3, 64), (2, 40, 64)])
def test_head_projection_equals_linear_with_its_gradients(shape):
    """The decoding path (a few rows, weight @ hidden.T) and the plain path (many rows, linear)."""
    from agents.projection import project

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3000, 64, generator=gen, requires_grad=True)
    bias = torch.randn(weight.shape[0], generator=gen, requires_grad=True)
    hidden = torch.randn(*shape, generator=gen, requires_grad=True)
    ours, plain = project(hidden, weight, bias), torch.nn.functional.linear(hidden, weight, bias)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn(plain.shape, generator=gen)
    for a, b in zip(torch.autograd.grad((ours * grad).sum(), [hidden, weight, bias]),
                    torch.autograd.grad((plain * grad).sum(), [hidden, weight, bias])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

"""Persona-judge draft/judge decoding: the acceptance rule on known cases and the judge's law on the tiny model."""

import pytest
import torch

from agents import DraftJudge, MultiHeadPolicy, generate
from agents.draft_judge import judge_tokens


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's goodness-of-fit p-value of ``counts`` against ``probs`` (bins with mass > 0)."""
    expected = probs * counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor((len(probs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat.double() / 2))


Q = torch.tensor([0.5, 0.3, 0.2, 0.0])
P = torch.tensor([0.1, 0.2, 0.3, 0.4])


def test_exact_rule_emits_the_judges_distribution_and_accepts_at_the_overlap_rate():
    n = 40_000
    tokens, accepted = judge_tokens(Q.repeat(n, 1), P.repeat(n, 1), torch.zeros(n, dtype=torch.bool))
    counts = torch.bincount(tokens, minlength=4).double()
    assert chi_square_p_value(counts, P.double()) > 1e-3
    assert chi_square_p_value(counts, Q.clamp_min(1e-3).double() / Q.clamp_min(1e-3).sum()) < 1e-6  # not the draft's
    assert accepted.float().mean().item() == pytest.approx(torch.minimum(Q, P).sum().item(), abs=0.01)  # 0.5


def test_bonus_rows_draw_from_the_judge_and_never_count_as_accepted():
    n = 40_000
    tokens, accepted = judge_tokens(Q.repeat(n, 1), P.repeat(n, 1), torch.ones(n, dtype=torch.bool))
    assert not accepted.any()
    assert chi_square_p_value(torch.bincount(tokens, minlength=4).double(), P.double()) > 1e-3


def test_greedy_top_k_variant_on_a_hand_computed_case():
    # top-2: q~ = [.625, .375, 0, 0], p~ = [0, 0, 3/7, 4/7]; the draft (token 0) has p~ = 0, so it is
    # rejected and the residual max(0, p~ - q~) puts its largest mass on token 3.
    tokens, accepted = judge_tokens(Q[None], P[None], torch.zeros(1, dtype=torch.bool), exact=False, topk=2)
    assert tokens.tolist() == [3] and not accepted.item()
    same, ok = judge_tokens(P[None], P[None], torch.zeros(1, dtype=torch.bool), exact=False, topk=2)
    assert same.tolist() == [3] and ok.item()  # draft = argmax, and a judge equal to the draft keeps it


@pytest.fixture
def two_heads(tiny):
    policy = MultiHeadPolicy(tiny.model, num_heads=2, head_names=["a", "b"], seed=0).eval()
    with torch.no_grad():  # make the heads disagree clearly
        policy.heads.weights[1].add_(torch.randn_like(policy.heads.weights[1]) * 0.5)
    return policy, tiny.tokenizer


def test_first_token_follows_the_judge_head_on_the_tiny_model(two_heads):
    policy, tokenizer = two_heads
    n, temperature = 1000, 1.0
    decoder = DraftJudge(block=4)  # block 0: head a drafts, head b judges
    out = generate(policy, tokenizer, ["The mitochondria is the powerhouse"] * n, max_new_tokens=1,
                   temperature=temperature, seed=0, decoder=decoder)
    enc = tokenizer(["The mitochondria is the powerhouse"], return_tensors="pt")
    with torch.no_grad():
        judge = torch.softmax(policy(**enc, head="b").logits[0, -1] / temperature, -1).double()
        draft = torch.softmax(policy(**enc, head="a").logits[0, -1] / temperature, -1).double()
    top = torch.argsort(judge, descending=True)[:8]  # the judge's 8 likeliest tokens, then one bin for the rest
    assert judge[top].sum() > 0.3 and (draft - judge).abs().sum() > 0.5  # the test can tell the heads apart
    first = out.completion_ids[:, 0]
    counts = torch.cat([(first[:, None] == top).sum(0), (~torch.isin(first, top)).sum()[None]]).double()
    probs = torch.cat([judge[top], (1 - judge[top].sum())[None]])
    keep = probs * n >= 5  # the chi-square approximation needs ~5 expected draws per bin
    assert chi_square_p_value(counts[keep], probs[keep] / probs[keep].sum()) > 1e-3


def test_a_judge_equal_to_the_draft_accepts_every_token(two_heads):
    policy, tokenizer = two_heads
    decoder = DraftJudge(heads=["a", "a"], block=3)
    out = generate(policy, tokenizer, ["Hello there", "The mitochondria is"], max_new_tokens=16, min_new_tokens=16,
                   temperature=1.0, seed=3, decoder=decoder)
    assert out.completion_ids.shape == (2, 16)
    stats = decoder.stats
    assert stats.blocks == 2 * (16 // 4) and stats.accepted_per_block == 3 and stats.tokens_per_block == 4
    single = generate(policy, tokenizer, ["Hello there"], head="a", max_new_tokens=4, temperature=0.0)
    greedy = generate(policy, tokenizer, ["Hello there"], max_new_tokens=4, temperature=0.0,
                      decoder=DraftJudge(heads=["a", "a"]))
    assert greedy.completion_ids.tolist() == single.completion_ids.tolist()  # greedy with one head = that head


def test_swapping_alternates_the_judge_every_block(two_heads):
    policy, tokenizer = two_heads
    base = DraftJudge(block=2, swap=False, exact=True)
    generate(policy, tokenizer, ["Hello there"] * 4, max_new_tokens=12, min_new_tokens=12, temperature=1.0, seed=1,
             decoder=base)
    assert base.stats.blocks >= 4 and 0 <= base.stats.accepted_per_block <= 2
    assert 1 <= base.stats.tokens_per_block <= 3


def test_bad_settings_are_refused(two_heads):
    policy, tokenizer = two_heads
    with pytest.raises(ValueError, match="at least two heads"):
        DraftJudge(heads=["a"])
    with pytest.raises(ValueError, match="block >= 1"):
        DraftJudge(block=0)
    with pytest.raises(ValueError, match="without head="):
        generate(policy, tokenizer, ["Hi"], head="a", max_new_tokens=2, decoder=DraftJudge())
    with pytest.raises(ValueError, match="unknown|Unknown"):
        generate(policy, tokenizer, ["Hi"], max_new_tokens=2, decoder=DraftJudge(heads=["a", "zz"]))


def test_each_row_gets_its_draft_and_judge_heads_logits_from_one_product_per_head(tiny):
    from agents import projection

    policy = MultiHeadPolicy(tiny.model, num_heads=3, seed=0)
    weight = torch.stack(list(policy.heads.weights)).detach()
    hidden = torch.randn(5, weight.shape[2], generator=torch.Generator().manual_seed(0))
    draft, judge = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 1, 1])  # the last row: one head, both roles
    calls = []

    def counted(h, w, b=None):
        calls.append(h.shape[0])
        return projection.project(h, w, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("agents.draft_judge.project", counted)
        q, p = DraftJudge._project(hidden, weight, None, draft, judge)
    assert sorted(calls) == [2, 3, 4]  # head 2: rows 1, 2; head 0: rows 0, 2, 3; head 1: rows 0, 1, 3, 4
    for r in range(5):
        torch.testing.assert_close(q[r], hidden[r] @ weight[draft[r]].T, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p[r], hidden[r] @ weight[judge[r]].T, rtol=1e-5, atol=1e-5)

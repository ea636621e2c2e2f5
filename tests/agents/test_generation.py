import pytest
import torch

from agents import generate, score_completions
from agents.generation import completion_logits, completion_mask, encode_prompts

PROMPTS = [
    [{"role": "user", "content": "Explain photosynthesis to a ten-year-old."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Why did the Roman Empire fall, in one sentence?"}],
]


def test_prompts_are_left_padded_chat_renderings(tiny):
    ids, mask = encode_prompts(tiny.tokenizer, PROMPTS)
    assert ids.shape == mask.shape and ids.shape[0] == 3
    assert mask[:, -1].all() and not mask[1, 0]  # every prompt ends at the right edge
    text = tiny.tokenizer.decode(ids[1][mask[1].bool()])
    assert "Hi" in text and text.rstrip().endswith("assistant")


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 2, 9]])
    assert completion_mask(ids, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(tiny_policy):
    policy, tok = tiny_policy
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = generate(policy, tok, PROMPTS, head=1, max_new_tokens=12, seed=7)
    after = torch.rand(1)
    b = generate(policy, tok, PROMPTS, head=1, max_new_tokens=12, seed=7)
    c = generate(policy, tok, PROMPTS, head=1, max_new_tokens=12, seed=8)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert torch.equal(after, expected_next)


@pytest.mark.parametrize(
    "selection",
    [dict(head=0), dict(head="c"), dict(head=[2, 0, 2]), dict(weights=[[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]),
     dict(weights=[0.6, 0.2, 0.2]), dict()],
    ids=["head0", "head-name", "head-per-row", "per-sample", "shared-mixture", "equal-blend"],
)
def test_generation_logprobs_match_teacher_forcing(tiny_policy, selection):
    policy, tok = tiny_policy
    out = generate(policy, tok, PROMPTS, max_new_tokens=16, seed=0, temperature=1.0, **selection)
    assert out.completion_ids.shape == out.logprobs.shape == out.completion_mask.shape
    assert (out.logprobs <= 0).all() and (out.logprobs[out.completion_mask.bool()] < 0).any()
    scored = score_completions(policy, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask,
                               **selection)
    torch.testing.assert_close(scored, out.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("drop_finished", [True, False], ids=["dropping", "transformers-generate"])
def test_logprobs_are_taken_at_the_sampling_temperature(tiny_policy, drop_finished):
    from trl.trainer.utils import selective_log_softmax

    policy, tok = tiny_policy
    out = generate(policy, tok, PROMPTS, head=1, max_new_tokens=12, seed=0, temperature=0.5,
                   drop_finished=drop_finished)
    args = (out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    scored = score_completions(policy, *args, head=1, temperature=0.5)
    torch.testing.assert_close(scored, out.logprobs, atol=1e-4, rtol=0)  # sampling and scoring agree at T
    logits = completion_logits(policy, *args, head=1).float()
    manual = torch.log_softmax(logits / 0.5, -1).gather(-1, out.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(scored, manual * out.completion_mask, atol=1e-5, rtol=0)
    # TRL's convention: selective_log_softmax(logits / temperature)
    theirs = selective_log_softmax(logits / 0.5, out.completion_ids) * out.completion_mask
    torch.testing.assert_close(scored, theirs, atol=1e-5, rtol=0)
    # the raw (T = 1) distribution is a different one
    assert not torch.allclose(scored, score_completions(policy, *args, head=1), atol=1e-3)


def test_chunked_generation_matches_teacher_forcing_and_pads_consistently(tiny_policy):
    policy, tok = tiny_policy
    w = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    out = generate(policy, tok, PROMPTS, weights=w, max_new_tokens=10, seed=0, batch_size=2)
    assert out.prompt_ids.shape[0] == 3 and out.prompt_mask[:, -1].all()
    scored = score_completions(policy, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask,
                               weights=w)
    torch.testing.assert_close(scored, out.logprobs, atol=1e-4, rtol=0)


def test_greedy_decoding_follows_the_argmax_of_the_head(tiny_policy):
    policy, tok = tiny_policy
    out = generate(policy, tok, PROMPTS[:1], head=2, max_new_tokens=1, temperature=0)
    logits = policy(out.prompt_ids, out.prompt_mask, head=2, logits_to_keep=1).logits[:, -1]
    assert out.completion_ids[0, 0] == logits.argmax(-1)[0]


def test_eos_stops_a_sequence_and_masks_the_rest(tiny_policy):
    policy, tok = tiny_policy
    first = generate(policy, tok, PROMPTS, head=0, max_new_tokens=4, temperature=0)
    assert first.completion_mask.sum(1).tolist() == [4, 4, 4]
    # Declare each row's first greedy token an end-of-sequence token: every row now stops at once.
    policy.model.generation_config.eos_token_id = first.completion_ids[:, 0].tolist()
    out = generate(policy, tok, PROMPTS, head=0, max_new_tokens=4, temperature=0)
    assert out.completion_mask.sum(1).tolist() == [1, 1, 1]
    assert torch.equal(out.completion_ids[:, 0], first.completion_ids[:, 0])
    assert (out.logprobs[:, 1:] == 0).all() and (out.logprobs[:, 0] < 0).all()


def test_bad_generation_arguments_are_rejected(tiny_policy, tiny):
    policy, tok = tiny_policy
    with pytest.raises(ValueError, match="rows of head weights for 3 prompts"):
        generate(policy, tok, PROMPTS, weights=torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(policy, tok, PROMPTS, top_p=0)
    with pytest.raises(ValueError, match="need a MultiHeadPolicy"):
        generate(tiny.model, tok, PROMPTS, head=0)


def test_plain_model_generation_works(tiny):
    out = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=5, seed=0)
    scored = score_completions(tiny.model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    torch.testing.assert_close(scored, out.logprobs, atol=1e-4, rtol=0)


MORE_PROMPTS = PROMPTS + [
    [{"role": "user", "content": "Name three prime numbers."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a noun?"}],
    [{"role": "user", "content": "Tell me about volcanoes and how they form."}],
]


@pytest.mark.parametrize(
    "selection",
    [dict(head=1), dict(head=torch.tensor([0, 2, 1, 1, 0, 2])),
     dict(weights=[[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]] * 2), dict()],
    ids=["head", "head-per-row", "per-sample", "equal-blend"],
)
@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9, min_new_tokens=3), dict(temperature=0)],
    ids=["t1", "t0.7-top_p-min_len", "greedy"],
)
def test_dropping_finished_rows_gives_the_tokens_transformers_generate_gives(tiny_policy, selection, sampling):
    policy, tok = tiny_policy
    args = dict(max_new_tokens=24, seed=3, **selection, **sampling)
    # End-of-sequence ids taken from a probe run at staggered positions (row i's token at step 4 + 3i), so
    # the rows end at different steps and leave the batch early.
    probe = generate(policy, tok, MORE_PROMPTS, drop_finished=False, **args).completion_ids
    policy.model.generation_config.eos_token_id = sorted({int(probe[i, 4 + 3 * i]) for i in range(len(probe))})
    fast = generate(policy, tok, MORE_PROMPTS, drop_finished=True, **args)
    reference = generate(policy, tok, MORE_PROMPTS, drop_finished=False, **args)
    lengths = fast.completion_mask.sum(1)
    assert lengths.min() < 24
    if sampling.get("temperature") != 0:  # the tiny random backbone's greedy rows are all alike
        assert len(set(lengths.tolist())) > 1  # rows really did finish at different times
    assert torch.equal(fast.completion_ids, reference.completion_ids)
    assert torch.equal(fast.completion_mask, reference.completion_mask) and fast.texts == reference.texts
    torch.testing.assert_close(fast.logprobs, reference.logprobs, atol=1e-5, rtol=0)
    if "min_new_tokens" in sampling:
        assert lengths.min() >= 3


def test_a_head_per_row_samples_what_one_hot_weights_sample_also_in_chunks(tiny_policy):
    policy, tok = tiny_policy
    heads = torch.tensor([2, 0, 1, 2, 1, 0])
    args = dict(max_new_tokens=12, seed=5, temperature=1.0)
    by_index = generate(policy, tok, MORE_PROMPTS, head=heads, batch_size=4, **args)
    by_weights = generate(policy, tok, MORE_PROMPTS, weights=torch.nn.functional.one_hot(heads, 3).float(),
                          batch_size=4, **args)
    assert torch.equal(by_index.completion_ids, by_weights.completion_ids) and by_index.texts == by_weights.texts
    torch.testing.assert_close(by_index.logprobs, by_weights.logprobs, atol=0, rtol=0)
    with pytest.raises(ValueError, match="3 per-row heads for 6 prompts"):
        generate(policy, tok, MORE_PROMPTS, head=[0, 1, 2], **args)


def test_sampling_processors_keep_their_tensors_on_the_models_device():
    """On CUDA, a processor holding its end-of-sequence ids on the CPU fails inside ``torch.isin``
    (seen on an H200); the meta device shows where the tensors live without a GPU."""
    from agents.sampling import _processors

    meta = torch.device("meta")
    processors = _processors(5, min_new_tokens=3, temperature=1.0, top_p=1.0, eos_ids=[2, 7], device=meta)
    scores = processors(torch.zeros((2, 6), dtype=torch.long, device=meta), torch.zeros((2, 11), device=meta))
    assert scores.device == meta


@pytest.mark.parametrize("kwargs", [dict(head=1), dict(head=[0, 2, 1], batch_size=2), dict(drop_finished=False)])
def test_prompt_features_from_the_prefill_are_the_routers_last_token_features(tiny_policy, kwargs):
    from agents import RouterFeatures

    policy, tok = tiny_policy
    prompts = [[{"role": "user", "content": "teach me about atoms and their nuclei"}], "a raw prompt", "hi"]
    out = generate(policy, tok, prompts, max_new_tokens=4, seed=0, prompt_features=True, **kwargs)
    expected = RouterFeatures(policy, tok, batch_size=1)(prompts)  # one prompt per pass: no padding at all
    assert out.prompt_features.shape == (3, policy.config.hidden_size)
    torch.testing.assert_close(out.prompt_features, expected, atol=1e-5, rtol=0)
    plain = generate(policy, tok, prompts, max_new_tokens=4, seed=0, **kwargs)
    assert plain.prompt_features is None and torch.equal(plain.completion_ids, out.completion_ids)  # tokens unchanged
    assert not policy.model.get_decoder()._forward_hooks  # the hook is gone after the call


def test_remembered_features_are_served_without_a_forward_pass(tiny_policy):
    from agents import RouterFeatures

    policy, tok = tiny_policy
    features = RouterFeatures(policy, tok)
    kept = torch.randn(2, policy.config.hidden_size)
    features.remember(["first", "second"], kept)
    features._compute = lambda chunk: pytest.fail(f"computed {chunk} again")
    assert torch.equal(features(["second", "first"]), kept.flip(0))
    with pytest.raises(ValueError, match="expected one of size"):
        features.remember(["third"], torch.randn(2, policy.config.hidden_size))
    with pytest.raises(ValueError, match="Only last_token"):
        RouterFeatures(policy, tok, pooling="last_message").remember(["first"], kept[:1])

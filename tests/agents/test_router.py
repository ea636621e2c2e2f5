import pytest
import torch

from agents import Router, RouterFeatures
from agents.router import shared_prefix_groups


def test_router_shapes_defaults_and_softmax():
    router = Router(input_dim=64, num_heads=2, hidden_dim=512, num_layers=3, dropout=0.1)
    linears = [m for m in router.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [512, 512, 2]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in router.mlp) == 2
    out = router.eval()(torch.randn(5, 64))
    assert out.weights.shape == (5, 2)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(5))
    assert (out.entropy >= 0).all() and (out.entropy <= torch.log(torch.tensor(2.0)) + 1e-6).all()


def test_router_parameter_count_matches_paper_scale():
    # 3-layer MLP of width 512 over a 3072-wide backbone has about 1.8M parameters.
    router = Router(input_dim=3072, num_heads=2, hidden_dim=512, num_layers=3, dropout=0.1)
    assert 1.7e6 < sum(p.numel() for p in router.parameters()) < 1.9e6


def test_router_rejects_wrong_feature_width():
    with pytest.raises(ValueError, match=r"expects \(B, 64\) features"):
        Router(64, 2, 512, 3, 0.1)(torch.randn(3, 32))


def test_router_save_load_round_trip(tmp_path):
    router = Router(16, 3, hidden_dim=8, num_layers=2, dropout=0.1).eval()
    x = torch.randn(4, 16)
    router.save_pretrained(tmp_path)
    loaded = Router.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(x).logits, router(x).logits)
    assert loaded.hparams == router.hparams


def test_features_are_last_token_states_and_cached(tiny_policy, tmp_path):
    policy, tok = tiny_policy
    prompts = [[{"role": "user", "content": "teach me about atoms"}], "a raw prompt", "a raw prompt"]
    features = RouterFeatures(policy, tok, batch_size=2, cache_dir=tmp_path)
    feats = features(prompts)
    assert feats.shape == (3, policy.config.hidden_size) and len(features) == 2
    assert torch.equal(feats[1], feats[2])
    # Same as a direct single-prompt pass (padding in the batch does not change the state).
    ids = tok(["a raw prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    direct = policy.last_token_hidden(ids)[0]
    torch.testing.assert_close(feats[1], direct, atol=1e-5, rtol=0)
    # A second instance reads the disk cache: no forward pass needed.
    calls = []
    original = policy.last_token_hidden
    policy.last_token_hidden = lambda *a, **k: calls.append(1) or original(*a, **k)
    again = RouterFeatures(policy, tok, cache_dir=tmp_path)(prompts)
    assert torch.equal(again, feats) and calls == []


def test_feature_cache_is_keyed_by_backbone_weights(tiny_policy, tmp_path):
    policy, tok = tiny_policy
    RouterFeatures(policy, tok, cache_dir=tmp_path)(["hello"])
    with torch.no_grad():
        policy.model.get_input_embeddings().weight.mul_(2.0)
    assert len(RouterFeatures(policy, tok, cache_dir=tmp_path)) == 0
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 1


def test_last_message_pooling_is_the_mean_state_over_the_last_message(tiny_policy):
    policy, tok = tiny_policy
    reply = "I still do not get why the moon has phases."
    prompt = [{"role": "user", "content": "teach me about the moon"}, {"role": "assistant", "content": "Sure."},
              {"role": "user", "content": reply}]
    short = [{"role": "user", "content": "hi"}]
    features = RouterFeatures(policy, tok, pooling="last_message", batch_size=2)
    feats = features([prompt, short])  # batched with a shorter, left-padded prompt
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
    begin = text.rfind(reply)
    inside = [j for j, (a, b) in enumerate(enc["offset_mapping"][0].tolist()) if b > begin and a < begin + len(reply)]
    assert tok.decode(enc["input_ids"][0, inside[0]:inside[-1] + 1]).strip() == reply
    with torch.no_grad():
        hidden = policy.model.get_decoder()(input_ids=enc["input_ids"]).last_hidden_state[0]
    torch.testing.assert_close(feats[0], hidden[inside[0]:inside[-1] + 1].mean(0), atol=1e-5, rtol=0)
    last_token = RouterFeatures(policy, tok)([prompt])[0]
    assert not torch.allclose(feats[0], last_token)  # the two poolings are cached apart
    with pytest.raises(ValueError, match="pooling"):
        RouterFeatures(policy, tok, pooling="mean")


def test_a_router_is_served_the_features_it_was_trained_on(tiny_policy, tmp_path):
    from algorithms.router_data import route
    from envs.tasks import TutoringTask

    policy, tok = tiny_policy
    router = Router(policy.config.hidden_size, 3, hidden_dim=8, num_layers=1, dropout=0.0, pooling="last_message")
    router.save_pretrained(tmp_path)
    loaded = Router.from_pretrained(tmp_path)
    assert loaded.hparams["pooling"] == "last_message"
    observation = [{"role": "system", "content": "Topic: volcanoes"}, {"role": "student", "content": "hello"}]
    served = route(loaded, RouterFeatures(policy, tok, pooling="last_message"), TutoringTask, [observation])
    assert served.weights.shape == (1, 3)
    with pytest.raises(ValueError, match="trained on 'last_message' features"):
        route(loaded, RouterFeatures(policy, tok), TutoringTask, [observation])


@pytest.mark.parametrize("pooling", ["last_token", "last_message"])
def test_features_are_batched_by_length_and_returned_in_the_callers_order(tiny_policy, pooling):
    policy, tok = tiny_policy
    prompts = [[{"role": "user", "content": "atoms " * n}] for n in (1, 9, 3, 12, 2, 7)]
    batched = RouterFeatures(policy, tok, pooling=pooling, batch_size=2, share_prefixes=False)
    seen = []
    compute = batched._compute
    batched._compute = lambda chunk: seen.append([len(p[0]["content"]) for p in chunk]) or compute(chunk)
    feats = batched(prompts)
    assert seen == [[72, 54], [42, 18], [12, 6]]  # longest first: like lengths share a batch
    one_by_one = RouterFeatures(policy, tok, pooling=pooling, batch_size=1)
    torch.testing.assert_close(feats, torch.cat([one_by_one([p]) for p in prompts]), atol=1e-5, rtol=0)


def test_prompts_that_start_alike_are_grouped_by_their_shared_start():
    ids = [[1, 2, 3, 4, 5, 6], [9, 9, 9], [1, 2, 3, 4, 7], [1, 2, 3, 4, 5, 8, 8], [1, 2, 8]]
    groups = shared_prefix_groups(ids, min_shared=3, share=0.5)
    # 0, 3 and 2 share [1, 2, 3, 4]; 4 shares only [1, 2] with them (fewer than 3 tokens): alone
    assert groups == [(4, [0, 3, 2]), (0, [4]), (0, [1])]  # in token order
    # a prompt that is all prefix keeps one token of its own
    assert shared_prefix_groups([[1, 2, 3], [1, 2, 3, 4]], min_shared=2) == [(2, [0, 1])]
    assert shared_prefix_groups([[1, 2, 3, 4]] * 2, min_shared=2) == [(3, [0, 1])]
    # sharing less than half of the shorter prompt is not worth a group
    assert shared_prefix_groups([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 9, 9, 9, 9]], min_shared=2) == [(0, [0]), (0, [1])]


def test_a_shared_start_is_run_once_and_gives_the_same_features(tiny_policy):
    policy, tok = tiny_policy
    system = {"role": "system", "content": "A long shared opening about the water cycle, " * 4}
    prompts = [[system, {"role": "user", "content": reply}] for reply in ("ok", "I see, go on please", "why?")]
    prompts.append("something else entirely")
    shared = RouterFeatures(policy, tok, batch_size=8)
    alone, calls = [], []
    compute, compute_shared = shared._compute, shared._compute_shared
    shared._compute = lambda chunk: alone.append(len(chunk)) or compute(chunk)
    shared._compute_shared = lambda prefix, suffixes: calls.append(len(suffixes)) or compute_shared(prefix, suffixes)
    feats = shared(prompts)
    assert calls == [3] and alone == [1]  # the three conversations in one pass after their start
    one_by_one = RouterFeatures(policy, tok, batch_size=1, share_prefixes=False)
    torch.testing.assert_close(feats, torch.cat([one_by_one([p]) for p in prompts]), atol=1e-5, rtol=0)

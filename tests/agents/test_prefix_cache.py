"""Keys and values kept between turns (agents.prefix_cache): each turn's logits equal a full prefill's."""

import pytest
import torch

from agents import generate, score_completions
from agents.generation import encode_prompts
from agents.prefix_cache import PrefixCache, common_prefix

OPENINGS = [
    [{"role": "system", "content": "You tutor one student."}, {"role": "user", "content": "Teach me about tides."}],
    [{"role": "system", "content": "You tutor one student."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Why is the sky blue? Answer in one long sentence, please."}],
]
REPLIES = ["Go on.", "I am not sure I follow what you mean by that, can you say it again?", "Ok"]


def _next_turn(dialogues, texts):
    return [d + [{"role": "assistant", "content": t}, {"role": "user", "content": r}]
            for d, t, r in zip(dialogues, texts, REPLIES)]


def test_common_prefix_known_cases():
    a = torch.tensor([1, 2, 3, 4])
    assert common_prefix(a, torch.tensor([1, 2, 9]), limit=10) == 2
    assert common_prefix(a, torch.tensor([1, 2, 3, 4, 5]), limit=10) == 4
    assert common_prefix(a, torch.tensor([1, 2, 3, 4, 5]), limit=3) == 3  # the limit keeps a token to feed
    assert common_prefix(a, torch.tensor([7]), limit=10) == 0
    assert common_prefix(a, torch.tensor([1]), limit=0) == 0


@pytest.mark.parametrize("selection", [dict(head=1), dict(head=[0, 2, 1]), dict(weights=[0.2, 0.5, 0.3]),
                                       dict(head=[0, 2, 1], batch_size=2)],
                         ids=["one-head", "head-per-row", "mixture", "in-chunks"])
def test_later_turns_reuse_the_cache_and_score_as_a_full_prefill(tiny_policy, selection):
    policy, tok = tiny_policy
    cache = PrefixCache(len(OPENINGS))
    dialogues = OPENINGS
    selection = dict(selection)  # the parametrised dict itself stays as it is
    chunks = {"batch_size": selection.pop("batch_size", None)}
    for turn in range(3):  # rows end at different steps, and some hit the length limit
        out = generate(policy, tok, dialogues, max_new_tokens=10, seed=turn, prefix_cache=cache, **chunks,
                       **selection)
        scored = score_completions(policy, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask,
                                   **selection)
        torch.testing.assert_close(out.logprobs, scored, atol=1e-4, rtol=0)
        for i, row in enumerate(cache.rows):  # each row holds its prompt and the completion tokens it fed
            prompt = out.prompt_ids[i][out.prompt_mask[i].bool()]
            fed = len(row.tokens) - len(prompt)
            assert 0 <= fed < int(out.completion_mask[i].sum()) + 1
            assert torch.equal(row.tokens, torch.cat([prompt, out.completion_ids[i, :fed]]))
            assert row.keys[0].shape[1] == len(row.tokens)
        dialogues = _next_turn(dialogues, out.texts)
    assert 0.3 < cache.reused_fraction < 1  # later turns take most of their prompt from the cache


def test_cached_turns_give_the_tokens_of_uncached_ones_when_greedy(tiny_policy):
    policy, tok = tiny_policy
    cache = PrefixCache(len(OPENINGS))
    cached, plain = OPENINGS, OPENINGS
    for turn in range(3):
        a = generate(policy, tok, cached, head=0, max_new_tokens=8, temperature=0, prefix_cache=cache,
                     prompt_features=True)
        b = generate(policy, tok, plain, head=0, max_new_tokens=8, temperature=0, prompt_features=True)
        assert a.texts == b.texts
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.prompt_features, b.prompt_features, atol=1e-4, rtol=1e-4)  # the router's input
        cached, plain = _next_turn(cached, a.texts), _next_turn(plain, b.texts)
    assert cache.reused_tokens > 0


def test_a_changed_dialogue_reuses_only_its_common_start(tiny_policy):
    policy, tok = tiny_policy
    cache = PrefixCache(2)
    first = generate(policy, tok, OPENINGS[:2], head=0, max_new_tokens=6, seed=0, prefix_cache=cache)
    rewritten = [OPENINGS[0][:1] + [{"role": "user", "content": "Teach me about volcanoes instead."}],
                 _next_turn(OPENINGS[1:2], first.texts[1:])[0]]
    out = generate(policy, tok, rewritten, head=0, max_new_tokens=6, seed=1, prefix_cache=cache)
    scored = score_completions(policy, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, head=0)
    torch.testing.assert_close(out.logprobs, scored, atol=1e-4, rtol=0)
    ids, mask = encode_prompts(tok, rewritten[:1])
    assert cache.reused_tokens < cache.prompt_tokens - int(mask.sum())  # the rewritten row fed its new request


def test_prefix_cache_is_refused_where_it_cannot_work(tiny_policy):
    from agents import DraftJudge

    policy, tok = tiny_policy
    with pytest.raises(ValueError, match="drop_finished"):
        generate(policy, tok, OPENINGS, max_new_tokens=4, drop_finished=False, prefix_cache=PrefixCache(3))
    with pytest.raises(ValueError, match="decoder"):
        generate(policy, tok, OPENINGS, max_new_tokens=4, decoder=DraftJudge(block=2), prefix_cache=PrefixCache(3))
    with pytest.raises(ValueError, match="PrefixCache"):
        generate(policy, tok, OPENINGS, head=0, max_new_tokens=4, prefix_cache=PrefixCache(2))


def test_tutoring_episodes_play_the_same_with_and_without_the_cache_when_greedy(tiny_policy):
    from algorithms.components import build_task
    from algorithms.episodes import play_episodes
    from tests.conftest import compose_config

    policy, tok = tiny_policy
    task = build_task(compose_config("opsd"))  # the scripted student's replies grow the dialogue every turn
    options = task.eval_options(2, split="eval")[:4]
    played = [play_episodes(policy, tok, task, {"head": torch.tensor([0, 1, 0, 1])}, options, driver="x", turns=3,
                            max_new_tokens=8, temperature=0, seed=0, keep_features=True, reuse_kv=reuse)
              for reuse in (False, True)]
    for plain, cached in zip(*played):
        assert plain.actions == cached.actions and plain.feedback == cached.feedback
        torch.testing.assert_close(torch.tensor(cached.features), torch.tensor(plain.features), atol=1e-4, rtol=1e-4)


def test_the_cache_goes_under_the_keyword_the_model_declares_also_through_peft(tiny):
    import inspect

    from peft import LoraConfig, get_peft_model

    from agents.prefix_cache import with_cache

    (name,) = with_cache(tiny.model, None)
    assert name in inspect.signature(type(tiny.model).forward).parameters  # cache, or past_key_values before 5.2x
    wrapped = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert with_cache(wrapped, None) == {name: None}  # peft's forward passes **kwargs on to the base model's

"""The architecture matrix: tiny random checkpoints of the families users bring, passed as agent.model=<dir>.

Each family is built from its config (2 layers, hidden size 64, the embedded tokenizer; Gemma3 with a
larger vocabulary than the tokenizer's and tied embeddings; GPT-2 and OPT with absolute position
embeddings), saved with ``save_pretrained`` next to the tokenizer, and then used as a user would:
a 2-step OPSD run in float32 and one in bfloat16 (the ``trainable`` choices rotate over the
families), a 1-step RLVR run, router features under left padding, Persona-judge decoding and the
export of a head.
"""

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import algorithms.opsd as opsd
import algorithms.rlvr as rlvr
from agents import DraftJudge, MultiHeadPolicy, RouterFeatures, generate, score_completions
from agents.models import embedded_tokenizer
from agents.prefix_cache import PrefixCache
from tests.algorithms.test_rlvr import TINY_RLVR
from tests.conftest import TINY_OPSD, compose_config

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=1024)


def _configs(vocab: int) -> dict[str, transformers.PretrainedConfig]:
    return {
        "llama": transformers.LlamaConfig(**SMALL, num_key_value_heads=2, vocab_size=vocab),
        "qwen2": transformers.Qwen2Config(**SMALL, num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=True),
        "qwen3": transformers.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16, vocab_size=vocab),
        "gemma3": transformers.Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=16, vocab_size=vocab + 16384,
                                                sliding_window=64, tie_word_embeddings=True),
        "mistral": transformers.MistralConfig(**SMALL, num_key_value_heads=2, vocab_size=vocab, sliding_window=None),
        "phi3": transformers.Phi3Config(**SMALL, num_key_value_heads=4, vocab_size=vocab),
        "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=vocab),
        "opt": transformers.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=1024, word_embed_proj_dim=64, vocab_size=vocab),
    }


FAMILIES = list(_configs(8))
TRAINABLE = ("heads", "lora", "full", "last_layers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``family -> folder`` of a saved tiny random model with the embedded tokenizer."""
    tokenizer = embedded_tokenizer()
    folders = {}
    for family, config in _configs(len(tokenizer)).items():
        config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


def _opsd(folder, run, *extra):
    cfg = compose_config("opsd", *TINY_OPSD, "agent=smollm2", f"agent.model={folder}", "algorithm.eval.enabled=false",
                         *extra)
    return opsd.train(cfg, run)


@pytest.mark.parametrize("family", FAMILIES)
def test_opsd_trains_each_family_in_float32_and_bfloat16(family, checkpoints, tmp_path):
    folder = checkpoints[family]
    summary = _opsd(folder, tmp_path / "fp32")
    assert summary["finished"] and summary["last_step"]["loss/total"] > 0
    trainable = TRAINABLE[FAMILIES.index(family) % len(TRAINABLE)]
    summary = _opsd(folder, tmp_path / "bf16", "agent.dtype=bfloat16", f"algorithm.trainable={trainable}")
    assert summary["finished"] and torch.isfinite(torch.tensor(summary["last_step"]["loss/total"]))
    # the saved policy loads back, and its head exports as a plain model with the same logits
    policy = MultiHeadPolicy.from_pretrained(tmp_path / "fp32" / "policy")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fp32" / "policy")
    policy.export(tmp_path / "export", head=1, tokenizer=tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    ids = tokenizer(["The sun"], return_tensors="pt")
    with torch.no_grad(), policy.use(head=1):
        torch.testing.assert_close(plain(**ids).logits, policy.model(**ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_rlvr_router_features_and_persona_judge_on_each_family(family, checkpoints, tmp_path):
    folder = checkpoints[family]
    cfg = compose_config("rlvr", *TINY_RLVR, "agent=smollm2", f"agent.model={folder}", "algorithm.steps=1",
                         "algorithm.eval.enabled=false")
    assert rlvr.train(cfg, tmp_path / "rlvr")["finished"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    policy = MultiHeadPolicy(model, num_heads=2, head_names=["a", "b"], seed=0).eval()
    prompts = [[{"role": "user", "content": "Explain tides in one long sentence, please."}],
               [{"role": "user", "content": "Hi"}]]
    features = RouterFeatures(policy, tokenizer)
    both = features(prompts)  # the short prompt is left-padded in this batch
    alone = RouterFeatures(policy, tokenizer)(prompts[1:])
    torch.testing.assert_close(both[1], alone[0], atol=1e-4, rtol=1e-4)  # padding does not move positions
    opening = [{"role": "system", "content": "Tides follow the moon and the sun. " * 6}]
    alike = [opening + [{"role": "user", "content": q}] for q in ("Why?", "And the sun, what does it do?")]
    torch.testing.assert_close(RouterFeatures(policy, tokenizer)(alike),  # the shared start run once
                               RouterFeatures(policy, tokenizer, share_prefixes=False)(alike), atol=1e-4, rtol=1e-4)
    out = generate(policy, tokenizer, prompts, max_new_tokens=6, seed=0, decoder=DraftJudge(block=2))
    assert out.completion_ids.shape[0] == 2 and (out.logprobs <= 0).all()
    cache = PrefixCache(2)  # a second turn continues the first's keys and values: same logits as a full prefill
    for turn in range(2):
        out = generate(policy, tokenizer, prompts, head=[0, 1], max_new_tokens=6, seed=turn, prefix_cache=cache)
        scored = score_completions(policy, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask,
                                   head=[0, 1])
        torch.testing.assert_close(out.logprobs, scored, atol=1e-4, rtol=0)
        prompts = [p + [{"role": "assistant", "content": t}, {"role": "user", "content": "Go on."}]
                   for p, t in zip(prompts, out.texts)]
    assert (cache.reused_tokens > 0) == (family != "gemma3")  # sliding-window layers are prefilled every turn

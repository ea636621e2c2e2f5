"""Shared fixtures: tiny random backbones (built locally in ~0.2 s with the real tokenizer)."""

import pytest
import torch

from agents import MultiHeadPolicy, load_backbone


@pytest.fixture
def tiny():
    """A fresh tiny random Llama backbone (model, tokenizer)."""
    return load_backbone("tiny-random", seed=0)


@pytest.fixture
def tiny_policy(tiny):
    """A 3-head policy over a fresh tiny backbone, and its tokenizer."""
    policy = MultiHeadPolicy(tiny.model, num_heads=3, head_names=["a", "b", "c"], seed=0)
    return policy, tiny.tokenizer


@pytest.fixture
def batch(tiny):
    """A left-padded batch of two prompts of different lengths."""
    enc = tiny.tokenizer(["The mitochondria is the powerhouse", "Hi"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # really padded on the left
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

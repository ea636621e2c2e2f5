"""The draws behind sampling: the same numbers as torch's own kernels, from the same generator."""

import pytest
import torch

from agents.sampling import exponential_draws, multinomial_one


@pytest.mark.parametrize("shape", [(1,), (3, 7), (8, 49152)])
def test_exponential_draws_equal_torch_s_bits_and_leave_the_generator_where_it_would(shape):
    for seed in (0, 1, 12345):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        fast = exponential_draws(shape, generator=ours)
        kernel = torch.empty(shape).exponential_(1, generator=theirs)
        assert fast.dtype == torch.float32 and fast.shape == kernel.shape
        assert torch.equal(fast, kernel)
        assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs))


def test_exponential_draws_use_the_global_generator_when_given_none():
    torch.manual_seed(7)
    fast = exponential_draws((2, 300))
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(fast, torch.empty(2, 300).exponential_(1)) and torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multinomial_one_picks_multinomial_s_token(dtype):
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(16, 500, generator=gen, dtype=dtype) * 3, dim=-1)
    probs[:, :100] = 0  # tokens that can never come out
    for seed in range(5):
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        picked = multinomial_one(probs, ours)
        assert torch.equal(picked, torch.multinomial(probs, 1, generator=theirs).squeeze(-1))
        assert (picked >= 100).all()
        assert torch.equal(multinomial_one(probs[0], ours), torch.multinomial(probs[0], 1, generator=theirs)[0])

"""The fp32 few-row projection and the module class that routes a model's linear layers through it."""

import pytest
import torch
from torch import nn

from agents.projection import (
    SKINNY_ROWS,
    SkinnyLinear,
    padded_rows,
    project,
    project_mixture,
    use_skinny_linears,
)


def test_few_rows_are_contiguous_and_equal_linear_and_other_cases_are_linear_exactly():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 40, generator=gen), torch.randn(96, generator=gen)
    few = torch.randn(8, 1, 40, generator=gen)
    out = project(few, weight, bias)
    assert out.shape == (8, 1, 96) and out.is_contiguous()
    torch.testing.assert_close(out, nn.functional.linear(few, weight, bias), rtol=1e-5, atol=1e-5)
    many = torch.randn(SKINNY_ROWS + 1, 40, generator=gen)
    assert torch.equal(project(many, weight, bias), nn.functional.linear(many, weight, bias))
    few16, w16 = few.bfloat16(), weight.bfloat16()  # bf16: oneDNN's linear is the faster one
    assert torch.equal(project(few16, w16), nn.functional.linear(few16, w16))


def test_only_plain_linears_change_class_and_nothing_else_changes():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), Custom(5, 4), nn.Sequential(nn.Linear(4, 3, bias=False)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 6)
    expected = model(x)
    assert use_skinny_linears(model) == 2
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [SkinnyLinear, Custom, SkinnyLinear]
    assert use_skinny_linears(model) == 0  # a second call does nothing
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    model(x).sum().backward()  # gradients flow through the new path
    assert model[0].weight.grad is not None and model[3][0].weight.grad is not None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loaded_backbones_decode_through_it_and_keep_generate_s_tokens(dtype):
    from agents import load_backbone

    model, tokenizer = load_backbone("tiny-random", dtype=dtype)
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert any(isinstance(m, SkinnyLinear) for m in model.modules())
    ids = tokenizer(["hello there", "a longer prompt here"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    tokens = model.generate(**ids, max_new_tokens=6, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    for module in model.modules():  # back to plain linear layers: the same tokens
        if type(module) is SkinnyLinear:
            module.__class__ = nn.Linear
    torch.manual_seed(0)
    plain = model.generate(**ids, max_new_tokens=6, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(tokens, plain)


def test_one_row_against_a_large_weight_goes_as_two_and_keeps_the_result(monkeypatch):
    import agents.projection as projection

    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(300, 24, generator=gen), torch.randn(300, generator=gen)
    row = torch.randn(1, 1, 24, generator=gen)
    as_two = (weight @ torch.cat([row.reshape(1, 24), torch.zeros(1, 24)]).T)[:, 0] + bias
    alone = (weight @ row.reshape(1, 24).T)[:, 0] + bias
    monkeypatch.setattr(projection, "GEMV_PAD_NUMEL", weight.numel())  # this weight now counts as large
    out = project(row, weight, bias)
    assert out.shape == (1, 1, 300) and out.is_contiguous()
    assert torch.equal(out.flatten(), as_two)
    torch.testing.assert_close(out, nn.functional.linear(row, weight, bias), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(projection, "GEMV_PAD_NUMEL", weight.numel() + 1)  # small: the row goes alone
    assert torch.equal(project(row, weight, bias).flatten(), alone)


def test_a_mixture_of_projections_accumulates_each_row_s_own_mix_with_or_without_autograd():
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(50, 12, generator=gen) for _ in range(3)]
    hidden, coefficients = torch.randn(6, 12, generator=gen), torch.rand(6, 3, generator=gen)
    expected = sum(coefficients[:, d:d + 1] * (hidden @ w.T) for d, w in enumerate(weights))
    with torch.no_grad():  # the few-row path: one accumulating buffer
        out = project_mixture(hidden, weights, coefficients)
    assert out.shape == (6, 50) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    thirteen = torch.randn(13, 12, generator=gen)  # padded to 16 rows, the padding dropped
    mixed = torch.rand(13, 3, generator=gen)
    with torch.no_grad():
        out = project_mixture(thirteen, weights, mixed)
    assert out.shape == (13, 50) and out.is_contiguous()
    torch.testing.assert_close(out, sum(mixed[:, d:d + 1] * (thirteen @ w.T) for d, w in enumerate(weights)),
                               rtol=1e-5, atol=1e-5)
    many = torch.randn(SKINNY_ROWS + 1, 12, generator=gen)
    torch.testing.assert_close(project_mixture(many, weights, torch.full((SKINNY_ROWS + 1, 3), 0.5)),
                               0.5 * sum(many @ w.T for w in weights), rtol=1e-5, atol=1e-5)
    coefficients.requires_grad_(True)  # a router learning its weights: gradients reach the coefficients
    project_mixture(hidden, weights, coefficients).sum().backward()
    torch.testing.assert_close(coefficients.grad, torch.stack([(hidden @ w.T).sum(1) for w in weights], 1))


def test_rows_beyond_a_panel_of_eight_are_padded_to_whole_panels_and_the_padding_dropped():
    small, large = torch.zeros(4, 4), torch.zeros(1, 1).expand(4 * 2**20, 1)
    assert [padded_rows(n, small) for n in (1, 2, 8, 9, 11, 12, 15, 16, 17, 63, 64)] == \
        [1, 2, 8, 9, 11, 16, 16, 16, 24, 64, 64]
    assert padded_rows(1, large) == 2  # MKL's matrix-vector path is the slow one for a large weight
    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(70, 16, generator=gen), torch.randn(70, generator=gen)
    rows = torch.randn(13, 16, generator=gen)
    out = project(rows, weight, bias)
    assert out.shape == (13, 70) and out.is_contiguous()
    assert torch.equal(out, (weight @ torch.cat([rows, torch.zeros(3, 16)]).T)[:, :13].T + bias)
    torch.testing.assert_close(out, nn.functional.linear(rows, weight, bias), rtol=1e-5, atol=1e-5)

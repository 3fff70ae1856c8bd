"""Tests for `miva.attention_processors.lora.LoRADelta`: the formula, the research init and dtype handling."""

import pytest
import torch

from miva.attention_processors import LoRADelta


def _randomised(in_features=16, out_features=12, rank=4, alpha=2.0, seed=0):
    """A delta whose `up` is no longer zero (as after training)."""
    torch.manual_seed(seed)
    delta = LoRADelta(in_features, out_features, rank=rank, alpha=alpha)
    with torch.no_grad():
        delta.up.weight.normal_()
    return delta


@pytest.mark.parametrize("alpha", [2.0, 1.0, 32.0])
def test_delta_equals_explicit_formula(alpha):
    rank = 4
    delta = _randomised(rank=rank, alpha=alpha)
    x = torch.randn(2, 5, 16)  # (batch, tokens, in_features)
    expected = x @ delta.down.weight.T @ delta.up.weight.T * alpha / rank
    out = delta(x)
    assert out.shape == (2, 5, 12)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert out.abs().max() > 1e-3  # the comparison is not between two zeros


def test_alpha_none_means_no_scaling():
    delta = _randomised(rank=4, alpha=None)
    assert delta.scale == 1.0
    x = torch.randn(3, 16)
    torch.testing.assert_close(delta(x), x @ delta.down.weight.T @ delta.up.weight.T, atol=1e-6, rtol=1e-6)


def test_default_scale_is_alpha_over_rank():
    delta = LoRADelta(8, 8)  # seed defaults: rank 32, alpha 1 -> factor 1/32
    assert (delta.rank, delta.alpha, delta.scale) == (32, 1.0, 1.0 / 32)
    assert delta.in_features == 8 and delta.out_features == 8
    assert "rank=32" in repr(delta) and "alpha=1.0" in repr(delta)


def test_delta_weight_is_the_dense_matrix():
    delta = _randomised(rank=4, alpha=3.0)
    weight = delta.delta_weight()
    assert weight.shape == (12, 16)  # (out_features, in_features), like nn.Linear.weight
    torch.testing.assert_close(weight, delta.up.weight @ delta.down.weight * 3.0 / 4, atol=1e-6, rtol=1e-6)
    x = torch.randn(7, 16)
    torch.testing.assert_close(x @ weight.T, delta(x), atol=1e-6, rtol=1e-5)


def test_init_is_research_init():
    torch.manual_seed(0)
    rank = 8
    delta = LoRADelta(4096, 64, rank=rank)
    assert torch.count_nonzero(delta.up.weight) == 0
    down = delta.down.weight
    assert down.shape == (rank, 4096)
    # 32768 samples of N(0, (1/rank)^2): the sample std is within 2% of 1/rank, the mean within a few std errors of 0.
    assert down.std().item() == pytest.approx(1.0 / rank, rel=0.02)
    assert abs(down.mean().item()) < 5 * (1.0 / rank) / down.numel() ** 0.5
    assert delta.down.bias is None and delta.up.bias is None
    out = delta(torch.randn(3, 4096))
    assert torch.count_nonzero(out) == 0  # a new delta is exactly zero


def test_fp32_delta_on_bf16_input_returns_bf16():
    delta = _randomised(rank=4, alpha=1.0)
    x = torch.randn(4, 16).to(torch.bfloat16)
    out = delta(x)
    assert out.dtype == torch.bfloat16
    # Computed in fp32 from the bf16 values, then rounded once.
    expected = (x.float() @ delta.down.weight.T @ delta.up.weight.T / 4).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_bf16_delta_on_fp32_input_returns_fp32():
    delta = _randomised(rank=4, alpha=1.0).to(torch.bfloat16)
    x = torch.randn(4, 16)
    out = delta(x)
    assert out.dtype == torch.float32
    expected = (x.bfloat16() @ delta.down.weight.T @ delta.up.weight.T / 4).float()
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)


def test_gradients_at_init_reach_up_only_through_the_formula():
    """With `up = 0`, d(loss)/d(down) is zero and d(loss)/d(up) = scale * g^T (down x)."""
    torch.manual_seed(0)
    delta = LoRADelta(6, 5, rank=3, alpha=1.5)
    x = torch.randn(4, 6)
    g = torch.randn(4, 5)
    (delta(x) * g).sum().backward()
    assert torch.count_nonzero(delta.down.weight.grad) == 0
    expected_up_grad = g.T @ (x @ delta.down.weight.detach().T) * 1.5 / 3
    torch.testing.assert_close(delta.up.weight.grad, expected_up_grad, atol=1e-6, rtol=1e-5)

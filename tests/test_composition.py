"""The composers of `attention_processors/composition.py` on bare tokens, with no UNet and no MIVA processor.

A layer shaped like a DiT block's self-attention (tokens `(batch, tokens, C)`, RMS-normalised queries and keys as
the `Site`'s `finish_query` / `finish_kv`) runs three LoRA branches through `compose`; the reference below writes
each projection, delta, the multi-head softmax and the composition rule out by hand. Both the plain path (autograd
on) and the fast variants (no autograd: stacked deltas, merged deltas) must equal it.
"""

import pytest
import torch
from diffusers.models.attention_processor import Attention

from miva.attention_processors.composition import Branch, Site, compose
from miva.attention_processors.lora import LoRADelta

DIM, HEADS, TOKENS, BATCH = 16, 2, 10, 3
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


def _rms(t):
    """A q/k norm per head (what a DiT applies after the projections); no learned scale."""
    b, n, c = t.shape
    h = t.view(b, n, HEADS, c // HEADS)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).view(b, n, c)


def _softmax_attention(q, k, v):
    b, n, c = q.shape
    d = c // HEADS
    q, k, v = (t.view(b, -1, HEADS, d).transpose(1, 2) for t in (q, k, v))
    p = (q @ k.transpose(-1, -2) / d**0.5).softmax(-1)
    return (p @ v).transpose(1, 2).reshape(b, n, c)


def _layer_and_branches(seed):
    generator = torch.Generator().manual_seed(seed)
    attn = Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    loras = []
    for rank in (2, 4, 3):
        deltas = {name: LoRADelta(DIM, DIM, rank, alpha=2.0) for name in PROJECTIONS}
        with torch.no_grad():
            for delta in deltas.values():
                for p in delta.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        loras.append(deltas)
    x = torch.randn(BATCH, TOKENS, DIM, generator=generator)
    return attn, loras, x


def _projection(attn, name, t, deltas, weights):
    """`W t + b + sum_i w_i up_i down_i t * alpha_i / r_i`, written out."""
    linear = attn.to_out[0] if name == "to_out" else getattr(attn, name)
    out = t @ linear.weight.T + (0 if linear.bias is None else linear.bias)
    for d, w in zip(deltas, weights):
        out = out + w * (t @ d[name].down.weight.T @ d[name].up.weight.T) * (d[name].alpha / d[name].rank)
    return out


def _attention(attn, x, deltas, weights):
    q, k, v = (_projection(attn, p, x, deltas, weights) for p in ("to_q", "to_k", "to_v"))
    return _projection(attn, "to_out", _softmax_attention(_rms(q), _rms(k), v), deltas, weights)


def _site(attn, x):
    return Site(attn, x, lambda q, k, v, mask=None: _softmax_attention(q, k, v),
                finish_query=_rms, finish_kv=lambda k, v: (_rms(k), v))


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.4], [0.6, 0.1, 0.3], [1.0, 0.0, 0.0]])
@pytest.mark.parametrize("grad", [True, False])
def test_residual_composer_on_dit_like_tokens(weights, grad):
    attn, loras, x = _layer_and_branches(seed=1)
    branches = [Branch(w, dict(d)) for d, w in zip(loras, weights)]
    with torch.set_grad_enabled(grad):
        ours = compose("residual", _site(attn, x), branches)
    with torch.no_grad():
        base = _attention(attn, x, [], [])
        expected = base + sum(w * (_attention(attn, x, [d], [1.0]) - base) for d, w in zip(loras, weights))
    assert (expected - base).abs().max() > 1e-2  # the branches matter
    torch.testing.assert_close(ours.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
def test_weights_composer_sums_the_scaled_deltas_into_one_attention(grad):
    attn, loras, x = _layer_and_branches(seed=2)
    weights = [0.5, 0.3, 0.4]
    branches = [Branch(w, dict(d)) for d, w in zip(loras, weights)]
    with torch.set_grad_enabled(grad):
        ours = compose("weights", _site(attn, x), branches)
    with torch.no_grad():
        expected = _attention(attn, x, loras, weights)
        residual = compose("residual", _site(attn, x), branches)
    assert (expected - residual).abs().max() > 1e-3  # the two modes differ here
    torch.testing.assert_close(ours.detach(), expected, atol=1e-5, rtol=1e-5)


def test_output_branch_takes_its_share_in_each_mode():
    """A precomputed output (the implicit prompt's kind of branch): `+ w f` in "residual" (with the base for the
    rest of the weight), a share `(1 - w) y + w f` of the merged attention in "weights"."""
    attn, loras, x = _layer_and_branches(seed=3)
    f = torch.randn(BATCH, TOKENS, DIM, generator=torch.Generator().manual_seed(4))
    branches = [Branch(0.6, dict(loras[0])), Branch(0.3, output=f)]
    with torch.no_grad():
        base = _attention(attn, x, [], [])
        one = _attention(attn, x, [loras[0]], [1.0])
        residual = compose("residual", _site(attn, x), branches)
        weights = compose("weights", _site(attn, x), branches)
        merged = _attention(attn, x, [loras[0]], [0.6])
    torch.testing.assert_close(residual, 0.6 * one + 0.3 * f + 0.1 * base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, 0.7 * merged + 0.3 * f, atol=1e-5, rtol=1e-5)


def test_unknown_mode_is_named():
    attn, _, x = _layer_and_branches(seed=5)
    with pytest.raises(ValueError, match=r"parallel_mode='sum' is not one of \['residual', 'weights'\]"):
        compose("sum", _site(attn, x), [])

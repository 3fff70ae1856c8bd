"""Tests for `MIVATemporalAttnProcessor`: stock equivalence, MotionLoRA formula, motion embedding, frame count.

Inputs are laid out as the motion modules pass them: `(batch*pixels, frames, channels)`.
"""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from processor_harness import activate, add_standalone_adapter, standalone_processor

from miva.attention_processors import MIVAAdapterConfig, MIVATemporalAttnProcessor

HEADS, DIM, MAX_FRAMES, PIXELS = 4, 32, 16, 6
MOTION_ONLY = dict(use_i2v=False)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _attn(seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS, out_bias=True).eval()


def _processor(attn, config=None, weight=1.0, seed=1, parallel_mode="residual"):
    """A processor with its own context; with `config`, adapter "a" is added, randomised and active."""
    processor = standalone_processor(MIVATemporalAttnProcessor, attn, config, weight=weight,
                                     layer_name="down_blocks.0.motion_modules.0.attn1.processor",
                                     max_frames=MAX_FRAMES, parallel_mode=parallel_mode)
    if config is not None:
        generator = _gen(seed)
        with torch.no_grad():
            for p in processor.adapters["a"].parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return processor


def _lora(delta, x, weight=1.0, alpha=1.0):
    """`w up(down(x)) alpha / rank`: alpha as configured by the test, rank from the shape of `down` (not the delta's
    own `scale`, so a wrong alpha/rank inside the processor shows)."""
    return weight * (x @ delta.down.weight.T @ delta.up.weight.T * (alpha / delta.down.weight.shape[0]))


def _reference_attention(q, k, v, heads=HEADS):
    """(B, N, C) x (B, M, C) -> (B, N, C): per-head softmax(q k^T / sqrt(d)) v, written out."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    probs = (q @ k.transpose(-1, -2) / d**0.5).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).reshape(b, n, c)


def _reference(attn, adapter, x, weight=1.0, alpha=1.0):
    """`x' = x + w E[:F]`; Q/K/V = W x' + w d(x'); `y = W_O a + b + w dO(a)` (the adapter at weight w)."""
    frames = x.shape[1]
    if adapter.motion_embed is not None:
        x = x + weight * adapter.motion_embed[:frames]
    q = x @ attn.to_q.weight.T
    k = x @ attn.to_k.weight.T
    v = x @ attn.to_v.weight.T
    if adapter.has_lora:
        q = q + _lora(adapter.to_q_lora, x, weight, alpha)
        k = k + _lora(adapter.to_k_lora, x, weight, alpha)
        v = v + _lora(adapter.to_v_lora, x, weight, alpha)
    a = _reference_attention(q, k, v)
    y = a @ attn.to_out[0].weight.T + attn.to_out[0].bias
    return y + _lora(adapter.to_out_lora, a, weight, alpha) if adapter.has_lora else y


def _inputs(frames, seed=3):
    return torch.randn(PIXELS, frames, DIM, generator=_gen(seed))


def test_no_adapter_and_fresh_adapter_equal_stock():
    attn = _attn()
    x = _inputs(8)
    expected = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(_processor(attn)(attn, x), expected, atol=1e-6, rtol=0)
    processor = _processor(attn)
    config = MIVAAdapterConfig(use_motion_lora=True, use_motion_embed=True, motion_lora_rank=4, **MOTION_ONLY)
    add_standalone_adapter(processor, attn, config)
    adapter = processor.adapters["a"]
    assert adapter.motion_embed.shape == (MAX_FRAMES, DIM) and torch.count_nonzero(adapter.motion_embed) == 0
    torch.testing.assert_close(processor(attn, x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [1, 8, 16])
@pytest.mark.parametrize("use_motion_embed", [False, True])
def test_motion_lora_formula(frames, use_motion_embed):
    """Frames come from the hidden_states shape (no num_frames anywhere): 1, 8 and 16 all match the reference."""
    attn = _attn()
    config = MIVAAdapterConfig(
        use_motion_lora=True,
        motion_lora_rank=4,
        motion_lora_scale=2.0,
        use_motion_embed=use_motion_embed,
        **MOTION_ONLY,
    )
    processor = _processor(attn, config)
    x = _inputs(frames)
    with torch.no_grad():
        out = processor(attn, x)
        expected = _reference(attn, processor.adapters["a"], x, alpha=2.0)
        stock = AttnProcessor2_0()(attn, x)
    assert out.shape == (PIXELS, frames, DIM)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-2


@pytest.mark.parametrize("frames", [1, 8, 16])
def test_motion_embedding_is_added_before_qkv(frames):
    """With only a motion embedding, the processor is the stock attention of `x + E[:frames]`."""
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(use_motion_lora=False, use_motion_embed=True, **MOTION_ONLY))
    adapter = processor.adapters["a"]
    assert not adapter.has_lora and not hasattr(adapter, "to_q_lora")
    x = _inputs(frames)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x + adapter.motion_embed[:frames])
        torch.testing.assert_close(processor(attn, x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("parallel_mode", ["residual", "weights"])
def test_single_adapter_weight(parallel_mode):
    """Weight 1 is the adapter in both modes; weight w is `base + w (adapter - base)` in "residual" and the
    w-scaled deltas (and embedding) in "weights"."""
    attn = _attn()
    config = MIVAAdapterConfig(use_motion_lora=True, motion_lora_rank=4, use_motion_embed=True, **MOTION_ONLY)
    processor = _processor(attn, config, parallel_mode=parallel_mode)
    adapter = processor.adapters["a"]
    x = _inputs(8)
    with torch.no_grad():
        full = processor(attn, x)
        torch.testing.assert_close(full, _reference(attn, adapter, x), atol=1e-5, rtol=1e-5)
        activate(processor, [("a", 0.4)])
        stock = AttnProcessor2_0()(attn, x)
        if parallel_mode == "residual":
            expected = stock + 0.4 * (full - stock)
        else:
            expected = _reference(attn, adapter, x, weight=0.4)
        torch.testing.assert_close(processor(attn, x), expected, atol=1e-5, rtol=1e-5)
        activate(processor, [("a", 0.0)])
        torch.testing.assert_close(processor(attn, x), stock, atol=1e-6, rtol=0)


def test_disabled_context_is_stock():
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(use_motion_lora=True, motion_lora_rank=4, **MOTION_ONLY))
    x = _inputs(8)
    processor.context.enabled = False
    torch.testing.assert_close(processor(attn, x), AttnProcessor2_0()(attn, x), atol=1e-6, rtol=0)


def test_adapter_without_temporal_part_builds_nothing():
    attn = _attn()
    processor = _processor(attn)
    processor.add_adapter(attn, "ca", MIVAAdapterConfig(use_motion_lora=False, use_ca_lora=True))
    assert "ca" not in processor.adapters

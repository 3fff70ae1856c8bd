"""Tests for `MIVACrossAttnProcessor`: stock equivalence, CA-LoRA formula, spatiotemporal Q, PE modes, implicit prompt.

Processor-level checks run on a stand-alone diffusers `Attention` (query width 32, text width 24, 4 heads) against
explicit references built from its weights; a module-scoped tiny `UNetMotionModel` covers the full-UNet paths.
"""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from processor_harness import activate, add_standalone_adapter, run_processor, standalone_processor

from miva.attention_processors import (
    MIVAAdapterConfig,
    MIVACrossAttnProcessor,
    add_miva_adapter,
    get_miva_adapter_modules,
    install_miva_processors,
    set_miva_adapters,
)
from miva.attention_processors.adapter_config import CA_PE_MODES, PE_STYLES
from miva.attention_processors.spatiotemporal_query import SpatiotemporalQuery
from miva.tiny import tiny_unet_motion

HEADS, QUERY_DIM, TEXT_DIM, TEXT_TOKENS = 4, 32, 24, 7
CA_ONLY = dict(use_i2v=False, use_motion_lora=False)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _attn(seed=0):
    torch.manual_seed(seed)
    return Attention(
        query_dim=QUERY_DIM, cross_attention_dim=TEXT_DIM, heads=HEADS, dim_head=QUERY_DIM // HEADS, out_bias=True
    ).eval()


def _processor(attn, config=None, weight=1.0, seed=1, **context_fields):
    """A processor with its own context (`context_fields`, e.g. `parallel_mode`); with `config`, adapter "a" is
    added, randomised and active."""
    processor = standalone_processor(MIVACrossAttnProcessor, attn, config, weight=weight,
                                     layer_name="test.attn2.processor", **context_fields)
    if config is not None:
        generator = _gen(seed)
        with torch.no_grad():
            for p in processor.adapters["a"].parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return processor


def _video_text(videos, frames, seed=2):
    """(videos*frames, T, D): one prompt per video repeated per frame, as the pipeline passes it."""
    return torch.randn(videos, TEXT_TOKENS, TEXT_DIM, generator=_gen(seed)).repeat_interleave(frames, dim=0)


def _lora(delta, x, alpha):
    """`up(down(x)) * alpha / rank`: alpha from the test's config, rank from the shape of `down` (the processor's own
    `scale` is not used, so a wrong alpha/rank inside the processor shows)."""
    return x @ delta.down.weight.T @ delta.up.weight.T * (alpha / delta.down.weight.shape[0])


def _reference_attention(q, k, v, heads=HEADS):
    """Per-head softmax(q k^T / sqrt(d)) v written out: (B, N, C) x (B, M, C) -> (B, N, C)."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    probs = (q @ k.transpose(-1, -2) / d**0.5).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).reshape(b, n, c)


# ------------------------------------------------------------------------------------------------ stock equality


def test_no_adapter_equals_stock_processor():
    attn = _attn()
    x = torch.randn(6, 20, QUERY_DIM, generator=_gen(0))
    text = torch.randn(6, TEXT_TOKENS, TEXT_DIM, generator=_gen(1))
    expected = AttnProcessor2_0()(attn, x, text)
    torch.testing.assert_close(_processor(attn)(attn, x, text), expected, atol=1e-6, rtol=0)
    # A freshly added adapter (zero-initialised CA-LoRA and Q-LoRA) is a no-op too.
    fresh = _processor(attn)
    config = MIVAAdapterConfig(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, **CA_ONLY)
    add_standalone_adapter(fresh, attn, config)
    torch.testing.assert_close(fresh(attn, x, text), expected, atol=1e-6, rtol=0)


def test_attention_mask_matches_stock_and_is_refused_with_adapters():
    attn = _attn()
    x = torch.randn(2, 5, QUERY_DIM, generator=_gen(0))
    text = torch.randn(2, TEXT_TOKENS, TEXT_DIM, generator=_gen(1))
    mask = torch.zeros(2, TEXT_TOKENS)
    mask[0, 4:] = -10000.0
    expected = AttnProcessor2_0()(attn, x, text, attention_mask=mask)
    torch.testing.assert_close(_processor(attn)(attn, x, text, attention_mask=mask), expected, atol=1e-6, rtol=0)
    adapted = _processor(attn, MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, **CA_ONLY))
    with pytest.raises(ValueError, match="attention masks are not supported with active MIVA adapters"):
        adapted(attn, x, text, attention_mask=mask)


# ---------------------------------------------------------------------------------------------------- CA-LoRA


@pytest.mark.parametrize("parallel_mode", ["residual", "weights"])
@pytest.mark.parametrize("use_q_lora", [False, True])
def test_ca_lora_formula(use_q_lora, parallel_mode):
    """`y = W_O a + b + dO(a)`, `a = attn(W_Q x [+ dQ(x)], W_K e + dK(e), W_V e + dV(e))` (one adapter, weight 1,
    in both parallel modes)."""
    attn = _attn()
    config = MIVAAdapterConfig(use_ca_lora=True, use_q_lora=use_q_lora, ca_lora_rank=4, ca_lora_scale=2.0, **CA_ONLY)
    processor = _processor(attn, config, parallel_mode=parallel_mode)
    adapter = processor.adapters["a"]
    assert hasattr(adapter, "to_q_lora") == use_q_lora
    x = torch.randn(4, 12, QUERY_DIM, generator=_gen(3))
    text = torch.randn(4, TEXT_TOKENS, TEXT_DIM, generator=_gen(4))
    with torch.no_grad():
        q = x @ attn.to_q.weight.T
        if use_q_lora:
            q = q + _lora(adapter.to_q_lora, x, 2.0)
        k = text @ attn.to_k.weight.T + _lora(adapter.to_k_lora, text, 2.0)
        v = text @ attn.to_v.weight.T + _lora(adapter.to_v_lora, text, 2.0)
        a = _reference_attention(q, k, v)
        expected = a @ attn.to_out[0].weight.T + attn.to_out[0].bias + _lora(adapter.to_out_lora, a, 2.0)
        out = processor(attn, x, text)
        stock = AttnProcessor2_0()(attn, x, text)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-2  # the deltas are really there


# ------------------------------------------------------------------------------------------ spatiotemporal Q


def test_stq_r1_without_pe_equals_ordinary_cross_attention():
    attn = _attn()
    videos, frames, size = 2, 3, (3, 4)
    x = torch.randn(videos * frames, 12, QUERY_DIM, generator=_gen(5))
    text = _video_text(videos, frames)
    plain_config = MIVAAdapterConfig(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, **CA_ONLY)
    stq_config = MIVAAdapterConfig(
        use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, q_downsample=True, q_downsample_ratio=1, **CA_ONLY
    )
    plain, stq = _processor(attn, plain_config, seed=7), _processor(attn, stq_config, seed=7)
    torch.testing.assert_close(run_processor(stq, attn, x, text, size=size, num_frames=frames), plain(attn, x, text),
                               atol=1e-6, rtol=0)
    # An STQ-only adapter (no LoRA) at r = 1 is exactly the stock cross-attention.
    stq_only = _processor(attn, MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=1, **CA_ONLY))
    torch.testing.assert_close(
        run_processor(stq_only, attn, x, text, size=size, num_frames=frames), AttnProcessor2_0()(attn, x, text),
        atol=1e-6, rtol=0,
    )


def _block_means(grid, r):
    """(B, h, w, C) -> (B, ceil(h/r), ceil(w/r), C): mean of each r x r block (edge blocks: the pixels present)."""
    _, h, w, _ = grid.shape
    rows = []
    for i in range(0, h, r):
        rows.append(torch.stack([grid[:, i : i + r, j : j + r].mean(dim=(1, 2)) for j in range(0, w, r)], dim=1))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (5, 9)])
@pytest.mark.parametrize("ratio", [2, 4])
def test_stq_helpers_nearest_avg_and_upsample(size, ratio):
    h, w = size
    videos, frames, channels = 2, 3, 5
    x = torch.randn(videos * frames, h * w, channels, generator=_gen(0))
    grid = x.view(videos, frames, h, w, channels)
    nearest = SpatiotemporalQuery((True, ratio, "nearest", None, "standard"))
    avg = SpatiotemporalQuery((True, ratio, "avg", None, "standard"))
    hq, wq = nearest.grid(size)
    assert (hq, wq) == (-(-h // ratio), -(-w // ratio))
    torch.testing.assert_close(nearest.downsample(x, frames, size), grid[:, :, ::ratio, ::ratio], atol=0, rtol=0)
    pooled = avg.downsample(x, frames, size)
    assert pooled.shape == (videos, frames, hq, wq, channels)
    expected = _block_means(x.view(videos * frames, h, w, channels), ratio).view(videos, frames, hq, wq, channels)
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-6)
    # Upsample: cell (i, j) of the coarse grid fills the r x r block at (i*r, j*r), cropped at the edges.
    coarse = torch.randn(videos, frames * hq * wq, channels, generator=_gen(1))
    up = nearest.upsample(coarse, frames, size)
    assert up.shape == (videos * frames, h * w, channels)
    up, coarse = up.view(videos, frames, h, w, channels), coarse.view(videos, frames, hq, wq, channels)
    for i in range(h):
        for j in range(w):
            assert torch.equal(up[:, :, i, j], coarse[:, :, i // ratio, j // ratio])


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (5, 9)])
@pytest.mark.parametrize("ratio", [2, 4])
@pytest.mark.parametrize("frames", [1, 8, 16])
def test_stq_equals_cross_attention_of_the_kept_pixels(size, ratio, frames):
    """Softmax runs over text tokens only, so a spatiotemporal query is an ordinary one: the output at (i, j) is the
    ordinary cross-attention output of the pixel that represents its block (nearest) or of the block mean (avg)."""
    h, w = size
    attn = _attn()
    videos = 2
    x = torch.randn(videos * frames, h * w, QUERY_DIM, generator=_gen(8))
    text = _video_text(videos, frames)
    common = dict(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, **CA_ONLY)
    plain = _processor(attn, MIVAAdapterConfig(**common), seed=9)
    rows = torch.arange(h) // ratio
    cols = torch.arange(w) // ratio
    hq, wq = -(-h // ratio), -(-w // ratio)
    with torch.no_grad():
        grid = x.view(videos * frames, h, w, QUERY_DIM)
        for mode in ("nearest", "avg"):
            stq = _processor(
                attn,
                MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=ratio, q_downsample_mode=mode, **common),
                seed=9,
            )
            out = run_processor(stq, attn, x, text, size=size, num_frames=frames)
            assert out.shape == x.shape
            kept = grid[:, ::ratio, ::ratio] if mode == "nearest" else _block_means(grid, ratio)
            coarse = plain(attn, kept.reshape(videos * frames, hq * wq, QUERY_DIM), text)
            expected = coarse.view(videos * frames, hq, wq, QUERY_DIM)[:, rows][:, :, cols]
            torch.testing.assert_close(out, expected.reshape(x.shape), atol=1e-5, rtol=1e-5)


def test_stq_needs_the_level_size():
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=2, **CA_ONLY))
    x, text = torch.randn(2, 16, QUERY_DIM), _video_text(1, 2)
    with pytest.raises(RuntimeError, match="spatiotemporal Q needs the level size"):
        run_processor(processor, attn, x, text, num_frames=2)


# -------------------------------------------------------------------------------------------- implicit prompt


@pytest.mark.parametrize("parallel_mode", ["residual", "weights"])
def test_implicit_prompt_formula_ignores_text(parallel_mode):
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(ca_mode="implicit", implicit_rank=6, **CA_ONLY),
                           parallel_mode=parallel_mode)
    implicit = processor.adapters["a"].implicit_prompt
    assert not hasattr(processor.adapters["a"], "to_k_lora")
    x = torch.randn(4, 10, QUERY_DIM, generator=_gen(3))
    text = torch.randn(4, TEXT_TOKENS, TEXT_DIM, generator=_gen(4))
    with torch.no_grad():
        hidden = (x @ attn.to_q.weight.T) @ implicit.down.weight.T + implicit.down.bias
        hidden = F.layer_norm(hidden, (6,), implicit.norm.weight, implicit.norm.bias, eps=implicit.norm.eps)
        expected = F.gelu(hidden) @ implicit.up.weight.T + implicit.up.bias
        out = processor(attn, x, text)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        other_text = torch.randn(4, TEXT_TOKENS, TEXT_DIM, generator=_gen(5))
        torch.testing.assert_close(processor(attn, x, other_text), out, atol=0, rtol=0)
        # Weight 0: the base cross-attention, which does read the text; 0.5: halfway.
        stock = AttnProcessor2_0()(attn, x, text)
        activate(processor, [("a", 0.0)])
        torch.testing.assert_close(processor(attn, x, text), stock, atol=1e-6, rtol=0)
        activate(processor, [("a", 0.5)])
        torch.testing.assert_close(processor(attn, x, text), 0.5 * stock + 0.5 * expected, atol=1e-5, rtol=1e-5)


def test_fresh_implicit_prompt_outputs_zero():
    """`up` starts at zero: a new implicit prompt replaces cross-attention by exactly nothing."""
    attn = _attn()
    config = MIVAAdapterConfig(ca_mode="implicit", **CA_ONLY)
    processor = _processor(attn)
    add_standalone_adapter(processor, attn, config)
    out = processor(attn, torch.randn(2, 6, QUERY_DIM), torch.randn(2, TEXT_TOKENS, TEXT_DIM))
    assert torch.count_nonzero(out) == 0


# ------------------------------------------------------------------------------------------------ full UNet


@pytest.fixture(scope="module")
def unet():
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    return unet


def _run(unet, frames, size, videos=1, seed=0):
    sample = torch.randn(videos, 4, frames, *size, generator=_gen(seed))
    text = torch.randn(videos, 77, 32, generator=_gen(seed + 1)).repeat_interleave(frames, dim=0)
    with torch.no_grad():
        return unet(sample, torch.tensor([400] * videos), encoder_hidden_states=text).sample


def _copy_adapter(unet, source, target):
    targets = get_miva_adapter_modules(unet, target)
    for layer, module in get_miva_adapter_modules(unet, source).items():
        targets[layer].load_state_dict(module.state_dict())


def _randomise_adapter(unet, name, seed=0, std=0.2):
    generator = _gen(seed)
    with torch.no_grad():
        for module in get_miva_adapter_modules(unet, name).values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def test_unet_stq_r1_equals_ordinary_cross_attention(unet):
    common = dict(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, **CA_ONLY)
    add_miva_adapter(unet, "r1_plain", MIVAAdapterConfig(**common))
    add_miva_adapter(unet, "r1_stq", MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=1, **common))
    try:
        set_miva_adapters(unet, [])
        base = _run(unet, 8, (8, 10), videos=2)
        set_miva_adapters(unet, ["r1_stq"])  # fresh: zero deltas
        torch.testing.assert_close(_run(unet, 8, (8, 10), videos=2), base, atol=1e-6, rtol=0)
        _randomise_adapter(unet, "r1_plain")
        _copy_adapter(unet, "r1_plain", "r1_stq")
        set_miva_adapters(unet, ["r1_plain"])
        plain = _run(unet, 8, (8, 10), videos=2)
        set_miva_adapters(unet, ["r1_stq"])
        torch.testing.assert_close(_run(unet, 8, (8, 10), videos=2), plain, atol=1e-6, rtol=0)
        assert (plain - base).abs().max() > 1e-3
    finally:
        set_miva_adapters(unet, [])


@pytest.mark.parametrize(
    "size, ratio, frames", [((8, 8), 2, 16), ((6, 10), 4, 1), ((5, 9), 4, 8), ((5, 9), 2, 16), ((6, 10), 2, 8)]
)
def test_unet_stq_any_aspect_ratio_and_frame_count(unet, size, ratio, frames):
    name = f"stq_r{ratio}"
    if name not in unet.miva_context.configs:
        add_miva_adapter(
            unet,
            name,
            MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=ratio, use_ca_lora=True, ca_lora_rank=4, **CA_ONLY),
        )
        _randomise_adapter(unet, name)
    set_miva_adapters(unet, [name])
    try:
        out = _run(unet, frames, size)
    finally:
        set_miva_adapters(unet, [])
    assert out.shape == (1, 4, frames, *size)
    assert torch.isfinite(out).all()
    assert (out - _run(unet, frames, size)).abs().max() > 1e-4


@pytest.mark.parametrize("pe_style", PE_STYLES)
def test_unet_every_pe_mode_runs_with_stq(unet, pe_style):
    frames, size = 3, (6, 10)
    outputs = {}
    for mode in (None, *CA_PE_MODES):
        name = f"pe_{mode}_{pe_style}"
        add_miva_adapter(
            unet,
            name,
            MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=2, ca_pe_mode=mode, pe_style=pe_style, **CA_ONLY),
        )
        set_miva_adapters(unet, [name])
        try:
            outputs[mode] = _run(unet, frames, size)
        finally:
            set_miva_adapters(unet, [])
        assert outputs[mode].shape == (1, 4, frames, *size)
        assert torch.isfinite(outputs[mode]).all(), mode
    assert len(outputs) == 9
    for mode in CA_PE_MODES:  # every encoding changes what the (fresh) STQ adapter computes
        assert (outputs[mode] - outputs[None]).abs().max() > 1e-5, mode

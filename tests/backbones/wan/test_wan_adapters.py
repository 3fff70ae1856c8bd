"""MIVA adapters on the Wan2.1 DiT: zero-init identity with stock diffusers, the cross-frame branch and the implicit
prompt against references written out here (explicit per-frame softmax loops), batch independence, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from wan_helpers import randomize, wan_inputs, wan_transformer

from miva.attention_processors import MIVAAdapterConfig, get_miva_adapter_modules, miva_call, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter, install_miva_wan

SCALES = [0.3, "linear", "adaptive_0.2"]
CASES = [("first", 0.5), ("prev", 0.5)] + [("first_prev", s) for s in SCALES]


# ------------------------------------------------------------------------------------------- written-out references


def rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def softmax_attend(q, keys, values):
    """One query row q (d,) against keys (m, d) / values (m, d): an explicit softmax."""
    scores = torch.stack([torch.dot(q, key) for key in keys]) / math.sqrt(q.shape[0])
    weights = torch.exp(scores - scores.max())
    weights = weights / weights.sum()
    return sum(w * v for w, v in zip(weights, values))


def reference_branch(adapter, x, frames, mode, s=None):
    """The cross-frame branch of one adapter for x (batch, frames*n, dim), frame by frame, head by head."""
    heads = adapter.heads
    batch, length, dim = x.shape
    n, d = length // frames, dim // heads
    q = rms(x @ adapter.q.weight.T + adapter.q.bias, adapter.norm_q.weight, adapter.norm_q.eps)
    k = rms(x @ adapter.k.weight.T + adapter.k.bias, adapter.norm_k.weight, adapter.norm_k.eps)
    v = x @ adapter.v.weight.T + adapter.v.bias
    out = torch.zeros(batch, length, dim)
    for b in range(batch):
        sb = s[b] if torch.is_tensor(s) else s
        for f in range(frames):
            prev = max(f - 1, 0)
            for h in range(heads):
                c = slice(h * d, (h + 1) * d)
                k0, v0 = k[b, :n, c], v[b, :n, c]
                kp, vp = k[b, prev * n:(prev + 1) * n, c], v[b, prev * n:(prev + 1) * n, c]
                if mode == "first":
                    keys, values = k0, v0
                elif mode == "prev":
                    keys, values = kp, vp
                else:
                    keys, values = torch.cat([k0, kp]), torch.cat([sb * v0, (1 - sb) * vp])
                for i in range(n):
                    out[b, f * n + i, c] = softmax_attend(q[b, f * n + i, c], keys, values)
    return out @ adapter.o.weight.T + adapter.o.bias


def reference_block(block, branch, x, text, temb6, rotary):
    """Wan's block written out with the branch inserted after the gated self-attention (stock sub-modules)."""
    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + temb6.float()).chunk(6, dim=1)
    h = block.attn1(block.norm1(x) * (1 + scale) + shift, None, None, rotary)
    x = x + h * gate
    x = x + branch(x)
    x = x + block.attn2(block.norm2(x), text, None, None)
    return x + block.ffn(block.norm3(x) * (1 + c_scale) + c_shift) * c_gate


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode,scale", CASES)
def test_zero_initialised_adapter_equals_stock_transformer_bit_for_bit(mode, scale):
    latents, t, text = wan_inputs(batch=2)
    stock = wan_transformer()
    expected = stock(latents, t, text).sample
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode=mode, sa_first_frame_scale=scale))
    set_miva_adapters(model, "a")
    assert torch.equal(model(latents, t, text).sample, expected)


def test_self_attention_processor_equals_stock_wan_attn_processor():
    model = wan_transformer()
    install_miva_wan(model)
    attn = model.blocks[0].attn1
    x = torch.randn(2, 12, 24)
    rotary = model.rope(torch.randn(2, 16, 3, 4, 4))  # 3 frames of 2x2 tokens
    ours = attn(x, None, None, rotary)
    assert torch.equal(ours, WanAttnProcessor()(attn, x, None, None, rotary))


@pytest.mark.parametrize("mode,scale", CASES)
def test_branch_matches_per_frame_reference(mode, scale):
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode=mode, sa_first_frame_scale=scale))
    adapter = get_miva_adapter_modules(model, "a")["blocks.0.attn1.processor"]
    randomize(adapter, seed=3)
    x = torch.randn(2, 3 * 4, 24, generator=torch.Generator().manual_seed(5))
    t, temb = torch.tensor([700.0, 250.0]), torch.randn(2, 24)
    with torch.no_grad():
        ours = adapter.branch(x, 3, timestep=t, temb=temb)
        s = {0.3: 0.3, "linear": t / 1000}.get(scale)
        if scale == "adaptive_0.2":
            logits = F.silu(temb) @ adapter.weight_module.linear.weight.T + adapter.weight_module.linear.bias
            s = torch.exp(logits[:, 0] / 0.2) / torch.exp(logits / 0.2).sum(-1)
        expected = reference_branch(adapter, x, 3, mode, s)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,scale", [("first_prev", "adaptive_0.2"), ("prev", 0.5)])
def test_block_inserts_branch_after_gated_self_attention_ungated(mode, scale):
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode=mode, sa_first_frame_scale=scale))
    set_miva_adapters(model, "a", weights=[0.7])
    adapter = get_miva_adapter_modules(model, "a")["blocks.1.attn1.processor"]
    randomize(adapter, seed=4)
    latents, t, text = wan_inputs(batch=2)
    captured = {}
    block = model.blocks[1]
    handle = block.register_forward_hook(lambda m, args, out: captured.update(args=args, out=out))
    with torch.no_grad():
        model(latents, t, text)
        handle.remove()
        x, text_h, temb6, rotary = captured["args"]
        temb = model.condition_embedder(t, text)[0]
        expected = reference_block(block, lambda h: 0.7 * adapter.branch(h, 3, timestep=t, temb=temb), x, text_h, temb6,
                                   rotary)
    torch.testing.assert_close(captured["out"], expected, rtol=1e-5, atol=1e-5)
    assert (captured["out"] - block.__class__.__mro__[1].forward(block, x, text_h, temb6, rotary)).abs().max() > 1e-3


@pytest.mark.parametrize("mode,scale", [("first_prev", "adaptive_0.2"), ("first_prev", "linear"), ("first", 0.5)])
def test_batch_of_two_equals_two_single_runs(mode, scale):
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode=mode, sa_first_frame_scale=scale, ca_mode="implicit"))
    set_miva_adapters(model, "a")
    for module in get_miva_adapter_modules(model, "a").values():
        randomize(module, seed=6)
    latents, t, text = wan_inputs(batch=2)
    with torch.no_grad():
        both = model(latents, t, text).sample
        singles = [model(latents[i:i + 1], t[i:i + 1], text[i:i + 1]).sample for i in range(2)]
    torch.testing.assert_close(both, torch.cat(singles), rtol=1e-5, atol=1e-6)
    assert (both[0] - both[1]).abs().max() > 1e-3


def test_implicit_prompt_replaces_text_cross_attention():
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(use_i2v=False, ca_mode="implicit", implicit_rank=8))
    attn = model.blocks[0].attn2
    prompt = get_miva_adapter_modules(model, "a")["blocks.0.attn2.processor"]
    assert list(get_miva_adapter_modules(model, "a")) == ["blocks.0.attn2.processor", "blocks.1.attn2.processor"]
    x, text = torch.randn(2, 12, 24), torch.randn(2, 7, 24)
    with torch.no_grad():
        stock = WanAttnProcessor()(attn, x, text)
        set_miva_adapters(model, "a")
        assert torch.equal(attn(x, text), torch.zeros_like(stock))  # CA3 starts at zero: the text is gone
        randomize(prompt, seed=7)
        q_n = rms(x @ attn.to_q.weight.T + attn.to_q.bias, attn.norm_q.weight, attn.norm_q.eps)
        h = q_n @ prompt.CA2.weight.T + prompt.CA2.bias
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        h = h * prompt.CA_norm.weight + prompt.CA_norm.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        f = h @ prompt.CA3.weight.T + prompt.CA3.bias
        torch.testing.assert_close(attn(x, text), f, rtol=1e-5, atol=1e-6)
        assert torch.equal(attn(x, torch.randn(2, 7, 24)), attn(x, text))  # the text is not read
        set_miva_adapters(model, "a", weights=[0.25])  # "residual": 0.25 f + 0.75 text
        torch.testing.assert_close(attn(x, text), 0.25 * f + 0.75 * stock, rtol=1e-5, atol=1e-6)
        set_miva_adapters(model, "a", weights=[0.25], parallel_mode="weights")  # 0.75 text + 0.25 f, as well
        torch.testing.assert_close(attn(x, text), 0.75 * stock + 0.25 * f, rtol=1e-5, atol=1e-6)


def test_weight_zero_and_disabled_adapters_are_stock():
    latents, t, text = wan_inputs(batch=1)
    model = wan_transformer()
    with torch.no_grad():
        expected = model(latents, t, text).sample
        add_wan_adapter(model, "a", WanAdapterConfig(sa_mode="prev"))
        randomize(get_miva_adapter_modules(model, "a")["blocks.0.attn1.processor"], seed=8)
        set_miva_adapters(model, "a")
        assert (model(latents, t, text).sample - expected).abs().max() > 1e-3
        with miva_call(model, adapter_weights=[0.0]):
            assert torch.equal(model(latents, t, text).sample, expected)


def test_errors_name_the_field_and_both_architectures():
    model = wan_transformer()
    with pytest.raises(ValueError, match=r"made for the AnimateDiff UNet \(SD1.5, UNetMotionModel\) \(backbone 'animatediff-unet'\), "
                       r"but this pipeline's base is the Wan2.1 DiT \(WanTransformer3DModel\) \(backbone 'wan2.1-dit'\); "
                       r"load it with MIVAPipeline"):
        add_wan_adapter(model, "u", MIVAAdapterConfig())
    with pytest.raises(ValueError, match=r"q_downsample=True is not supported on Wan \(spatiotemporal Q"):
        WanAdapterConfig(q_downsample=True)
    with pytest.raises(ValueError, match=r"implicit_act='gelux' is not one of"):
        WanAdapterConfig(implicit_act="gelux")
    add_wan_adapter(model, "a", WanAdapterConfig(research_exact_first=True))
    set_miva_adapters(model, "a")
    latents, t, text = wan_inputs(batch=1, frames=3, size=4)  # 4 tokens per frame, 3 frames
    with pytest.raises(ValueError, match=r"needs tokens per frame \(4\) divisible by the latent frame count \(3\)"):
        model(latents, t, text)

"""LoRA parts on Wan: MotionLoRA on the 3-D self-attention and CA-LoRA K/V/O(+Q) on the text cross-attention,
against stock `WanAttnProcessor` runs on copies of the attention with the deltas merged into the weights."""

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from wan_helpers import randomize, wan_inputs, wan_transformer

from miva.attention_processors import get_miva_adapter_modules, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter
from miva.backbones.wan.tiny import tiny_wan_transformer

MOTION = dict(use_i2v=False, use_motion_lora=True, motion_lora_rank=4, motion_lora_scale=2.0)
CA = dict(use_i2v=False, use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, ca_lora_scale=None)


def merged(attn, adapters_and_weights):
    """A copy of `attn` (a WanAttention) with each adapter's `w * up @ down * alpha / rank` added to the weights."""
    out = copy.deepcopy(attn)
    out.set_processor(WanAttnProcessor())
    with torch.no_grad():
        for adapter, w in adapters_and_weights:
            for name, linear in (("to_q", out.to_q), ("to_k", out.to_k), ("to_v", out.to_v), ("to_out", out.to_out[0])):
                delta = getattr(adapter, f"{name}_lora", None)
                if delta is not None:
                    scale = 1.0 if delta.alpha is None else delta.alpha / delta.rank
                    linear.weight += w * scale * delta.up.weight @ delta.down.weight
    return out


def test_zero_initialised_lora_parts_equal_stock_bit_for_bit():
    latents, t, text = wan_inputs(batch=2)
    expected = wan_transformer()(latents, t, text).sample
    model = wan_transformer()
    add_wan_adapter(model, "m", WanAdapterConfig(**MOTION))
    add_wan_adapter(model, "c", WanAdapterConfig(**CA))
    set_miva_adapters(model, ["m", "c"])
    assert torch.equal(model(latents, t, text).sample, expected)
    with torch.no_grad():
        assert torch.equal(model(latents, t, text).sample, expected)


@pytest.mark.parametrize("layer,kwargs", [("attn1", MOTION), ("attn2", CA)])
def test_lora_equals_merged_weights_under_stock_processor(layer, kwargs):
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(**kwargs))
    set_miva_adapters(model, "a")
    adapter = get_miva_adapter_modules(model, "a")[f"blocks.0.{layer}.processor"]
    assert sorted(adapter.state_dict()) == sorted(f"{p}_lora.{m}.weight" for p in ("to_q", "to_k", "to_v", "to_out")
                                                  for m in ("down", "up"))
    assert adapter.to_k_lora.down.weight.shape == (4, 24)
    randomize(adapter, seed=1)
    attn = getattr(model.blocks[0], layer)
    x, text = torch.randn(2, 12, 24), torch.randn(2, 7, 24)
    rotary = model.rope(torch.randn(2, 16, 3, 4, 4)) if layer == "attn1" else None
    context = None if layer == "attn1" else text
    reference = merged(attn, [(adapter, 1.0)])(x, context, None, rotary)
    with torch.no_grad():
        inference = attn(x, context, None, rotary)
    training = attn(x, context, None, rotary)  # autograd on: the low-rank path
    assert (reference - attn.processor.stock(attn, x, context, None, rotary)).abs().max() > 1e-3
    torch.testing.assert_close(inference, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(training, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,kwargs", [("attn1", MOTION), ("attn2", CA)])
def test_two_lora_adapters_compose_as_residual_or_weights(layer, kwargs):
    model = wan_transformer()
    for name, seed in (("a", 2), ("b", 3)):
        add_wan_adapter(model, name, WanAdapterConfig(**kwargs))
        randomize(get_miva_adapter_modules(model, name)[f"blocks.1.{layer}.processor"], seed=seed)
    a, b = (get_miva_adapter_modules(model, n)[f"blocks.1.{layer}.processor"] for n in "ab")
    attn = getattr(model.blocks[1], layer)
    x, text = torch.randn(1, 12, 24), torch.randn(1, 7, 24)
    rotary = model.rope(torch.randn(1, 16, 3, 4, 4)) if layer == "attn1" else None
    context = None if layer == "attn1" else text
    with torch.no_grad():
        y_a, y_b, y_0 = (merged(attn, pairs)(x, context, None, rotary) for pairs in ([(a, 1.0)], [(b, 1.0)], []))
        set_miva_adapters(model, ["a", "b"], weights=[0.6, 0.3])  # "residual"
        torch.testing.assert_close(attn(x, context, None, rotary), 0.6 * y_a + 0.3 * y_b + 0.1 * y_0,
                                   rtol=1e-5, atol=1e-6)
        set_miva_adapters(model, ["a", "b"], weights=[0.6, 0.3], parallel_mode="weights")
        torch.testing.assert_close(attn(x, context, None, rotary),
                                   merged(attn, [(a, 0.6), (b, 0.3)])(x, context, None, rotary), rtol=1e-5, atol=1e-6)


def test_ca_lora_and_implicit_prompt_refused_together():
    with pytest.raises(ValueError, match=r"use_ca_lora=True with ca_mode='implicit'"):
        WanAdapterConfig(use_ca_lora=True, ca_mode="implicit")


def test_fuse_and_unfuse_lora_parts_through_the_pipeline():
    from miva.backbones.wan.tiny import tiny_wan_components
    from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
    from miva.tiny import make_test_image

    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("m", WanAdapterConfig(sa_mode="prev", **{**MOTION, "use_i2v": True}), activate=False)
    pipe.add_adapter("c", WanAdapterConfig(**CA), activate=False)
    for name in "mc":
        for module in get_miva_adapter_modules(pipe.transformer, name).values():
            randomize(module, seed=5)
    pipe.set_adapters(["m", "c"], weights=[0.8, 0.5], parallel_mode="weights")
    call = dict(image=make_test_image(16, 16), num_frames=9, height=16, width=16, num_inference_steps=2,
                max_sequence_length=16, output_type="latent")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    unfused = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert pipe.fuse_adapters() == [("m", 0.8), ("c", 0.5)]
    assert not torch.equal(pipe.transformer.blocks[0].attn1.to_q.weight, before["blocks.0.attn1.to_q.weight"])
    fused = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"set_adapters: adapters .* are fused"):
        pipe.set_adapters(["m"])
    pipe.unfuse_adapters()
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in before.items())


def test_i2v_cross_attention_keeps_the_image_tokens_in_every_branch():
    """An I2V checkpoint's `attn2` (`added_kv_proj_dim`): the image tokens (before the 512 text tokens) are read by
    every branch's queries, unadapted; two CA-LoRA adapters, one batched residual attention and the weights one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tiny_wan_transformer(image_dim=24, added_kv_proj_dim=24).eval()
    for name, seed in (("a", 4), ("b", 5)):
        add_wan_adapter(model, name, WanAdapterConfig(**CA))
        randomize(get_miva_adapter_modules(model, name)["blocks.0.attn2.processor"], seed=seed)
    a, b = (get_miva_adapter_modules(model, n)["blocks.0.attn2.processor"] for n in "ab")
    attn = model.blocks[0].attn2
    assert attn.add_k_proj is not None
    x, context = torch.randn(2, 12, 24), torch.randn(2, 5 + 512, 24)  # 5 image tokens, then the text
    with torch.no_grad():
        y_a, y_b, y_0 = (merged(attn, pairs)(x, context) for pairs in ([(a, 1.0)], [(b, 1.0)], []))
        text_only = merged(attn, [])
        text_only.add_k_proj = text_only.add_v_proj = None
        assert (y_0 - text_only(x, context[:, 5:])).abs().max() > 1e-3  # the image tokens matter
        set_miva_adapters(model, ["a", "b"], weights=[0.6, 0.3])
        torch.testing.assert_close(attn(x, context), 0.6 * y_a + 0.3 * y_b + 0.1 * y_0, rtol=1e-5, atol=1e-6)
        set_miva_adapters(model, ["a", "b"], weights=[0.6, 0.3], parallel_mode="weights")
        torch.testing.assert_close(attn(x, context), merged(attn, [(a, 0.6), (b, 0.3)])(x, context),
                                   rtol=1e-5, atol=1e-6)


def test_attention_backend_reaches_the_composed_lora_attention(monkeypatch):
    import diffusers.models.attention_dispatch as dispatch

    from miva.backbones.wan import site

    model = wan_transformer()
    add_wan_adapter(model, "m", WanAdapterConfig(**MOTION))
    set_miva_adapters(model, "m")
    model.set_attention_backend("native")
    seen = []
    original = dispatch.dispatch_attention_fn
    monkeypatch.setattr(site, "dispatch_attention_fn",
                        lambda *a, backend=None, **kw: seen.append(backend) or original(*a, backend=backend, **kw))
    attn = model.blocks[0].attn1
    attn(torch.randn(1, 12, 24), None, None, model.rope(torch.randn(1, 16, 3, 4, 4)))
    assert [b.value for b in seen] == ["native"]


def test_implicit_prompt_and_ca_lora_adapters_compose_on_one_layer():
    """One implicit-prompt adapter beside one CA-LoRA adapter: `"residual"` mixes the implicit output, the LoRA'd
    attention and the text attention; `"weights"` lets the implicit prompt take its share of the LoRA'd attention."""
    model = wan_transformer()
    add_wan_adapter(model, "i", WanAdapterConfig(use_i2v=False, ca_mode="implicit", implicit_rank=8))
    add_wan_adapter(model, "c", WanAdapterConfig(**CA))
    implicit, lora = (get_miva_adapter_modules(model, n)["blocks.1.attn2.processor"] for n in "ic")
    randomize(implicit, seed=6)
    randomize(lora, seed=7)
    attn = model.blocks[1].attn2
    x, text = torch.randn(2, 12, 24), torch.randn(2, 7, 24)
    with torch.no_grad():
        h = implicit.CA2(attn.norm_q(attn.to_q(x)))
        f = implicit.CA3(implicit.act(h if implicit.CA_norm is None else implicit.CA_norm(h)))
        y_c, y_0 = merged(attn, [(lora, 1.0)])(x, text), merged(attn, [])(x, text)
        assert (f - y_0).abs().max() > 1e-2 and (y_c - y_0).abs().max() > 1e-3
        set_miva_adapters(model, ["i", "c"], weights=[0.6, 0.3])
        torch.testing.assert_close(attn(x, text), 0.6 * f + 0.3 * y_c + 0.1 * y_0, rtol=1e-5, atol=1e-6)
        set_miva_adapters(model, ["i", "c"], weights=[0.6, 0.3], parallel_mode="weights")
        y_w = merged(attn, [(lora, 0.3)])(x, text)
        torch.testing.assert_close(attn(x, text), 0.4 * y_w + 0.6 * f, rtol=1e-5, atol=1e-6)

"""Per-adapter prompts on Wan (`MIVAWanPipeline(batch_prompt=...)`): each CA-LoRA adapter's branch reads its own
prompt chunk, the frozen base the main prompt."""

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from wan_helpers import randomize

from miva.attention_processors import get_miva_adapter_modules, miva_call
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.tiny import tiny_wan_components
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
from miva.tiny import make_test_image

CA = dict(use_i2v=False, use_ca_lora=True, use_q_lora=False, ca_lora_rank=4, ca_lora_scale=None)
IMPLICIT = dict(use_i2v=False, ca_mode="implicit")
CALL = dict(num_frames=5, height=16, width=16, num_inference_steps=2, max_sequence_length=16, output_type="latent")


def stock_merged(attn, adapter):
    """A copy of `attn` under the stock processor with `adapter`'s CA-LoRA deltas added to its weights (by hand)."""
    out = copy.deepcopy(attn)
    out.set_processor(WanAttnProcessor())
    with torch.no_grad():
        if adapter is not None:
            for name, linear in (("to_k", out.to_k), ("to_v", out.to_v), ("to_out", out.to_out[0])):
                delta = getattr(adapter, f"{name}_lora")
                scale = 1.0 if delta.alpha is None else delta.alpha / delta.rank
                linear.weight += scale * delta.up.weight @ delta.down.weight
    return out


def pipe_with(configs, seed=0):
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    for i, (name, kwargs) in enumerate(configs):
        pipe.add_adapter(name, WanAdapterConfig(**kwargs), activate=False)
        for module in get_miva_adapter_modules(pipe.transformer, name).values():
            randomize(module, seed=seed + i)
    pipe.set_adapters([name for name, _ in configs], weights=[0.6, 0.3])
    return pipe


def test_each_ca_lora_branch_reads_its_own_prompt_at_one_layer():
    model = pipe_with([("a", CA), ("b", CA)]).transformer
    attn = model.blocks[1].attn2
    a, b = (get_miva_adapter_modules(model, n)["blocks.1.attn2.processor"] for n in "ab")
    g = torch.Generator().manual_seed(3)
    x, main, text_a, text_b = (torch.randn(2, n, 24, generator=g) for n in (12, 7, 7, 7))
    with torch.no_grad():
        expected = (0.6 * stock_merged(attn, a)(x, text_a) + 0.3 * stock_merged(attn, b)(x, text_b)
                    + 0.1 * stock_merged(attn, None)(x, main))
        with miva_call(model, adapter_prompts=True):
            got = attn(x, torch.cat([main, text_a, text_b], dim=1))
        shared = attn(x, main)
    assert (got - shared).abs().max() > 1e-3  # the prompts matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_batch_prompt_reads_each_prompt_through_the_pipeline():
    pipe = pipe_with([("a", CA), ("i", IMPLICIT)])
    image = make_test_image(16, 16)

    def run(prompt="a cat", **kw):
        return pipe(image=image, prompt=prompt, generator=torch.Generator().manual_seed(0), **CALL, **kw)

    plain = run().frames
    same = run(batch_prompt=["a cat", None]).frames
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    other = run(batch_prompt=["a dog running", "ignored by the implicit prompt"]).frames
    assert (other - plain).abs().max() > 1e-4
    # The main prompt "a dog running" changes the video too, but not in the same way: the adapter's prompt moved.
    assert (run(prompt="a dog running").frames - other).abs().max() > 1e-4
    cfg = run(batch_prompt=["a cat", None], guidance_scale=3.0, negative_prompt="blur").frames
    torch.testing.assert_close(cfg, run(guidance_scale=3.0, negative_prompt="blur").frames, rtol=0, atol=1e-6)


def test_batch_prompt_refused_with_the_wrong_length_and_while_fused():
    pipe = pipe_with([("a", CA), ("b", CA)])
    image = make_test_image(16, 16)
    with pytest.raises(ValueError) as error:
        pipe(image=image, batch_prompt=["x"], **CALL)
    assert str(error.value) == ("batch_prompt=['x'] must be a list with one entry per active adapter, in order "
                                "['a', 'b'] (2 entries)")
    with pytest.raises(ValueError, match=r"^batch_prompt=\['x', 3\] entries must be strings or None$"):
        pipe(image=image, batch_prompt=["x", 3], **CALL)
    pipe.set_adapters(["a", "b"], weights=[0.6, 0.3], parallel_mode="weights")
    pipe.fuse_adapters()
    with pytest.raises(ValueError, match=r"^batch_prompt \(one prompt per adapter\) cannot be used while adapters "
                                         r"\['a', 'b'\] are fused"):
        pipe(image=image, batch_prompt=["x", None], **CALL)

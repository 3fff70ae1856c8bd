"""diffusers features on a Wan transformer with MIVA adapters active: each gives the adapters' output (within its
own precision) and not the stock one."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from wan_helpers import randomize, wan_inputs, wan_transformer

from miva.attention_processors import get_miva_adapter_modules, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter


def adapted():
    torch.manual_seed(0)
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2",
                                                 ca_mode="implicit", implicit_rank=8))
    for module in get_miva_adapter_modules(model, "a").values():
        randomize(module, seed=1)
    set_miva_adapters(model, "a")
    return model


def run(model, cache: bool = False):
    latents, t, text = wan_inputs(batch=1)
    with torch.no_grad():
        if cache:
            with model.cache_context("cond"):
                return model(latents, t, text).sample
        return model(latents, t, text).sample


FEATURES = {
    "layerwise_casting": (lambda m: m.enable_layerwise_casting(storage_dtype=torch.bfloat16,
                                                               compute_dtype=torch.float32), 2e-2),
    "group_offload": (lambda m: m.enable_group_offload(torch.device("cpu"), offload_type="block_level",
                                                       num_blocks_per_group=1), 0.0),
    "attention_backend": (lambda m: m.set_attention_backend("native"), 0.0),
    "first_block_cache": (lambda m: m.enable_cache(FirstBlockCacheConfig(threshold=0.0)), 0.0),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_feature_keeps_the_adapters(feature):
    expected = run(adapted())
    stock = run(wan_transformer())
    model = adapted()
    setup, tolerance = FEATURES[feature]
    setup(model)
    out = run(model, cache=feature == "first_block_cache")
    assert (out - expected).abs().max() <= tolerance
    assert (out - stock).abs().max() > 1.0


@pytest.mark.slow  # ~40 s of compilation on a 2-core CPU: opt in with -m slow
def test_torch_compile_keeps_the_adapters():
    expected = run(adapted())
    compiled = torch.compile(adapted())
    torch.testing.assert_close(run(compiled), expected, rtol=1e-5, atol=1e-5)


def test_attention_backend_reaches_the_stock_processor_and_the_branch(monkeypatch):
    import diffusers.models.attention_dispatch as dispatch

    from miva.backbones.wan import modules

    model = adapted()
    model.set_attention_backend("native")
    assert model.blocks[0].attn1.processor.stock._attention_backend.value == "native"
    seen = []
    original = dispatch.dispatch_attention_fn
    monkeypatch.setattr(modules, "dispatch_attention_fn",
                        lambda *a, backend=None, **kw: seen.append(backend) or original(*a, backend=backend, **kw))
    run(model)
    assert len(seen) == 2 and all(b.value == "native" for b in seen)  # one branch call per block


def test_pipeline_call_puts_replaced_processors_back():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from miva.backbones.wan.tiny import tiny_wan_components
    from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
    from miva.tiny import make_test_image

    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("a", WanAdapterConfig(sa_mode="prev", ca_mode="implicit", implicit_rank=8))
    for module in get_miva_adapter_modules(pipe.transformer, "a").values():
        randomize(module, seed=1)
    call = dict(image=make_test_image(16, 16), num_frames=9, height=16, width=16, num_inference_steps=2,
                max_sequence_length=16, output_type="latent")
    expected = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    pipe.transformer.set_attn_processor(WanAttnProcessor())
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(0), **call).frames, expected)


def test_context_parallelism_refused_clearly_with_a_branch():
    model = adapted()
    for block in model.blocks:  # what transformer.enable_parallelism(config) does to every attention processor
        for attn in (block.attn1, block.attn2):
            assert hasattr(attn.processor, "_parallel_config")
            attn.processor._parallel_config = object()
    assert model.blocks[0].attn1.processor.stock._parallel_config is not None
    with pytest.raises(ValueError, match=r"blocks.0.attn1.processor: context parallelism shards the tokens"):
        run(model)

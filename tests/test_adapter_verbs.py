"""Item 10 of issue 11: the pipeline's adapter verbs take MIVA and diffusers LoRA names together, keep diffusers'
`{component: [...]}` shape for `get_list_adapters`, and errors name the pipe verbs."""

import pytest
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import tiny_components


def _listed(pipe):
    """`get_list_adapters()` without components that list nothing (diffusers keeps `{"unet": []}` after deletes)."""
    return {component: names for component, names in pipe.get_list_adapters().items() if names}


def _lora_scalings(unet, name):
    return {m.scaling[name] for m in unet.modules() if isinstance(m, BaseTunerLayer) and name in m.scaling}


def test_mixed_miva_and_lora_names():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4))
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False),
                          adapter_name="style")
    assert _listed(pipe) == {"unet": ["style"], "miva": ["flow"]}

    pipe.set_adapters(["style", "flow"], [0.8, 0.5])
    assert pipe.unet.miva_context.active == [("flow", 0.5)]
    assert _lora_scalings(pipe.unet, "style") == {0.8}
    assert pipe.get_active_adapters() == ["flow", "style"]

    with pytest.raises(ValueError, match=r"pipe.set_adapters: unknown adapter 'nope'; MIVA adapters: \['flow'\], "
                                         r"diffusers LoRA adapters: \['style'\]"):
        pipe.set_adapters(["flow", "nope"])
    pipe.set_adapters([])  # no MIVA adapter active; LoRA untouched
    assert pipe.get_active_adapters() == ["style"]

    pipe.delete_adapters(["style", "flow"])
    assert _listed(pipe) == {}


def test_fused_errors_name_the_pipe_verb():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4))
    pipe.fuse_adapters()
    for call in (pipe.fuse_adapters, lambda: pipe.set_adapters(["flow"]), lambda: pipe.delete_adapters("flow")):
        with pytest.raises(ValueError) as error:
            call()
        assert "pipe.unfuse_adapters()" in str(error.value) and "unfuse_miva_adapters" not in str(error.value)


def test_fuse_adapters_lora_scale_like_fuse_lora():
    import torch

    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in pipe.unet.miva_context.processors.values():
            for p in module.adapters["flow"].parameters() if "flow" in module.adapters else []:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sample = torch.randn(1, 4, 8, 8, 8, generator=g)
    text = torch.randn(1, 77, 32, generator=g).repeat_interleave(8, dim=0)

    def run():
        with torch.no_grad():
            return pipe.unet(sample, 300, text).sample

    pipe.set_adapters(["flow"], [0.5], parallel_mode="weights")  # fusing implements "weights" (w-scaled deltas)
    half = run()
    pipe.set_adapters(["flow"], [1.0])
    full = run()
    assert pipe.fuse_adapters(lora_scale=0.5) == [("flow", 0.5)]
    torch.testing.assert_close(run(), half, atol=1e-5, rtol=0)
    pipe.unfuse_adapters()
    assert pipe.unet.miva_context.active == [("flow", 1.0)]
    torch.testing.assert_close(run(), full, atol=0, rtol=0)


def test_the_loader_mixin_owns_every_adapter_verb():
    """Issue 28 item 5: `MIVALoaderMixin` is first in the pipeline's MRO, so each shared verb name resolves to it
    (and from there to diffusers' LoRA verb through `super()`), not to a class in between."""
    from diffusers import AnimateDiffPipeline

    from miva.loaders import MIVALoaderMixin

    assert MIVAPipeline.__mro__[1] is MIVALoaderMixin and len(MIVAPipeline.__bases__) == 2
    for verb in ("set_adapters", "get_active_adapters", "get_list_adapters", "delete_adapters", "save_pretrained",
                 "register_to_config"):
        owner = next(cls for cls in MIVAPipeline.__mro__ if verb in vars(cls))
        assert owner is MIVALoaderMixin, (verb, owner)
    assert issubclass(MIVAPipeline, AnimateDiffPipeline)

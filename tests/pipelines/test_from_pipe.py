"""`MIVAPipeline.from_pipe` from an `AnimateDiffPipeline` and from a `StableDiffusionPipeline` + `motion_adapter=`,
and what sharing the UNet means for the original pipeline (as the class docstring states)."""

import copy

import torch
from diffusers import AnimateDiffPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

T2V = dict(prompt="a waterfall", num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
           output_type="latent")


def _video(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), **T2V).frames


def _i2v(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(make_test_image(64, 64), generator=torch.Generator().manual_seed(0), **T2V).frames


def _trained_adapter(pipe):
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in pipe.unet.miva_context.processors.values():
            for p in module.adapters["flow"].parameters() if "flow" in module.adapters else []:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_from_animatediff_pipeline_shares_the_unet():
    original = AnimateDiffPipeline(**tiny_components(seed=0))
    before = _video(original)
    pipe = MIVAPipeline.from_pipe(original)
    assert type(pipe) is MIVAPipeline and pipe.unet is original.unet and pipe.vae is original.vae
    torch.testing.assert_close(_video(original), before, rtol=0, atol=1e-6)  # no adapter active: same output
    _trained_adapter(pipe)
    assert not torch.allclose(_video(original), before, atol=1e-4)  # shared UNet: documented, not hidden


def test_from_animatediff_pipeline_with_a_copied_unet_leaves_the_original_alone():
    original = AnimateDiffPipeline(**tiny_components(seed=0))
    before = _video(original)
    pipe = MIVAPipeline.from_pipe(original, unet=copy.deepcopy(original.unet))
    _trained_adapter(pipe)
    assert all(isinstance(p, AttnProcessor2_0) for p in original.unet.attn_processors.values())
    torch.testing.assert_close(_video(original), before, rtol=0, atol=0)


def test_from_stable_diffusion_pipeline_with_a_motion_adapter():
    parts = tiny_components(seed=0)
    motion_adapter = parts.pop("motion_adapter")
    sd = StableDiffusionPipeline(**{k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler",
                                                          "feature_extractor", "image_encoder")},
                                 safety_checker=None, requires_safety_checker=False)
    sd_unet_state = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    pipe = MIVAPipeline.from_pipe(sd, motion_adapter=motion_adapter)
    direct = MIVAPipeline(**tiny_components(seed=0))
    torch.testing.assert_close(_i2v(pipe), _i2v(direct), rtol=0, atol=0)
    _trained_adapter(pipe)
    assert isinstance(sd.unet, UNet2DConditionModel) and pipe.unet is not sd.unet
    assert all(isinstance(p, AttnProcessor2_0) for p in sd.unet.attn_processors.values())
    assert all(torch.equal(v, sd_unet_state[k]) for k, v in sd.unet.state_dict().items())

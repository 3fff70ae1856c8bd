"""Fusing adapters that carry their training prompt (what `miva train` stores in `adapter_config.json`): allowed
unless a call really uses per-adapter prompts (`batch_prompt`), which is then refused naming the pipe verb."""

import pytest
import torch

from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

OPTIONS = dict(prompt="a waterfall", num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
               output_type="latent")


def _run(pipe, **kwargs):
    return pipe(make_test_image(64, 64), generator=torch.Generator().manual_seed(0), **OPTIONS, **kwargs).frames


def test_fuse_two_trained_adapters_with_their_prompts():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    for seed, (name, prompt) in enumerate([("waves", "waves crashing"), ("clouds", "clouds moving")]):
        pipe.add_adapter(name, MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4,
                                                 use_i2v=False, prompt=prompt), activate=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in pipe.unet.miva_context.processors.values():
                for p in module.adapters[name].parameters() if name in module.adapters else []:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pipe.set_adapters(["waves", "clouds"], [0.6, 0.5], parallel_mode="weights")
    unfused = _run(pipe)
    assert pipe.fuse_adapters() == [("waves", 0.6), ("clouds", 0.5)]
    torch.testing.assert_close(_run(pipe), unfused, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"batch_prompt \(one prompt per adapter\) cannot be used while adapters "
                                         r"\['waves', 'clouds'\] are fused.*call pipe.unfuse_adapters\(\) first"):
        _run(pipe, batch_prompt=[None, None])

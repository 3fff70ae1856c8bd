"""`MIVAPipeline(adapter_masks=..., adapter_schedules=...)` on the tiny UNet pipeline (docs/regions.md): the exact
identities (an all-ones mask is no mask, an all-zero mask is the adapter not active, a constant schedule c is the
weight c) in both parallel modes, with CFG and per-adapter prompts and under FreeNoise; per-step schedules against a
loop that switches the adapter off by hand; a non-square video; the errors."""

import pytest
import torch
from frame0 import gen

from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

FRAMES, HEIGHT, WIDTH, STEPS = 4, 64, 96, 2  # non-square: the mask is resized to the recorded levels
PROMPT = "a waterfall, water flowing"


@pytest.fixture(scope="module")
def pipe():
    """Two random adapters "a" and "b" with every UNet part: cross-frame branch, CA-LoRA, MotionLoRA, motion
    embedding."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    config = MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4, use_motion_embed=True,
                               sa_mode="first_prev")
    pipe.add_adapter("a", config)
    pipe.add_adapter("b", config, activate=False)
    generator = gen(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".adapters." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return pipe


@pytest.fixture(scope="module")
def image():
    return make_test_image(WIDTH, HEIGHT, seed=0)


def run(pipe, image, **kwargs):
    options = dict(prompt=PROMPT, num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                   generator=gen(0), output_type="latent", guidance_scale=1.0)
    return pipe(image, **{**options, **kwargs}).frames


def half():
    mask = torch.zeros(HEIGHT, WIDTH)
    mask[:, : WIDTH // 2] = 1.0
    return mask


VARIANTS = {  # name -> (extra call arguments, the per-adapter prompts of ["a", "b"])
    "plain": ({}, None),
    "cfg_batch_prompt": ({"guidance_scale": 7.5, "negative_prompt": "blur"}, ["clouds moving", "a river"]),
}


@torch.no_grad()
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", ["residual", "weights"])
def test_exact_identities(pipe, image, mode, variant):
    extra, prompts = VARIANTS[variant]
    pipe.set_adapters(["a", "b"], [0.6, 0.7], parallel_mode=mode)
    both = run(pipe, image, batch_prompt=prompts, **extra)
    masked = run(pipe, image, batch_prompt=prompts, adapter_masks={"a": half()}, **extra)
    assert (masked - both).abs().max() > 1e-3  # the mask changes the video
    assert torch.equal(run(pipe, image, batch_prompt=prompts, adapter_masks={"a": torch.ones(HEIGHT, WIDTH)},
                           **extra), both)
    assert torch.equal(run(pipe, image, batch_prompt=prompts, adapter_schedules={"b": [1.0] * FRAMES}, **extra),
                       both)
    zero = run(pipe, image, batch_prompt=prompts, adapter_masks={"a": torch.zeros(FRAMES, 8, 12)}, **extra)
    steps_off = run(pipe, image, batch_prompt=prompts, adapter_schedules={"a": {"steps": [0.0] * STEPS}}, **extra)
    pipe.set_adapters(["b"], [0.7], parallel_mode=mode)
    only_b = run(pipe, image, batch_prompt=None if prompts is None else prompts[1:], **extra)
    assert torch.equal(zero, only_b) and torch.equal(steps_off, only_b)
    assert (only_b - both).abs().max() > 1e-3
    pipe.set_adapters(["a", "b"], [1.0, 0.7], parallel_mode=mode)
    constant = run(pipe, image, batch_prompt=prompts, adapter_schedules={"a": {"frames": [0.6] * FRAMES}}, **extra)
    assert torch.equal(constant, both)


@torch.no_grad()
def test_step_schedule_equals_switching_the_adapter_off_by_hand(pipe, image):
    pipe.set_adapters(["a", "b"], [0.6, 0.7], parallel_mode="residual")
    scheduled = run(pipe, image, adapter_schedules={"a": {"steps": lambda step: 1.0 if step == 0 else 0.0}})

    def switch(p, i, t, tensors):  # after step 0, "a" leaves the active adapters (the reference, by hand)
        p.set_adapters(["b"], [0.7])
        return tensors

    try:
        by_hand = run(pipe, image, callback_on_step_end=switch)
    finally:
        pipe.set_adapters(["a", "b"], [0.6, 0.7])
    assert torch.equal(scheduled, by_hand)
    assert (scheduled - run(pipe, image)).abs().max() > 1e-3


@torch.no_grad()
def test_free_noise_windows(image):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("m", MIVAAdapterConfig(use_i2v=False, motion_lora_rank=4, use_motion_embed=True))
    generator = gen(2)
    for name, param in pipe.unet.named_parameters():
        if ".adapters." in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    pipe.enable_free_noise(context_length=2, context_stride=2)  # windows of 2 of the 4 frames
    plain = run(pipe, image)
    assert torch.equal(run(pipe, image, adapter_masks={"m": torch.ones(HEIGHT, WIDTH)}), plain)
    masked = run(pipe, image, adapter_masks={"m": half()})
    assert (masked - plain).abs().max() > 1e-3
    pipe.set_adapters([])
    assert torch.equal(run(pipe, image), run(pipe, image, adapter_masks=None))
    off = run(pipe, image)
    pipe.set_adapters(["m"])
    assert torch.equal(run(pipe, image, adapter_masks={"m": torch.zeros(HEIGHT, WIDTH)}), off)
    with pytest.raises(ValueError, match=r"adapter_masks / adapter_schedules\['m'\]: a gate that varies over frames "
                                         r"cannot act on FreeNoise's 2-frame windows of 4 frames"):
        run(pipe, image, adapter_schedules={"m": [1.0, 1.0, 0.0, 0.0]})


def test_errors_name_the_adapter(pipe, image):
    pipe.set_adapters(["a", "b"], [0.6, 0.7], parallel_mode="residual")
    with pytest.raises(ValueError, match=r"^adapter_masks\['water'\]: 'water' is not an active adapter; the active "
                                         r"adapters are \['a', 'b'\]$"):
        run(pipe, image, adapter_masks={"water": half()})
    with pytest.raises(ValueError, match=r"^adapter_schedules\['b'\]\['steps'\] has 3 values but the call has 2 steps"):
        run(pipe, image, adapter_schedules={"b": {"steps": [1, 1, 1]}})
    pipe.set_adapters(["a"], [1.0], parallel_mode="weights")
    pipe.fuse_adapters()
    try:
        with pytest.raises(ValueError, match=r"adapter_masks / adapter_schedules for \['a'\]: adapters \[\('a', 1.0\)\] "
                                             r"are fused into the base weights; call pipe.unfuse_adapters\(\) first"):
            run(pipe, image, adapter_masks={"a": half()})
    finally:
        pipe.unfuse_adapters()


@torch.no_grad()
def test_split_inference_chunks_follow_the_mask(pipe, image):
    """FreeNoise split inference hands spatial layers chunks of the (videos x frames) rows and motion modules chunks
    of the (videos x h x w) rows: each chunk's gate is its rows' part of the whole one."""
    pipe.set_adapters(["a", "b"], [0.6, 0.7], parallel_mode="residual")
    mask = torch.rand(FRAMES, HEIGHT, WIDTH, generator=gen(5))
    masks = {"a": mask, "b": 1.0 - half()}
    pipe.enable_free_noise(context_length=FRAMES, context_stride=2)  # one window: the frame-varying mask is allowed
    try:
        whole = run(pipe, image, guidance_scale=7.5, adapter_masks=masks)
        pipe.enable_free_noise_split_inference(spatial_split_size=40, temporal_split_size=3)
        split = run(pipe, image, guidance_scale=7.5, adapter_masks=masks)
    finally:
        pipe.disable_free_noise()
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)  # float rounding of other chunk sizes, x 7.5
    assert (whole - run(pipe, image, guidance_scale=7.5)).abs().max() > 1e-3

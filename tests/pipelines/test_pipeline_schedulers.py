"""`MIVAPipeline` with schedulers whose `scale_model_input` is not the identity (Euler, KDPM2) and a multistep DPM
solver, against a denoising loop written here with stock diffusers parts (AnimateDiff's UNet with its default
processors, prompt encoding, a fresh scheduler of the same class).

The image-to-video rule under test: frame 0 is the clean image latent in every UNet input, so it is put back
*after* `scale_model_input` (Euler divides the whole input by sqrt(sigma^2 + 1)); only frames 1..F-1 are stepped.
"""

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    KDPM2DiscreteScheduler,
)
from frame0 import gen, image_latent

FRAMES, SIZE, STEPS = 6, 64, 3
PROMPT, NEGATIVE = "a waterfall, water flowing", "a still photo"


@torch.no_grad()
def reference_latents(stock, scheduler_class, first, noise, guidance):
    scheduler = scheduler_class.from_config(stock.scheduler.config)
    scheduler.set_timesteps(STEPS)
    cfg = guidance > 1
    cond, uncond = stock.encode_prompt(PROMPT, "cpu", 1, cfg, NEGATIVE)
    text = (torch.cat([uncond, cond]) if cfg else cond).repeat_interleave(FRAMES, dim=0)
    latents = torch.cat([first, noise[:, :, 1:] * scheduler.init_noise_sigma], dim=2)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        model_input[:, :, 0] = first[:, :, 0]  # the UNet always sees the clean image latent at frame 0
        eps = stock.unet(model_input, t, encoder_hidden_states=text).sample
        if cfg:
            uncond_eps, cond_eps = eps.chunk(2)
            eps = uncond_eps + guidance * (cond_eps - uncond_eps)
        rest = scheduler.step(eps[:, :, 1:], t, latents[:, :, 1:]).prev_sample
        latents = torch.cat([first, rest], dim=2)
    return latents


@pytest.mark.parametrize(
    "scheduler_class, guidance",
    [(EulerDiscreteScheduler, 1.0), (EulerDiscreteScheduler, 7.5), (KDPM2DiscreteScheduler, 7.5),
     (DPMSolverMultistepScheduler, 1.0)],
    ids=["euler", "euler-cfg", "kdpm2-cfg", "dpm-solver++"],
)
def test_frame0_is_the_image_latent_in_every_unet_input(pipe, stock, image, scheduler_class, guidance):
    pipe.scheduler = scheduler_class.from_config(stock.scheduler.config)
    noise = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=gen(5))
    first = image_latent(stock.vae, image, seed=3)
    inputs, final = [], {}
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    try:
        pipe(
            image,
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            num_frames=FRAMES,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            latents=noise,
            generator=gen(3),
            output_type="latent",
            callback_on_step_end=lambda p, i, t, tensors: final.update(tensors) or {},
        )
    finally:
        hook.remove()
    evaluations = len(pipe.scheduler.timesteps)  # KDPM2 evaluates the UNet twice per step
    assert len(inputs) == evaluations >= STEPS
    for sample in inputs:
        for half in sample.chunk(2 if guidance > 1 else 1):
            torch.testing.assert_close(half[:, :, :1], first, atol=1e-5, rtol=1e-5)
    expected = reference_latents(stock, scheduler_class, first, noise, guidance)
    torch.testing.assert_close(final["latents"], expected, atol=5e-5, rtol=1e-4)
    assert (expected[:, :, 1:] - noise[:, :, 1:]).abs().mean() > 1e-2  # frames 1.. really were denoised

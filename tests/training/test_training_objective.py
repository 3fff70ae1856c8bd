"""The training objective, written out here independently of `i2v_epsilon_loss` (docs/research.md#training).

`t ~ U{low..high-1}` then `eps ~ N(0, I)` from the step's generator; frames 1..F-1 are noised as
`sqrt(abar_t) x + sqrt(1 - abar_t) eps` (abar from the beta schedule, computed here from the config), frame 0 stays
the clean latent, and the loss is the MSE between the UNet's prediction and eps on frames 1..F-1 only.
"""

import torch
from diffusers import DDPMScheduler

from miva.tiny import tiny_unet_motion
from miva.training.trainer_parts import i2v_epsilon_loss

BETA_START, BETA_END, STEPS = 0.00085, 0.012, 1000


def hand_alphas_cumprod() -> torch.Tensor:
    """`scaled_linear` schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, abar_t = prod_{s<=t} (1 - beta_s)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def test_loss_is_epsilon_mse_on_frames_after_the_clean_first_frame():
    unet = tiny_unet_motion(seed=0)
    scheduler = DDPMScheduler(
        num_train_timesteps=STEPS, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="scaled_linear"
    )
    batch, frames = 2, 5
    latents = torch.randn(batch, 4, frames, 8, 8, generator=torch.Generator().manual_seed(1))
    embeds = torch.randn(batch, 77, 32, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0].clone(), args[1].clone())), with_kwargs=True
    )
    try:
        with torch.no_grad():
            loss = i2v_epsilon_loss(unet, latents, embeds, scheduler, torch.Generator().manual_seed(7), (100, 900))
    finally:
        hook.remove()

    generator = torch.Generator().manual_seed(7)
    t = torch.randint(100, 900, (batch,), generator=generator)
    eps = torch.randn(latents.shape, generator=generator)
    abar = hand_alphas_cumprod()[t].float().view(batch, 1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1.0 - abar).sqrt() * eps
    noisy[:, :, 0] = latents[:, :, 0]  # the given image: clean, never noised
    with torch.no_grad():
        prediction = unet(noisy, t, encoder_hidden_states=embeds.repeat_interleave(frames, dim=0)).sample
    expected = ((prediction[:, :, 1:] - eps[:, :, 1:]) ** 2).mean()

    ((sample, timesteps),) = seen
    assert torch.equal(timesteps, t)
    assert torch.equal(sample[:, :, 0], latents[:, :, 0])  # frame 0 reached the UNet clean
    torch.testing.assert_close(sample, noisy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # Frame 0 is outside the loss: the same MSE with frame 0 included (or frame 0 noised) is measurably different.
    assert abs(((prediction - eps) ** 2).mean() - expected) > 1e-3

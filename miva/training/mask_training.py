"""The mask branch's training step (docs/mask_branch.md#training): the video and the adapter's mask stream in one
UNet forward, the video restricted to the region by a ground-truth or predicted mask, the mask stream's epsilon
loss on frames 1.. (frame 0 is the given mask, clean), the Dice score logged and an optional soft Dice loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attention_processors.mask_guidance import MaskGuidance

__all__ = ["dice_score", "encode_masks", "ground_truth_probability", "mask_step_loss", "masks_from_latents",
           "soft_dice_loss"]

_EPS = 1e-6


def dice_score(predicted: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice `2|P & T| / (|P| + |T|)` of the binarised masks (`> threshold`), one per video: `(B, ...)` -> `(B,)`.
    Two empty masks score 1."""
    p = (predicted > threshold).flatten(1).float()
    t = (target > threshold).flatten(1).float()
    total = p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * (p * t).sum(1) / total.clamp_min(1), torch.ones_like(total))


def soft_dice_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 - mean_b (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)` on soft masks in [0, 1] (differentiable)."""
    p, t = predicted.flatten(1).float(), target.flatten(1).float()
    return 1 - ((2 * (p * t).sum(1) + _EPS) / (p.sum(1) + t.sum(1) + _EPS)).mean()


def ground_truth_probability(setting: float | str, step: int, max_steps: int) -> float:
    """The probability that a step restricts the video with the ground-truth mask (else with the predicted one):
    the number itself, or for `"cosine"` `(1 + cos(pi * step / max_steps)) / 2`, from 1 at the start to 0 at the end."""
    if setting == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max(max_steps, 1)))
    return float(setting)


def encode_masks(vae: nn.Module, masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask videos `(B, F, H, W)` in [0, 1] -> latents `(B, C, F, h, w)`: replicated to 3 channels in [-1, 1] and
    VAE-encoded like the frames (the posterior mean: the target of the stream is deterministic)."""
    batch, frames = masks.shape[:2]
    pixels = (masks.reshape(batch * frames, 1, *masks.shape[2:]) * 2 - 1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return latents.reshape(batch, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()


def masks_from_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents `(B, C, F, h, w)` -> soft masks `(B, F, H, W)` in [0, 1]: decoded, channel mean, [-1, 1] -> [0, 1]
    (differentiable in `latents`)."""
    batch, _, frames = latents.shape[:3]
    flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, *latents.shape[1:2], *latents.shape[3:])
    pixels = vae.decode((flat / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return ((pixels.mean(dim=1) + 1) / 2).clamp(0, 1).reshape(batch, frames, *pixels.shape[-2:])


def _x0(scheduler, noisy: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The clean latent an epsilon prediction implies: `(z - sqrt(1 - a) eps) / sqrt(a)`, `a = alphas_cumprod[t]`."""
    alpha = scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1, 1)
    return (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()


def mask_step_loss(unet: nn.Module, vae: nn.Module, guidance: MaskGuidance, *, latents: torch.Tensor,
                   masks: torch.Tensor, prompt_embeds: torch.Tensor, noise_scheduler, generator: torch.Generator,
                   use_ground_truth: bool, dice_weight: float = 0.0,
                   timestep_range=None) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch of the mask branch of adapter `guidance.names[0]`.

    `guidance` is the `MaskGuidance` of the open training call (`miva_call(unet, mask_guidance=guidance)`, kept open
    through the backward: gradient checkpointing re-runs the forward there and must see the same rows); this step
    sets its batch, masks and rows. `latents`: clean video latents `(B, C, F, h, w)`; `masks`: ground-truth mask
    videos `(B, F, H, W)` in [0, 1]; `prompt_embeds` `(B, T, D)`. One timestep per video, shared by its mask
    stream; frame 0 of both streams is clean. The video is restricted to the region by the ground-truth masks
    (`use_ground_truth`) or by the masks the stream predicts for this noisy input (a first, gradient-free forward of
    the stream alone; frame 0 the given mask). Returns the loss `MSE_video(1..) + MSE_mask(1..) + dice_weight *
    soft Dice(1..)` and the logged values (`mask_loss`, `dice` of frames 1..).
    """
    (name,) = guidance.names
    batch, _, frames = latents.shape[:3]
    guidance.videos, guidance.frames = batch, frames
    low, high = timestep_range or (0, noise_scheduler.config.num_train_timesteps)
    device = generator.device
    timesteps = torch.randint(low, high, (batch,), generator=generator, device=device).to(latents.device)
    mask_latents = encode_masks(vae, masks).to(latents.device)
    clean = torch.cat([latents, mask_latents])
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype).to(clean.device)
    both_t = torch.cat([timesteps, timesteps])
    noisy = noise_scheduler.add_noise(clean, noise, both_t)
    noisy[:, :, 0] = clean[:, :, 0]  # the given image and the given frame-0 mask
    text = prompt_embeds.repeat_interleave(frames, dim=0)
    soft = masks
    if not use_ground_truth:  # the stream alone, no region gates (its rows are read as plain videos here)
        guidance.soft.clear()
        guidance.stream_rows = False
        with torch.no_grad():
            eps = unet(noisy[batch:], timesteps, encoder_hidden_states=text).sample
            soft = masks_from_latents(vae, _x0(noise_scheduler, noisy[batch:], eps.float(), timesteps))
            soft[:, 0] = masks[:, 0]
    guidance.set_masks(name, soft.detach())
    guidance.stream_rows = True
    prediction = unet(noisy, both_t, encoder_hidden_states=torch.cat([text, text])).sample
    video_loss = F.mse_loss(prediction[:batch, :, 1:].float(), noise[:batch, :, 1:].float())
    mask_loss = F.mse_loss(prediction[batch:, :, 1:].float(), noise[batch:, :, 1:].float())
    loss = video_loss + mask_loss
    x0 = _x0(noise_scheduler, noisy[batch:], prediction[batch:].float(), timesteps)
    if dice_weight > 0:
        predicted = masks_from_latents(vae, x0[:, :, 1:])
        loss = loss + dice_weight * soft_dice_loss(predicted, masks[:, 1:])
    else:
        with torch.no_grad():
            predicted = masks_from_latents(vae, x0[:, :, 1:])
    dice = dice_score(predicted.detach(), masks[:, 1:]).mean()
    return loss, {"mask_loss": float(mask_loss.detach()), "dice": float(dice)}

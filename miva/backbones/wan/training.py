"""Training MIVA adapters on Wan2.1 with the flow-matching objective (latent frame 0 pinned and out of the loss).

`wan_flow_matching_loss` is one training step's loss; `train_wan_adapter` a minimal single-process loop over it
(AdamW on the adapter's parameters, the base frozen). `miva train` on a Wan base runs the shared trainer with
`trainer.WanTrainer` (accelerate, DDP, checkpoints, exact resume).

Objective (diffusers' flow-matching convention, `FlowMatchEulerDiscreteScheduler`): `sigma = shift*u / (1 + (shift -
1)*u)` with `u ~ U(0, 1)` per video, `x_t = (1 - sigma) x_0 + sigma * noise`, timestep `1000 * sigma`, target
velocity `noise - x_0`; latent frame 0 of `x_t` is the clean `x_0` frame (as in sampling), and the mean squared
error is taken over frames 1..F-1 only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...attention_processors import get_miva_adapter_modules, miva_call
from .install import install_miva_wan

__all__ = ["encode_video_latents", "train_wan_adapter", "wan_flow_matching_loss"]


@torch.no_grad()
def encode_video_latents(vae, video: torch.Tensor) -> torch.Tensor:
    """`video` (batch, 3, frames, H, W) in [-1, 1], frames = 4k+1 -> normalised latents (batch, z, 1+k, H/8, W/8)
    (the distribution's mode, normalised with the VAE's `latents_mean` / `latents_std` as `WanPipeline` does)."""
    config = vae.config
    latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents)
    return (latents - mean) / std


def wan_flow_matching_loss(transformer, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                           generator: torch.Generator, shift: float = 5.0) -> torch.Tensor:
    """The loss of one step. `latents`: clean normalised latents (batch, z, frames, h, w); `prompt_embeds`:
    (batch, tokens, text_dim). Draws `u` (batch,) then `noise` (like latents) from `generator`, in that order.

    Opens no `miva_call` itself: run the forward *and* the backward under the same call (or both outside any), since
    gradient checkpointing re-runs blocks in the backward and they read the call's recorded frame count and `temb`."""
    batch = latents.shape[0]
    u = torch.rand(batch, generator=generator, device=generator.device).to(latents.device)
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents)
    s = sigma.view(batch, 1, 1, 1, 1).to(latents)
    noisy = torch.cat([latents[:, :, :1], ((1 - s) * latents + s * noise)[:, :, 1:]], dim=2)
    model = getattr(transformer, "module", transformer)  # under DDP (accelerate's `prepare`): the wrapped model
    install_miva_wan(model)  # idempotent; a bare transformer trains nothing but still gives the loss
    velocity = transformer(noisy.to(model.dtype), sigma * 1000, prompt_embeds, return_dict=False)[0]
    target = noise - latents
    return F.mse_loss(velocity[:, :, 1:].float(), target[:, :, 1:].float())


def train_wan_adapter(transformer, adapter_name: str, latents: torch.Tensor, prompt_embeds: torch.Tensor, *,
                      steps: int, learning_rate: float = 1e-4, seed: int = 0, shift: float = 5.0) -> list[float]:
    """Train adapter `adapter_name` (its parameters only; the base stays frozen) on `latents` (clips, z, frames, h,
    w) with `prompt_embeds` (clips, tokens, dim) for `steps` AdamW steps, one clip per step in a seeded order.
    Returns the losses. The adapter must be active (`set_miva_adapters`)."""
    params = [p for module in get_miva_adapter_modules(transformer, adapter_name).values()
              for p in module.parameters()]
    if not params:
        raise ValueError(f"adapter {adapter_name!r} has no parameters on this transformer")
    frozen = [p for p in transformer.parameters() if all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(0, latents.shape[0], (steps,), generator=torch.Generator().manual_seed(seed + 1))
    latents, prompt_embeds = latents.detach(), prompt_embeds.detach()  # inputs, not trained here
    was_training = transformer.training
    transformer.train()
    losses = []
    try:
        for index in order.tolist():
            with miva_call(transformer):  # forward and backward (checkpointed blocks re-run) in one call
                loss = wan_flow_matching_loss(transformer, latents[index:index + 1], prompt_embeds[index:index + 1],
                                              generator, shift=shift)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        transformer.train(was_training)
    return losses

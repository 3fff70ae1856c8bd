"""Shared helpers of the Wan tests (not a test module): tiny inputs and randomised adapters."""

import torch

from miva.backbones.wan.tiny import TINY_TEXT_DIM, tiny_wan_transformer


def wan_transformer(seed: int = 0):
    """The tiny Wan transformer (width 24, 2 heads, 2 blocks), seeded, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny_wan_transformer().eval()


def wan_inputs(batch: int = 1, frames: int = 3, size: int = 4, seed: int = 1, timesteps=(700.0, 250.0)):
    """`(latents (batch, 16, frames, size, size), timestep (batch,), text (batch, 7, 32))`, seeded."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, frames, size, size, generator=g)
    text = torch.randn(batch, 7, TINY_TEXT_DIM, generator=g)
    return latents, torch.tensor(list(timesteps[:batch])), text


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Add seeded noise to every parameter of `module` (so zero-initialised outputs become non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)

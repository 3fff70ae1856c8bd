"""The frame-0 latent the pipeline tests compare with, computed independently of the pipeline."""

import numpy as np
import torch


def gen(seed):
    return torch.Generator().manual_seed(seed)


def image_latent(vae, image, seed):
    """Frame-0 latent: pixels / 127.5 - 1, a VAE posterior sample drawn from `seed`, times the scaling factor."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.sample(gen(seed)).unsqueeze(2) * vae.config.scaling_factor

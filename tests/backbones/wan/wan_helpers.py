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


def hub_cache(root, repo_id, files, sha="0123456789abcdef0123456789abcdef01234567"):
    """Files laid out as huggingface_hub's cache holds a repo (blobs, snapshot symlinks, refs/main)."""
    import os
    import shutil

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for i, (path_in_repo, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040d}"
        shutil.copy(source, blob)
        link = repo / "snapshots" / sha / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return sha

"""Benchmark model shapes, built offline from configs with random weights (timing and memory do not depend on
weight values).

- `tiny`: `miva.tiny` (2 levels, 32/64 channels).
- `small`: a 3-level SD-like UNet (64/128/256 channels, 8 heads, cross-attention width 128), CPU-sized: SD1.5's
  widths / 5. `bench_pipeline.py` runs it at 16x160x256 (latents 20x32), which keeps SD1.5-at-320x512's balance
  of attention (tokens^2 x C) against convolutions and projections (tokens x C^2): tokens / C = 10 vs 8.
- `sd15`: the real SD1.5 UNet + AnimateDiff v1-5-3 motion adapter shapes (320/640/1280/1280, 768-d text).
"""

from __future__ import annotations

import torch

SIZES = ("tiny", "small", "sd15")


def _sd_blocks(levels: int, cross_levels: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    down = ("CrossAttnDownBlock2D",) * cross_levels + ("DownBlock2D",) * (levels - cross_levels)
    up = ("UpBlock2D",) * (levels - cross_levels) + ("CrossAttnUpBlock2D",) * cross_levels
    return down, up


def build_unet_motion(size: str, seed: int = 0):
    """(UNetMotionModel, text width) for `size`, in float32 on the CPU."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {list(SIZES)}")
    torch.manual_seed(seed)
    if size == "tiny":
        from miva.tiny import tiny_unet_motion

        return tiny_unet_motion(seed), 32
    if size == "small":
        channels, text_dim, groups, heads, cross_levels = (64, 128, 256), 128, 32, 8, 3
    else:
        channels, text_dim, groups, heads, cross_levels = (320, 640, 1280, 1280), 768, 32, 8, 3
    down, up = _sd_blocks(len(channels), cross_levels)
    unet = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=2, down_block_types=down, up_block_types=up,
        cross_attention_dim=text_dim, attention_head_dim=heads, norm_num_groups=groups, sample_size=64,
    )
    adapter = MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=8, motion_norm_num_groups=groups, motion_max_seq_length=32,
        use_motion_mid_block=False,
    )
    return UNetMotionModel.from_unet2d(unet, adapter).eval(), text_dim


def randomise_adapters(unet, std: float = 0.02, seed: int = 0) -> None:
    """Give every adapter parameter small random values so no branch is trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".adapters." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)

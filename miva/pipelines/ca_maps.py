"""Cross-attention maps: capture during sampling (`CAMapStore`), and heat-map images (`save_ca_maps`).

Levels are named like the research option `CA_Map_visualization_resolution`: on a UNet whose down/up blocks have
cross-attention at resolution levels `l_0 < l_1 < ...` (0 = the full latent grid), `"high"` is the finest of them,
`"low"` the coarsest and `"middle"` the one in between (`levels[len(levels) // 2]`), which exists only with three
or more levels. SD1.5 (latent 40x64 at 320x512): high = 40x64, middle = 20x32, low = 10x16. The tiny test UNet
(`miva.tiny`, two blocks) has only "high" (the latent grid, 8x8 at 64x64) and "low" (4x4); asking it for
"middle" is an error. Like the research code, the mid block is not recorded.

Maps are softmax(Q K^T / sqrt(d)) over the main prompt's tokens, averaged over heads (by the processor), then over
the layers of a level and over denoising steps. With spatiotemporal Q the map lives on the downsampled grid
`(h / r, w / r)`; either way the stored tensor is `(batch, frames, h, w, tokens)` with rows and columns in image
order (the research code reshaped instead of permuting and mixed frames with heads outside STQ; we do not).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CA_LEVELS = ("low", "middle", "high")
_LAYER = re.compile(r"^(down|up)_blocks\.(\d+)\.attentions\.\d+\..*attn2\.processor$")


def cross_attention_levels(unet) -> dict[str, int]:
    """`layer name -> resolution level` (0 = full latent grid) of the spatial cross-attention layers of the down and
    up blocks of a `UNetMotionModel` (motion modules and the mid block excluded)."""
    num_up = len(unet.up_blocks)
    levels = {}
    for name in unet.attn_processors:
        match = _LAYER.match(name)
        if match is None or ".motion_modules." in name:
            continue
        block = int(match.group(2))
        levels[name] = block if match.group(1) == "down" else num_up - 1 - block
    return levels


def named_levels(unet) -> dict[str, int]:
    """Which resolution level each available name ("high", "middle", "low") means on `unet`."""
    levels = sorted(set(cross_attention_levels(unet).values()))
    if not levels:
        return {}
    named = {"high": levels[0], "low": levels[-1]}
    if len(levels) >= 3:
        named["middle"] = levels[len(levels) // 2]
    return named


def resolve_ca_map_resolutions(unet, ca_map_resolutions) -> dict[str, str]:
    """`ca_map_resolutions` (None, "all", a level name, or a list of them) -> `layer name -> level name`."""
    if ca_map_resolutions is None:
        return {}
    named = named_levels(unet)
    valid = [name for name in CA_LEVELS if name in named]
    if ca_map_resolutions == "all":
        wanted = valid
    else:
        wanted = [ca_map_resolutions] if isinstance(ca_map_resolutions, str) else ca_map_resolutions
        if not isinstance(wanted, (list, tuple)) or not wanted:
            raise ValueError(f"ca_map_resolutions={ca_map_resolutions!r} must be None, 'all' or a list of {valid}")
        for name in wanted:
            if name not in named:
                raise ValueError(
                    f"ca_map_resolutions={ca_map_resolutions!r}: {name!r} is not a level of this UNet; "
                    f"valid: 'all' or a list of {valid}"
                )
    by_index = {named[name]: name for name in wanted}
    return {layer: by_index[level] for layer, level in cross_attention_levels(unet).items() if level in by_index}


class CAMapStore:
    """Collects cross-attention maps; the `attention_store` of one pipeline call's `CallState` (`miva_call`).

    The MIVA cross-attention processor calls `wants(layer_name)` and `add(...)`; `maps()` returns the means.

    Args:
        layer_levels: `layer name -> level name` (see `resolve_ca_map_resolutions`).
        text_tokens: T, the main prompt's token count; the processor keeps only those keys (per-adapter prompt
            chunks are excluded).
    """

    def __init__(self, layer_levels: dict[str, str], text_tokens: int | None = None):
        self.layer_levels = dict(layer_levels)
        self.text_tokens = text_tokens
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def wants(self, layer_name: str) -> bool:
        return layer_name in self.layer_levels

    def add(
        self, layer_name: str, probs: Tensor, *, num_frames: int, size: tuple[int, int] | None, spatiotemporal: bool
    ) -> None:
        """Record one layer's maps at one step.

        Args:
            probs: softmax maps averaged over heads: `(batch*frames, h*w, T)` (frame inner, as diffusers lays out
                the batch) or, with `spatiotemporal=True`, `(batch, frames*h*w, T)` (frame, row, column order).
            num_frames: F.
            size: `(h, w)` of the grid the queries live on (the downsampled grid for spatiotemporal Q).
        """
        level = self.layer_levels[layer_name]
        if size is None:
            raise ValueError(
                f"{layer_name}: CA maps need the level size (h, w); run the whole UNet so the MIVA hooks can record it"
            )
        h, w = size
        rows, queries, tokens = probs.shape
        if spatiotemporal:
            batch, expected = rows, num_frames * h * w
        else:
            batch, expected = rows // num_frames, h * w
            if rows % num_frames:
                raise ValueError(f"{layer_name}: {rows} rows are not a multiple of num_frames={num_frames}")
        if queries != expected:
            raise ValueError(
                f"{layer_name}: {queries} queries do not match frames={num_frames} and size={size} "
                f"(spatiotemporal={spatiotemporal})"
            )
        maps = probs.detach().float().reshape(batch, num_frames, h, w, tokens)
        if level in self._sums:
            if self._sums[level].shape != maps.shape:
                raise ValueError(
                    f"{layer_name}: maps {tuple(maps.shape)} differ from the level {level!r} maps "
                    f"{tuple(self._sums[level].shape)} recorded so far"
                )
            self._sums[level] += maps
            self._counts[level] += 1
        else:
            self._sums[level] = maps.clone()
            self._counts[level] = 1

    def maps(self) -> dict[str, Tensor]:
        """`level -> (batch, frames, h, w, T)` float32 on the CPU: the mean over recorded layers and steps."""
        return {level: (total / self._counts[level]).cpu() for level, total in self._sums.items()}


# ------------------------------------------------------------------------------------------------------ images


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """`(...)` floats in [0, 1] -> `(..., 3)` RGB floats in [0, 1] (the classic "jet" ramp: blue, cyan, yellow, red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks of the ramp
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def _frames_as_array(frames) -> np.ndarray:
    """Pipeline frames (PIL lists, np (B, F, H, W, 3), pt (B, F, 3, H, W)) -> np float (B, F, H, W, 3) in [0, 1]."""
    if torch.is_tensor(frames):
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(
                f"output.frames tensor {tuple(frames.shape)} is not (batch, frames, 3, H, W); decoded "
                "frames are needed (output_type 'pil', 'np' or 'pt', not 'latent')"
            )
        return frames.float().permute(0, 1, 3, 4, 2).cpu().numpy()
    if isinstance(frames, np.ndarray):
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"output.frames array {frames.shape} is not (batch, frames, H, W, 3)")
        return frames.astype(np.float32) / (255.0 if frames.dtype == np.uint8 else 1.0)
    if isinstance(frames, list) and frames and isinstance(frames[0], list):
        return np.stack(
            [np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in video]) for video in frames]
        )
    raise ValueError(f"output.frames of type {type(frames).__name__} is not a decoded video")


def _check_indices(name: str, value, count: int) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    bad = [v for v in values if not isinstance(v, int) or not 0 <= v < count]
    if bad or not values:
        raise ValueError(f"{name}={value!r}: indices must be ints in [0, {count}), 'all' or None")
    return values


def save_ca_maps(
    output,
    folder: str | os.PathLike,
    token_index: int | list[int] | str = 1,
    frames: list[int] | None = None,
    alpha: float = 0.5,
) -> list[str]:
    """Write cross-attention heat maps over the output frames as PNGs and return their paths.

    One image per level, video, text token and frame: `<folder>/<level>/video<b>_token<k>_frame<f>.png`. Each map is
    min-max normalised on its own, upsampled bilinearly to the frame size, coloured with `jet_colormap` and blended
    over the frame: `(1 - alpha) * frame + alpha * heat`.

    Args:
        output: a `MIVAPipelineOutput` with `ca_maps` (call the pipeline with `ca_map_resolutions`) and decoded
            `frames`.
        token_index: a text-token index (1 = the first word, as in the research code; 0 is the start token), a list
            of them, or "all".
        frames: frame indices to write (default: all).
        alpha: heat-map opacity in [0, 1].
    """
    from PIL import Image

    if not getattr(output, "ca_maps", None):
        raise ValueError("output.ca_maps is empty: call the pipeline with ca_map_resolutions='all' (or a level list)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
    video = _frames_as_array(output.frames)
    batch, num_frames, height, width, _ = video.shape
    paths = []
    for level, maps in output.ca_maps.items():
        if maps.shape[:2] != (batch, num_frames):
            raise ValueError(
                f"ca_maps[{level!r}] {tuple(maps.shape)} does not match {batch} videos of {num_frames} frames"
            )
        tokens = (
            list(range(maps.shape[-1]))
            if token_index == "all"
            else _check_indices("token_index", token_index, maps.shape[-1])
        )
        chosen = list(range(num_frames)) if frames is None else _check_indices("frames", frames, num_frames)
        os.makedirs(os.path.join(folder, level), exist_ok=True)
        selected = maps[:, chosen][..., tokens].permute(0, 1, 4, 2, 3).float()  # (B, f, k, h, w)
        low = selected.amin(dim=(-2, -1), keepdim=True)
        span = (selected.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
        normalised = (selected - low) / span
        up = (
            F.interpolate(normalised.flatten(0, 2)[:, None], size=(height, width), mode="bilinear", align_corners=False)
            .reshape(*selected.shape[:3], height, width)
            .clamp(0, 1)
            .numpy()
        )
        for b in range(batch):
            for i, f in enumerate(chosen):
                for j, k in enumerate(tokens):
                    blended = (1.0 - alpha) * video[b, f] + alpha * jet_colormap(up[b, i, j])
                    path = os.path.join(folder, level, f"video{b}_token{k:02d}_frame{f:02d}.png")
                    Image.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8)).save(path)
                    paths.append(path)
    return paths

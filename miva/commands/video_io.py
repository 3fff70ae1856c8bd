"""Writing the videos of `miva infer` (gif / mp4 / png frames) and the optional histogram matching to frame 0."""

from __future__ import annotations

import os

import numpy as np

FORMAT_ALIASES = {"images": "png"}


def hist_match_frames(frames: np.ndarray) -> np.ndarray:
    """Match every frame's per-channel histogram to frame 0's (the input image), as `hist_match` in the research code.

    Args:
        frames: `(frames, H, W, C)` uint8, or float in [0, 1].
    Returns:
        the same shape and dtype; frame 0 is unchanged, and frame f >= 1's channel c is `q(x)`, where `q` maps a
        value's rank in frame f (its empirical CDF) to the value of frame 0 at the same CDF (linear interpolation).
    """
    if frames.ndim != 4:
        raise ValueError(f"frames has shape {frames.shape}; expected (frames, H, W, channels)")
    out = frames.copy()
    for c in range(frames.shape[-1]):
        ref_values, ref_counts = np.unique(frames[0, ..., c].ravel(), return_counts=True)
        ref_cdf = np.cumsum(ref_counts) / ref_counts.sum()
        for f in range(1, frames.shape[0]):
            channel = frames[f, ..., c]
            values, inverse, counts = np.unique(channel.ravel(), return_inverse=True, return_counts=True)
            cdf = np.cumsum(counts) / counts.sum()
            mapped = np.interp(cdf, ref_cdf, ref_values.astype(np.float64))
            result = mapped[inverse].reshape(channel.shape)
            out[f, ..., c] = np.round(result).clip(0, 255) if frames.dtype == np.uint8 else result
    return out


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """`(frames, H, W, 3)` float in [0, 1] (or uint8) -> uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def save_video(frames: np.ndarray, output_dir: str, name: str, fmt: str, fps: int = 8) -> list[str]:
    """Write `frames` `(F, H, W, 3)` as `<output_dir>/<name>.gif` / `.mp4`, or PNG frames `<output_dir>/<name>/<k>.png`
    (`fmt` "png" / "images"); "eval" writes the mp4 and the PNG frames. Returns the written paths."""
    from diffusers.utils import export_to_gif, export_to_video
    from PIL import Image

    frames = to_uint8(frames)
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    if fmt == "gif":
        paths.append(
            export_to_gif([Image.fromarray(f) for f in frames], os.path.join(output_dir, f"{name}.gif"), fps=fps)
        )
    if fmt in ("mp4", "eval"):
        paths.append(
            export_to_video([Image.fromarray(f) for f in frames], os.path.join(output_dir, f"{name}.mp4"), fps=fps)
        )
    if fmt in ("png", "eval"):
        folder = os.path.join(output_dir, name)
        os.makedirs(folder, exist_ok=True)
        for k, frame in enumerate(frames):
            path = os.path.join(folder, f"{k}.png")
            Image.fromarray(frame).save(path)
            paths.append(path)
    if not paths:
        raise ValueError(f"format={fmt!r} is not one of ['gif', 'mp4', 'png', 'images', 'eval']")
    return paths


def save_mask_videos(masks: dict, output_dir: str, name: str, fmt: str, fps: int = 8) -> list[str]:
    """Write each mask-branch adapter's predicted mask video (`output.masks[adapter]`: `(1, F, H, W)` in [0, 1],
    docs/mask_branch.md) in grey as `<name>_mask_<adapter>` in `fmt` (:func:`save_video`). Returns the written paths."""
    paths = []
    for adapter, video in masks.items():
        frames = np.asarray(video[0].float().cpu())[..., None].repeat(3, axis=-1)  # (F, H, W, 3)
        paths += save_video(frames, output_dir, f"{name}_mask_{adapter}", fmt, fps)
    return paths

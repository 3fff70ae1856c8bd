"""Side-by-side MotionWorld videos with captions (ground truth | base | base + adapter), and adapter sample GIFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .evaluate import animate_scene
from .metrics import estimate_motion
from .motions import get_motion
from .scenes import make_scene, render_clip

__all__ = ["LABEL_HEIGHT", "comparison_labels", "side_by_side", "write_adapter_sample", "write_gif"]

LABEL_HEIGHT = 14  # pixels of the white caption strip above the columns (fits PIL's default font)


def comparison_labels(adapter: str) -> tuple[str, str, str]:
    """The captions of a ``side_by_side([truth, base, adapted])`` comparison."""
    return ("ground truth", "base", f"base + {adapter}")


def _caption_strip(labels, widths: list[int], gap: int) -> np.ndarray:
    """``(LABEL_HEIGHT, sum(widths) + gaps, 3)`` ``uint8``: each label centred, in black on white, over its column."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), LABEL_HEIGHT), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    draw.fontmode = "1"  # no anti-aliasing: black and white only, so the GIF palette keeps its colours for the videos
    left = 0
    for label, width in zip(labels, widths):
        draw.text((left + (width - draw.textlength(label, font=font)) / 2, 1), label, fill="black", font=font)
        left += width + gap
    return np.asarray(strip)


def side_by_side(videos: list[np.ndarray], scale: int = 2, gap: int = 2, labels=None) -> np.ndarray:
    """Concatenate ``(F, H, W, 3)`` ``uint8`` videos left to right (white gaps), upscaled ``scale`` times:
    ``(F, H * scale, (sum W + gaps) * scale, 3)``. With ``labels`` (one caption per video) a white strip of
    :data:`LABEL_HEIGHT` pixels with the captions goes on top (the height grows by that much)."""
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"labels: {len(labels)} captions for {len(videos)} videos; give one per video")
    frames = min(v.shape[0] for v in videos)
    height = videos[0].shape[1]
    spacer = np.full((frames, height, gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, video in enumerate(videos):
        parts.append(video[:frames])
        if i < len(videos) - 1:
            parts.append(spacer)
    joined = np.concatenate(parts, axis=2).repeat(scale, axis=1).repeat(scale, axis=2)
    if labels is None:
        return joined
    strip = _caption_strip(labels, [video.shape[2] * scale for video in videos], gap * scale)
    return np.concatenate([np.broadcast_to(strip, (frames, *strip.shape)), joined], axis=1)


def write_gif(video: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    from diffusers.utils import export_to_gif
    from PIL import Image

    export_to_gif([Image.fromarray(frame) for frame in video], str(path), fps=fps)
    return Path(path)


def write_adapter_sample(folder: str | Path, name: str, motion: str, scene: int = 0, base: str = "unet") -> Path:
    """Animate held-out ``scene`` with MotionWorld base ``base`` (``"unet"`` / ``"wan"``) and with adapter ``folder``;
    write ``sample.gif`` (ground truth | base | adapter) and re-save the adapter with it so the model card shows it.
    Returns the GIF path."""
    from . import WORLD_BASES, load_pipeline

    folder = Path(folder)
    pipe = load_pipeline(base=base)
    pipe.set_progress_bar_config(disable=True)
    alone = animate_scene(pipe, scene)
    pipe.load_adapters([str(folder)], adapter_names=[name])
    adapted = animate_scene(pipe, scene)
    truth = render_clip(make_scene("heldout", scene), get_motion(motion), alone.shape[0], 64)
    gif = write_gif(side_by_side([truth, alone, adapted], labels=comparison_labels(name)),
                    folder.parent / f".{name}_sample.gif")
    pipe.save_adapter(name, folder, sample_gif=str(gif), base_model=WORLD_BASES[base])
    gif.unlink()
    fitted = estimate_motion(adapted).summary
    print(f"{name}: held-out scene {scene}: {fitted.describe()}")
    return folder / "sample.gif"

"""Synthetic training clips for tests and the demo: moving textured shapes, no downloads.

Each clip is a smooth textured background (a few coloured plane waves plus soft stripes) with 2-3 textured shapes
(disc, square, diamond) on top. Every frame is rendered analytically, by mapping the output pixel grid back into
"scene" coordinates, so any motion is exact and sub-pixel smooth:

- ``"right" | "left" | "down" | "up"``: the shapes translate by ``speed`` pixels per frame (``speed`` = 2 at 64 px,
  scaled with the frame size) and wrap around the frame; the background translates at half that speed (parallax).
- ``"zoom"``: the whole scene is magnified about the centre by a constant factor per frame (a zoom-in).
- ``"rotate"``: the whole scene turns about the centre by a constant angle per frame (counter-clockwise on screen).

Clips are deterministic for a ``seed``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["MOTIONS", "clip_seed", "make_synthetic_clip", "write_synthetic_dataset"]

MOTIONS = ("right", "left", "down", "up", "zoom", "rotate")
_DIRECTIONS = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}  # (dy, dx)
_FORMATS = ("mp4", "gif", "frames")
_ZOOM_PER_FRAME = 1.03
_DEGREES_PER_FRAME = 4.0


def _background(rng: np.random.Generator, unit: float):
    """Return ``f(y, x) -> (..., 3)`` float in [0, 255]: coloured plane waves plus soft stripes."""
    num_waves = 4
    freqs = rng.uniform(1.0 / 24.0, 1.0 / 8.0, size=num_waves) / unit  # cycles per pixel
    angles = rng.uniform(0.0, 2.0 * math.pi, size=num_waves)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=num_waves)
    colours = rng.uniform(-1.0, 1.0, size=(num_waves, 3))
    base = rng.uniform(70.0, 170.0, size=3)
    stripe_freq = rng.uniform(1.0 / 12.0, 1.0 / 6.0) / unit
    stripe_angle = rng.uniform(0.0, math.pi)

    def render(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(base, y.shape + (3,)).copy()
        for k in range(num_waves):
            t = 2.0 * math.pi * freqs[k] * (x * math.cos(angles[k]) + y * math.sin(angles[k])) + phases[k]
            out += 30.0 * np.sin(t)[..., None] * colours[k]
        stripes = np.sin(2.0 * math.pi * stripe_freq * (x * math.cos(stripe_angle) + y * math.sin(stripe_angle)))
        out += 20.0 * stripes[..., None]
        return out

    return render


def _shapes(rng: np.random.Generator, height: int, width: int, unit: float) -> list[dict]:
    shapes = []
    for _ in range(int(rng.integers(2, 4))):
        shapes.append(
            {
                "kind": rng.choice(["disc", "square", "diamond"]),
                "radius": rng.uniform(0.12, 0.2) * min(height, width),
                "cy": rng.uniform(0.2, 0.8) * height,
                "cx": rng.uniform(0.2, 0.8) * width,
                "colour": rng.uniform(20.0, 235.0, size=3),
                "tex_freq": rng.uniform(1.0 / 8.0, 1.0 / 4.0) / unit,
                "tex_angle": rng.uniform(0.0, math.pi),
            }
        )
    return shapes


def _paint_shape(canvas: np.ndarray, shape: dict, qy: np.ndarray, qx: np.ndarray) -> None:
    """Alpha-blend one shape onto ``canvas`` (H, W, 3); ``(qy, qx)`` are pixel offsets from its centre."""
    r = shape["radius"]
    if shape["kind"] == "disc":
        dist = np.sqrt(qy**2 + qx**2)
    elif shape["kind"] == "square":
        dist = np.maximum(np.abs(qy), np.abs(qx))
    else:  # diamond
        dist = (np.abs(qy) + np.abs(qx)) / math.sqrt(2.0)
    alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]  # one pixel of anti-aliasing at the edge
    a = shape["tex_angle"]
    texture = np.sin(2.0 * math.pi * shape["tex_freq"] * (qx * math.cos(a) + qy * math.sin(a)))
    fill = shape["colour"] * (0.75 + 0.25 * texture[..., None])
    canvas *= 1.0 - alpha
    canvas += alpha * fill


def _wrap(q: np.ndarray, period: float) -> np.ndarray:
    """Wrap offsets into ``[-period/2, period/2)`` so translated shapes re-enter the frame."""
    return (q + period / 2.0) % period - period / 2.0


def make_synthetic_clip(
    num_frames: int = 24,
    height: int = 64,
    width: int = 64,
    motion: str = "right",
    seed: int = 0,
) -> np.ndarray:
    """Render a clip of textured shapes moving consistently in one direction.

    Args:
        num_frames: number of frames F.
        height, width: frame size in pixels.
        motion: one of ``"right"``, ``"left"``, ``"down"``, ``"up"``, ``"zoom"``, ``"rotate"``.
        seed: the clip is a deterministic function of ``(num_frames, height, width, motion, seed)``.

    Returns:
        ``np.ndarray`` of shape ``(num_frames, height, width, 3)``, dtype ``uint8``.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r} is not one of {MOTIONS}")
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"num_frames, height and width must be >= 1, got {num_frames}, {height}, {width}")

    rng = np.random.default_rng(seed)
    unit = min(height, width) / 64.0  # textures and speeds are designed at 64 px and scale with the frame
    background = _background(rng, unit)
    shapes = _shapes(rng, height, width, unit)
    speed = 2.0 * unit

    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    max_radius = max(s["radius"] for s in shapes)
    period_y, period_x = height + 2.0 * max_radius + 2.0, width + 2.0 * max_radius + 2.0

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        if motion in _DIRECTIONS:
            dy, dx = _DIRECTIONS[motion]
            canvas = background(ys - 0.5 * speed * t * dy, xs - 0.5 * speed * t * dx)
            for s in shapes:
                qy = _wrap(ys - (s["cy"] + speed * t * dy), period_y)
                qx = _wrap(xs - (s["cx"] + speed * t * dx), period_x)
                _paint_shape(canvas, s, qy, qx)
        else:
            # Inverse map from screen to scene coordinates about the frame centre.
            if motion == "zoom":
                scale = _ZOOM_PER_FRAME ** (-t)
                sy, sx = cy + (ys - cy) * scale, cx + (xs - cx) * scale
            else:  # rotate: scene point p appears at R(theta) p, so sample R(-theta) p
                theta = math.radians(_DEGREES_PER_FRAME * t)
                c, s_ = math.cos(theta), math.sin(theta)
                # screen y grows downwards, so a positive theta here is counter-clockwise on screen
                sy = cy + c * (ys - cy) + s_ * (xs - cx)
                sx = cx - s_ * (ys - cy) + c * (xs - cx)
            canvas = background(sy, sx)
            for s in shapes:
                # Offsets measured in scene pixels, so shapes (and their textures) grow / turn with the scene.
                _paint_shape(canvas, s, (sy - s["cy"]), (sx - s["cx"]))
        frames[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return frames


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a dataset written with ``seed``.

    Derived with ``numpy.random.SeedSequence`` so datasets do not share clips (``(0, 1)`` and ``(1, 0)`` differ).
    """
    return int(np.random.SeedSequence([int(seed) % 2**64, index]).generate_state(1)[0])


def write_synthetic_dataset(
    folder: str | Path,
    num_clips: int = 10,
    num_frames: int = 24,
    height: int = 64,
    width: int = 64,
    motion: str = "right",
    prompt: str = "a photo of clouds moving",
    fmt: str = "mp4",
    seed: int = 0,
    fps: int = 8,
) -> list[Path]:
    """Write ``num_clips`` synthetic clips of one motion plus a ``<name>.txt`` prompt sidecar for each.

    Args:
        folder: output directory (created if missing).
        fmt: ``"mp4"`` (H.264 through imageio-ffmpeg's bundled ffmpeg; needs even ``height`` and ``width``),
            ``"gif"`` (Pillow) or ``"frames"`` (a sub-folder of ``frame_0000.png`` ... per clip).
        seed: clip ``i`` is ``make_synthetic_clip(..., seed=clip_seed(seed, i))``.

    Returns:
        The clip paths (``clip_000.mp4`` ... or the frame folders ``clip_000/`` ...), sorted.
        The sidecar of ``clip_000.mp4`` or of the folder ``clip_000/`` is ``clip_000.txt``.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"fmt={fmt!r} is not one of {_FORMATS}")
    if fmt == "mp4" and (height % 2 or width % 2):
        raise ValueError(
            f"fmt='mp4' needs an even height and width (H.264 4:2:0), got {height}x{width}; "
            "use fmt='gif' or fmt='frames' for odd sizes"
        )
    import imageio.v2 as iio2
    import imageio.v3 as iio3

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_clips):
        frames = make_synthetic_clip(num_frames, height, width, motion, seed=clip_seed(seed, i))
        name = f"clip_{i:03d}"
        if fmt == "mp4":
            path = folder / f"{name}.mp4"
            # quality=9 keeps the round trip close; macro_block_size=1 stops imageio from resizing the frames.
            with iio2.get_writer(
                path,
                format="FFMPEG",
                mode="I",
                fps=fps,
                codec="libx264",
                quality=9,
                pixelformat="yuv420p",
                macro_block_size=1,
            ) as writer:
                for frame in frames:
                    writer.append_data(frame)
        elif fmt == "gif":
            path = folder / f"{name}.gif"
            iio3.imwrite(path, frames, plugin="pillow", duration=1000.0 / fps, loop=0)
        else:
            path = folder / name
            path.mkdir(exist_ok=True)
            for t, frame in enumerate(frames):
                iio3.imwrite(path / f"frame_{t:04d}.png", frame, plugin="pillow")
        (folder / f"{name}.txt").write_text(prompt + "\n", encoding="utf-8")
        paths.append(path)
    return paths

"""MotionWorld, regional: clips whose regions move differently, with the exact mask of every region per frame.

A region layout splits a frame into regions, each moved by its own :class:`~miva.world.motions.Motion`, rendered
by the world's own renderer (:mod:`miva.world.scenes`):

- ``"halves"``: regions ``"left"`` and ``"right"``, two fixed windows onto the same scene: the left half of every
  frame shows the scene under motion 0, the right half the scene under motion 1. The masks are fixed on screen
  (the boundary is the frame's vertical centre line and does not move): ``left`` is 1 on the columns whose centre
  lies left of the frame centre, 0 elsewhere; hard edges, exact in every frame.
- ``"shape"``: regions ``"shape"`` and ``"background"``: the scene's first shape (always inside frame 0) moves with
  motion 0, drawn over the rest of the scene (background and the other shapes) moving with motion 1. The shape's
  mask moves with it: in frame ``t`` it is the shape's own anti-aliased coverage (soft over one pixel at its edge),
  and the background's is one minus it.

Masks are ``(F, H, W)`` float32 in [0, 1] and the masks of a clip sum to 1 at every pixel.
:func:`evaluate_regions` measures the motion inside each region's mask against that region's motion
(:func:`miva.world.metrics.score_video` with the mask as weights); :func:`miva.world.data.write_regional_clips`
writes such clips and masks for training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .metrics import score_video
from .motions import Motion, get_motion
from .scenes import Scene, render_clip, scene_coordinates

__all__ = ["LAYOUTS", "RegionalClip", "evaluate_regions", "render_regional_clip"]

# layout -> its region names, in the order of the motions given.
LAYOUTS = {"halves": ("left", "right"), "shape": ("shape", "background")}


@dataclass(frozen=True)
class RegionalClip:
    """A rendered regional clip: ``frames`` ``(F, H, W, 3)`` ``uint8``; ``masks`` ``(R, F, H, W)`` float32 in
    [0, 1], one per region in the order of ``names`` and ``motions``; ``prompt`` the scene's prompt."""

    layout: str
    names: tuple[str, ...]
    motions: tuple[Motion, ...]
    frames: np.ndarray
    masks: np.ndarray
    prompt: str

    def mask(self, name: str) -> np.ndarray:
        """The mask ``(F, H, W)`` of region ``name``."""
        if name not in self.names:
            raise ValueError(f"region {name!r} is not in layout {self.layout!r}; its regions: {', '.join(self.names)}")
        return self.masks[self.names.index(name)]


def _motions(layout: str, motions) -> tuple[Motion, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {', '.join(LAYOUTS)}")
    names = LAYOUTS[layout]
    if isinstance(motions, (str, Motion)) or len(motions) != len(names):
        raise ValueError(f"layout {layout!r} needs {len(names)} motions ({', '.join(names)}), got {motions!r}")
    return tuple(get_motion(m) if isinstance(m, str) else m for m in motions)


def render_regional_clip(scene: Scene, layout: str, motions, num_frames: int = 8, size: int = 64) -> RegionalClip:
    """``scene`` split by ``layout`` (see the module docstring), region ``i`` moved by ``motions[i]`` (a
    :class:`Motion` or a motion name such as ``"right"``)."""
    motions = _motions(layout, motions)
    if layout == "halves":
        left = (np.arange(size) + 0.5 < size / 2.0).astype(np.float32)  # column centres left of the frame centre
        mask = np.broadcast_to(left, (num_frames, size, size)).copy()
        clips = [render_clip(scene, m, num_frames, size) for m in motions]
        frames = np.where(mask[..., None] > 0.5, clips[0], clips[1])
    else:
        if not scene.shapes:
            raise ValueError("layout 'shape' needs a scene with at least one shape")
        shape, rest = scene.shapes[0], dataclasses.replace(scene, shapes=scene.shapes[1:])
        frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
        mask = np.empty((num_frames, size, size), dtype=np.float32)
        for t in range(num_frames):
            canvas = rest.render(*scene_coordinates(motions[1], t, size))
            qx, qy, pixel = scene_coordinates(motions[0], t, size)
            shape.paint(canvas, qx, qy, pixel)
            frames[t] = np.rint(canvas).astype(np.uint8)
            mask[t] = shape.alpha(qx, qy, pixel)
    masks = np.stack([mask, 1.0 - mask]).astype(np.float32)
    return RegionalClip(layout, LAYOUTS[layout], motions, frames, masks, scene.prompt)


def evaluate_regions(video, truth: RegionalClip, image=None) -> dict[str, dict]:
    """Score ``video`` ``(F, H, W, 3)`` region by region against ``truth``: for each region name, the dict of
    :func:`miva.world.metrics.evaluate_video` (class, direction error, PSNR, ...) measured inside that region's
    ground-truth mask against that region's motion and the regional ground truth ``truth.frames``."""
    video = np.asarray(video)
    if video.shape != truth.frames.shape:
        raise ValueError(f"video must have the regional truth's shape {truth.frames.shape}, got {video.shape}")
    return {name: score_video(video, truth.frames, motion, image=image, weights=mask)
            for name, motion, mask in zip(truth.names, truth.motions, truth.masks)}

"""MotionWorld scenes: procedural textured shapes on a textured background, rendered analytically.

A scene lives on an infinite plane measured in pixels of a 64-pixel frame, origin at the frame centre, ``y`` down.
The background is a colour plus a few low-frequency plane waves (defined everywhere, so content that enters the
frame under a drift, zoom-out or turn is known too); 3-6 shapes (disc, square, diamond, triangle) with soft striped
textures are scattered over a region wider than the frame. Frame ``t`` under a :class:`~miva.world.motions.Motion`
is rendered by mapping every output pixel back to the scene (``q = A_t^-1 (p - b_t)``), so the ground truth of any
scene under any motion is exact and sub-pixel smooth, at any frame size.

Scenes are deterministic by ``(split, index)``: ``"train"`` uses even seeds and ``"heldout"`` odd ones, so a held-out
scene is never a training scene. Each scene has a prompt that describes it (colours and shapes), never its motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .motions import Motion

__all__ = ["COLOURS", "SHAPES", "SPLITS", "Scene", "WORLD_WORDS", "make_scene", "render_clip", "render_frame", "scene_coordinates",
           "scene_seed"]

# Named colours (RGB, 0..255); prompts use the names.
COLOURS = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (230, 210, 50),
    "green": (50, 160, 60),
    "cyan": (50, 190, 200),
    "blue": (40, 70, 200),
    "purple": (130, 50, 170),
    "pink": (235, 130, 180),
    "brown": (120, 75, 40),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
}
SHAPES = ("disc", "square", "diamond", "triangle")
SPLITS = ("train", "heldout")
# The words of every prompt, for the tokenizer (each becomes one token).
WORLD_WORDS = tuple(COLOURS) + SHAPES + ("discs", "squares", "diamonds", "triangles", "background", "striped")


def scene_seed(split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split``: even for ``"train"``, odd for ``"heldout"`` (disjoint sets)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"scene index={index!r} must be an integer >= 0")
    return 2 * int(index) + SPLITS.index(split)


@dataclass(frozen=True)
class _Shape:
    kind: str
    colour_name: str
    centre: tuple[float, float]  # (x, y) in scene pixels
    radius: float
    angle: float  # orientation of the shape and its stripes, radians
    stripe_period: float

    def alpha(self, qx: np.ndarray, qy: np.ndarray, pixel: float) -> np.ndarray:
        """Coverage ``(...)`` in [0, 1] of the shape at scene coordinates ``(qx, qy)``, anti-aliased over ``pixel``
        (one output pixel in scene units)."""
        u, v = self._local(qx, qy)
        if self.kind == "disc":
            dist = np.hypot(u, v)
        elif self.kind == "square":
            dist = np.maximum(np.abs(u), np.abs(v))
        elif self.kind == "diamond":
            dist = (np.abs(u) + np.abs(v)) / math.sqrt(2.0)
        else:  # triangle pointing up in local coordinates: the max of three half-plane distances
            dist = np.maximum(v, np.maximum(-0.5 * v + 0.866 * u, -0.5 * v - 0.866 * u)) * 2.0
        return np.clip((self.radius - dist) / pixel + 0.5, 0.0, 1.0)

    def fill(self, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
        """The striped colour ``(..., 3)`` of the shape's interior at scene coordinates ``(qx, qy)``."""
        u, _ = self._local(qx, qy)
        stripes = np.sin(2.0 * math.pi * u / self.stripe_period)
        return np.asarray(COLOURS[self.colour_name], dtype=np.float64) * (0.8 + 0.2 * stripes[..., None])

    def paint(self, canvas: np.ndarray, qx: np.ndarray, qy: np.ndarray, pixel: float) -> None:
        """Alpha-blend onto ``canvas (H, W, 3)``; ``(qx, qy)`` are scene coordinates; ``pixel`` = one output pixel
        in scene units (the anti-aliasing width)."""
        alpha = self.alpha(qx, qy, pixel)[..., None]
        canvas *= 1.0 - alpha
        canvas += alpha * self.fill(qx, qy)

    def _local(self, qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = qx - self.centre[0], qy - self.centre[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        return c * dx + s * dy, -s * dx + c * dy


@dataclass(frozen=True)
class Scene:
    """One procedural scene (see the module docstring). Build it with :func:`make_scene`."""

    seed: int
    background_name: str
    waves: tuple[tuple[float, float, float, tuple[float, float, float]], ...]  # (freq, angle, phase, rgb amplitude)
    shapes: tuple[_Shape, ...]

    @property
    def prompt(self) -> str:
        """A description of what is in frame 0 (never of the motion), e.g. ``"a red disc and a blue square on a
        green background"``."""
        visible = [s for s in self.shapes if abs(s.centre[0]) < 36 and abs(s.centre[1]) < 36] or list(self.shapes)
        names = [f"a {s.colour_name} {s.kind}" for s in visible[:3]]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{listed} on a {self.background_name} background"

    def render(self, qx: np.ndarray, qy: np.ndarray, pixel: float) -> np.ndarray:
        """Colours ``(..., 3)`` float in [0, 255] at scene coordinates ``(qx, qy)``."""
        base = np.asarray(COLOURS[self.background_name], dtype=np.float64) * 0.8 + 25.0
        canvas = np.broadcast_to(base, qx.shape + (3,)).copy()
        for freq, angle, phase, amplitude in self.waves:
            wave = np.sin(2.0 * math.pi * freq * (qx * math.cos(angle) + qy * math.sin(angle)) + phase)
            canvas += wave[..., None] * np.asarray(amplitude)
        for shape in self.shapes:
            shape.paint(canvas, qx, qy, pixel)
        return np.clip(canvas, 0.0, 255.0)


def make_scene(split: str = "train", index: int = 0) -> Scene:
    """Scene ``index`` of ``split`` (deterministic)."""
    seed = scene_seed(split, index)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    background = names[int(rng.integers(len(names)))]
    waves = tuple(
        (
            1.0 / rng.uniform(14.0, 40.0),  # cycles per scene pixel: periods of 14-40 px at 64 px
            rng.uniform(0.0, 2.0 * math.pi),
            rng.uniform(0.0, 2.0 * math.pi),
            tuple(rng.uniform(-28.0, 28.0, size=3)),
        )
        for _ in range(3)
    )
    shapes = []
    for i in range(int(rng.integers(3, 7))):
        # The first three lie in the frame; the others may lie outside and enter under motion.
        extent = 22.0 if i < 3 else 52.0
        colour = names[int(rng.integers(len(names)))]
        while colour == background:
            colour = names[int(rng.integers(len(names)))]
        shapes.append(
            _Shape(
                kind=SHAPES[int(rng.integers(len(SHAPES)))],
                colour_name=colour,
                centre=(float(rng.uniform(-extent, extent)), float(rng.uniform(-extent, extent))),
                radius=float(rng.uniform(6.0, 13.0)),
                angle=float(rng.uniform(0.0, math.pi)),
                stripe_period=float(rng.uniform(6.0, 12.0)),
            )
        )
    return Scene(seed=seed, background_name=background, waves=waves, shapes=tuple(shapes))


def scene_coordinates(motion: Motion, t: float, size: int = 64) -> tuple[np.ndarray, np.ndarray, float]:
    """Where every pixel of frame ``t`` of a ``size``-pixel frame under ``motion`` comes from in the scene:
    ``(qx, qy)``, each ``(size, size)``, and one output pixel in scene units (the anti-aliasing width)."""
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size={size!r} must be an integer >= 8")
    unit = 64.0 / size  # one output pixel in scene units
    coords = (np.arange(size, dtype=np.float64) + 0.5 - size / 2.0) * unit
    px, py = np.meshgrid(coords, coords, indexing="xy")
    matrix, offset = motion.affine(t, size=64)
    inverse = np.linalg.inv(matrix)
    rx, ry = px - offset[0], py - offset[1]
    qx = inverse[0, 0] * rx + inverse[0, 1] * ry
    qy = inverse[1, 0] * rx + inverse[1, 1] * ry
    scale = math.sqrt(abs(np.linalg.det(matrix)))  # zooming in makes one output pixel smaller in the scene
    return qx, qy, unit / scale


def render_frame(scene: Scene, motion: Motion, t: float, size: int = 64) -> np.ndarray:
    """Frame ``t`` of ``scene`` under ``motion``: ``(size, size, 3)`` ``uint8`` (frame 0 is the scene itself)."""
    return np.rint(scene.render(*scene_coordinates(motion, t, size))).astype(np.uint8)


def render_clip(scene: Scene, motion: Motion, num_frames: int = 8, size: int = 64) -> np.ndarray:
    """The exact frames of ``scene`` under ``motion``: ``(num_frames, size, size, 3)`` ``uint8``; frame 0 is the
    scene itself."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be an integer >= 1")
    return np.stack([render_frame(scene, motion, t, size) for t in range(num_frames)])

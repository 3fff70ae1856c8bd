"""MotionWorld motions: constant-velocity similarity motions of the whole scene, and their named catalogue.

A :class:`Motion` moves every scene point ``q`` (pixels, ``(x, y)`` with ``y`` growing downwards, measured from the
frame centre) to ``p_t = s**t * R(a * t) @ q + t * v`` in frame ``t``: a zoom by ``s`` per frame, a turn by ``a``
degrees per frame (positive = clockwise on screen, because ``y`` points down) and a drift of ``v`` pixels per frame.
Speeds are given for a 64-pixel frame and scale with the frame size. The sum of two motions adds their velocities,
log-zooms and angles (what "right + down" means), so any mix is again a :class:`Motion` whose ground truth is known.

Directions are angles in degrees on screen: 0 = right, 90 = down, 180 = left, 270 = up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DIRECTIONS", "Motion", "NAMED_MOTIONS", "SPEEDS", "get_motion", "sample_generic_motion", "sample_rich_motion"]

# The eight compass directions (degrees on screen) and three speeds (pixels per frame at 64 px).
DIRECTIONS = {
    "right": 0.0,
    "down_right": 45.0,
    "down": 90.0,
    "down_left": 135.0,
    "left": 180.0,
    "up_left": 225.0,
    "up": 270.0,
    "up_right": 315.0,
}
SPEEDS = {"slow": 1.0, "": 2.0, "fast": 3.0}
ZOOM_PER_FRAME = 1.04
DEGREES_PER_FRAME = 4.0


@dataclass(frozen=True)
class Motion:
    """A constant-velocity similarity motion (see the module docstring).

    Attributes:
        vx, vy: drift in pixels per frame at 64 px (``+x`` right, ``+y`` down).
        log_zoom: natural log of the zoom factor per frame (> 0 zooms in: the scene grows).
        degrees: turn per frame in degrees (> 0 clockwise on screen).
    """

    vx: float = 0.0
    vy: float = 0.0
    log_zoom: float = 0.0
    degrees: float = 0.0

    def __post_init__(self):
        for field in ("vx", "vy", "log_zoom", "degrees"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Motion.{field}={value!r} must be a finite number")

    def __add__(self, other: Motion) -> Motion:
        return Motion(
            self.vx + other.vx, self.vy + other.vy, self.log_zoom + other.log_zoom, self.degrees + other.degrees
        )

    def scaled(self, factor: float) -> Motion:
        return Motion(self.vx * factor, self.vy * factor, self.log_zoom * factor, self.degrees * factor)

    @property
    def speed(self) -> float:
        """Drift in pixels per frame at 64 px."""
        return math.hypot(self.vx, self.vy)

    @property
    def direction(self) -> float:
        """Drift direction in degrees on screen, in ``[0, 360)`` (0 = right, 90 = down)."""
        return math.degrees(math.atan2(self.vy, self.vx)) % 360.0

    def affine(self, t: float, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` with ``p_t = A @ q + b`` (centred pixel coordinates ``(x, y)``) for a ``size``-pixel frame."""
        scale = math.exp(self.log_zoom * t)
        angle = math.radians(self.degrees * t)
        c, s = math.cos(angle), math.sin(angle)
        matrix = scale * np.array([[c, -s], [s, c]])
        unit = size / 64.0
        return matrix, np.array([self.vx * t * unit, self.vy * t * unit])

    def describe(self) -> str:
        parts = []
        if self.speed > 1e-9:
            parts.append(f"drift {self.speed:.2f} px/frame at {self.direction:.0f} deg")
        if abs(self.log_zoom) > 1e-9:
            parts.append(f"zoom x{math.exp(self.log_zoom):.3f}/frame")
        if abs(self.degrees) > 1e-9:
            parts.append(f"turn {self.degrees:+.2f} deg/frame")
        return ", ".join(parts) or "static"


def _translation(direction_degrees: float, speed: float) -> Motion:
    angle = math.radians(direction_degrees)
    return Motion(vx=speed * math.cos(angle), vy=speed * math.sin(angle))


def _catalogue() -> dict[str, Motion]:
    motions = {"static": Motion()}
    for name, direction in DIRECTIONS.items():
        for speed_name, speed in SPEEDS.items():
            motions[f"{name}_{speed_name}" if speed_name else name] = _translation(direction, speed)
    motions["zoom_in"] = Motion(log_zoom=math.log(ZOOM_PER_FRAME))
    motions["zoom_out"] = Motion(log_zoom=-math.log(ZOOM_PER_FRAME))
    motions["rotate_cw"] = Motion(degrees=DEGREES_PER_FRAME)
    motions["rotate_ccw"] = Motion(degrees=-DEGREES_PER_FRAME)
    return motions


# name -> Motion: "static", "right", "right_slow", "right_fast", ... (8 directions x 3 speeds), "zoom_in",
# "zoom_out", "rotate_cw", "rotate_ccw". Sums of two: get_motion("right+zoom_in").
NAMED_MOTIONS: dict[str, Motion] = _catalogue()


def get_motion(name: str) -> Motion:
    """The named motion, or a sum of named motions written ``"a+b"`` (e.g. ``"right+down"``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"motion name must be a non-empty string, got {name!r}")
    total = Motion()
    for part in name.split("+"):
        if part not in NAMED_MOTIONS:
            raise ValueError(f"unknown motion {part!r} in {name!r}; known: {', '.join(NAMED_MOTIONS)} (sum with '+')")
        total = total + NAMED_MOTIONS[part]
    return total


def sample_generic_motion(rng: np.random.Generator) -> Motion:
    """One motion of the pretraining mix: no preferred direction, speed, zoom sign or turn sign.

    15% static, 40% a drift (uniform direction, speed U[0.5, 3]), 12% zoom (in or out, U[1.01, 1.05]/frame),
    12% turn (either way, U[1.5, 5] deg/frame), 21% the sum of two of these non-static motions.
    """
    kind = rng.choice(["static", "drift", "zoom", "turn", "sum"], p=[0.15, 0.40, 0.12, 0.12, 0.21])
    if kind == "static":
        return Motion()
    if kind == "sum":
        return _single(rng, rng.choice(["drift", "zoom", "turn"])) + _single(rng, rng.choice(["drift", "zoom", "turn"]))
    return _single(rng, kind)


def sample_rich_motion(rng: np.random.Generator) -> Motion:
    """One motion of the Wan world base's pretraining mix: as :func:`sample_generic_motion` (no preferred direction,
    zoom sign or turn sign) but with zoom and rotation as common as drift and as strong as the named ones.

    The UNet base learned from the generic mix (12% zoom, 12% turn, mostly weaker than ``zoom_in`` / ``rotate_cw``)
    never zooms or turns by itself, so few-shot adapters had nothing to steer (benchmarks/motion_world/README.md).
    Here: 10% static, 26% drift, 24% zoom (U[1.02, 1.06]/frame), 24% turn (U[2, 6] deg/frame), 16% the sum of two.
    """
    kind = rng.choice(["static", "drift", "zoom", "turn", "sum"], p=[0.10, 0.26, 0.24, 0.24, 0.16])
    if kind == "static":
        return Motion()
    if kind == "sum":
        kinds = rng.choice(["drift", "zoom", "turn"], size=2)
        return _single(rng, kinds[0], strong=True) + _single(rng, kinds[1], strong=True)
    return _single(rng, kind, strong=True)


def _single(rng: np.random.Generator, kind: str, strong: bool = False) -> Motion:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "drift":
        return _translation(rng.uniform(0.0, 360.0), rng.uniform(0.5, 3.0))
    if kind == "zoom":
        return Motion(log_zoom=sign * math.log(rng.uniform(*((1.02, 1.06) if strong else (1.01, 1.05)))))
    return Motion(degrees=sign * rng.uniform(*((2.0, 6.0) if strong else (1.5, 5.0))))

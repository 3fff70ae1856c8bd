"""Motion metrics for MotionWorld videos: the estimated motion, its class, and fidelity to the ground truth.

:func:`estimate_motion` fits, for every frame ``t``, the similarity transform (shift, zoom, turn about the frame
centre) that best maps frame 0 onto frame ``t`` (phase correlation for the starting shift, then a few hundred Adam
steps on the masked MSE of the warped frame 0, from several starting zooms and turns), and summarises the video as
one constant-velocity :class:`~miva.world.motions.Motion` (least-squares rates through the origin).
:func:`motion_class` names the dominant component ("static", one of the 8 directions, "zoom_in"/"zoom_out",
"rotate_cw"/"rotate_ccw"). :func:`evaluate_video` compares a generated video of a scene with the ground truth of a
target motion: class, direction / speed / zoom / turn errors, PSNR and SSIM of frames 1..F-1, and frame-0 PSNR.

All videos are ``(F, H, W, 3)`` ``uint8`` (or float in [0, 255]); sizes in the results are pixels per frame of a
64-pixel frame, angles in degrees on screen (0 = right, 90 = down, positive turns clockwise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .motions import DIRECTIONS, Motion
from .scenes import Scene, render_clip

__all__ = [
    "FrameMotion",
    "direction_spread",
    "drift_along",
    "estimate_motion",
    "evaluate_video",
    "motion_class",
    "psnr",
    "ssim",
]

# A component moves a point at the typical radius (20 px of a 64-px frame) by this many pixels per frame or less:
# below STATIC_PX for every component, the video is "static".
_RADIUS = 20.0
STATIC_PX = 0.35


@dataclass
class FrameMotion:
    """Per-frame fit (frame t relative to frame 0) and the constant-velocity summary."""

    shifts: np.ndarray  # (F, 2): (dx, dy) in pixels of a 64-px frame
    log_zooms: np.ndarray  # (F,)
    degrees: np.ndarray  # (F,)
    residual: np.ndarray  # (F,) masked RMS error of the fit, in [0, 255] units
    summary: Motion


def _to_float(video) -> torch.Tensor:
    """``(F, H, W, 3)`` -> ``(F, 3, H, W)`` float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(video), dtype=torch.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"video must have shape (frames, height, width, 3), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("video has non-finite values")
    return x.permute(0, 3, 1, 2) / 255.0


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _phase_correlation(reference: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
    """Integer ``(dx, dy)`` such that ``moved(p) ~ reference(p - d)`` (grey images ``(H, W)``)."""
    window = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1]))
    a = np.fft.fft2((reference - reference.mean()) * window)
    b = np.fft.fft2((moved - moved.mean()) * window)
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-9
    peak = np.unravel_index(np.argmax(np.real(np.fft.ifft2(cross))), reference.shape)
    dy, dx = (p if p <= s // 2 else p - s for p, s in zip(peak, reference.shape))
    return float(dx), float(dy)


def _warp(frame0: torch.Tensor, params: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``frame0 (1, 3, H, W)`` by ``params (N, 4)`` = (dx, dy in pixels, log zoom, radians).

    Screen point ``p`` (centred pixels) shows frame-0 point ``A^-1 (p - b)``. Returns the warped frames
    ``(N, 3, H, W)`` and the mask ``(N, 1, H, W)`` of points whose source lies inside frame 0.
    """
    height, width = size
    n = params.shape[0]
    dx, dy, log_zoom, angle = params.unbind(-1)
    inv_scale = torch.exp(-log_zoom)
    c, s = torch.cos(angle), torch.sin(angle)
    ys = (torch.arange(height, dtype=params.dtype) + 0.5 - height / 2).view(1, height, 1).expand(n, height, width)
    xs = (torch.arange(width, dtype=params.dtype) + 0.5 - width / 2).view(1, 1, width).expand(n, height, width)
    rx, ry = xs - dx.view(n, 1, 1), ys - dy.view(n, 1, 1)
    # A^-1 = R(-angle) / zoom
    qx = inv_scale.view(n, 1, 1) * (c.view(n, 1, 1) * rx + s.view(n, 1, 1) * ry)
    qy = inv_scale.view(n, 1, 1) * (-s.view(n, 1, 1) * rx + c.view(n, 1, 1) * ry)
    grid = torch.stack([qx * 2 / width, qy * 2 / height], dim=-1)
    warped = F.grid_sample(frame0.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    inside = ((grid.abs() <= 1.0).all(dim=-1)).unsqueeze(1).to(warped.dtype)
    return warped, inside


def estimate_motion(video, iterations: int = 80) -> FrameMotion:
    """Fit the motion of ``video`` (see the module docstring). Deterministic."""
    x = _blur(_to_float(video))
    frames, _, height, width = x.shape
    unit = width / 64.0
    grey = x.mean(1).numpy()
    # Starting points per frame: no zoom or turn, or the catalogue's zoom / turn rate either way.
    starts = ((0.0, 0.0), (0.04, 0.0), (-0.04, 0.0), (0.0, math.radians(4.0)), (0.0, -math.radians(4.0)))
    rows, owners = [], []
    for t in range(frames):
        dx, dy = _phase_correlation(grey[0], grey[t])
        for zoom, turn in starts:
            rows.append([dx, dy, zoom * t, turn * t])
            owners.append(t)
    params = torch.tensor(rows, dtype=torch.float32, requires_grad=True)
    owner = torch.tensor(owners)
    targets = x[owner]
    optimizer = torch.optim.Adam([params], lr=0.03)
    scale = torch.tensor([unit * 20.0, unit * 20.0, 1.0, 1.0])  # shifts move in pixels, zoom/turn in units of 1
    with torch.no_grad():
        params /= scale
    for _ in range(iterations):
        warped, mask = _warp(x[:1], params * scale, (height, width))
        err = ((warped - targets) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)) + 1.0)
        optimizer.zero_grad()
        err.sum().backward()
        optimizer.step()
    with torch.no_grad():
        final = params * scale
        warped, mask = _warp(x[:1], final, (height, width))
        err = ((warped - targets) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)) + 1.0)
    best = np.zeros((frames, 4))
    residual = np.zeros(frames)
    for t in range(frames):
        candidates = (owner == t).nonzero().flatten()
        pick = candidates[err[candidates].argmin()]
        best[t] = final[pick].numpy()
        residual[t] = 255.0 * math.sqrt(float(err[pick]))
    best[0] = 0.0
    shifts = best[:, :2] / unit
    times = np.arange(frames, dtype=np.float64)
    denominator = max(float((times**2).sum()), 1e-9)

    def rate(values: np.ndarray) -> float:
        return float((times * values).sum() / denominator)

    summary = Motion(vx=rate(shifts[:, 0]), vy=rate(shifts[:, 1]), log_zoom=rate(best[:, 2]),
                     degrees=math.degrees(rate(best[:, 3])))
    return FrameMotion(shifts, best[:, 2], np.degrees(best[:, 3]), residual, summary)


def motion_class(motion: Motion) -> str:
    """The dominant component of ``motion``: ``"static"``, a direction name (``"right"``, ``"down_left"``, ...),
    ``"zoom_in"``/``"zoom_out"`` or ``"rotate_cw"``/``"rotate_ccw"``."""
    components = {
        "drift": motion.speed,
        "zoom": abs(motion.log_zoom) * _RADIUS,
        "turn": abs(math.radians(motion.degrees)) * _RADIUS,
    }
    kind = max(components, key=components.get)
    if components[kind] < STATIC_PX:
        return "static"
    if kind == "zoom":
        return "zoom_in" if motion.log_zoom > 0 else "zoom_out"
    if kind == "turn":
        return "rotate_cw" if motion.degrees > 0 else "rotate_ccw"
    return min(DIRECTIONS, key=lambda name: _angle_between(DIRECTIONS[name], motion.direction))


def drift_along(found: Motion, target: Motion) -> float | None:
    """The drift of ``found`` along the target's drift direction in px/frame (negative: the opposite way), i.e. how
    fast a video moves the way it should; ``None`` when the target does not drift. Unlike ``speed`` it does not
    count motion in other directions, so it measures an adapter's strength on a base that moves at random."""
    if target.speed == 0:
        return None
    return (found.vx * target.vx + found.vy * target.vy) / target.speed


def _angle_between(a: float, b: float) -> float:
    """Smallest absolute difference of two angles in degrees, in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def psnr(a, b) -> float:
    """PSNR in dB of two images/videos in [0, 255] (same shape)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a, b) -> float:
    """Mean SSIM (Gaussian window, sigma 1.5, on each RGB channel) of two ``(F, H, W, 3)`` videos in [0, 255]."""
    x, y = _to_float(a) * 255.0, _to_float(b) * 255.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _blur(x, 1.5), _blur(y, 1.5)
    var_x = _blur(x * x, 1.5) - mu_x**2
    var_y = _blur(y * y, 1.5) - mu_y**2
    cov = _blur(x * y, 1.5) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(value.mean())


def evaluate_video(video, scene: Scene, target: Motion, image=None) -> dict:
    """Score a generated ``video`` of ``scene`` against the ground truth of ``target``.

    Returns a dict: ``class`` / ``target_class`` / ``class_correct``, ``direction_error`` (degrees; translation
    targets and drifting videos only, else ``None``), ``speed`` / ``speed_error`` (px/frame at 64 px),
    ``drift_along_target`` (:func:`drift_along`), ``zoom_error`` (log zoom per frame), ``turn_error`` (degrees per
    frame), ``psnr`` / ``ssim`` of frames 1..F-1 against the ground truth, ``frame0_psnr`` against ``image``
    (default: the ground truth's frame 0), and the fitted ``motion``.
    """
    video = np.asarray(video)
    frames, height, width = video.shape[:3]
    if height != width:
        raise ValueError(f"MotionWorld videos are square, got {height}x{width}")
    truth = render_clip(scene, target, frames, width)
    fit = estimate_motion(video)
    found = fit.summary
    target_class = motion_class(target)
    translation = target.speed > 0 and target_class in DIRECTIONS
    reference0 = truth[0] if image is None else np.asarray(image)
    return {
        "class": motion_class(found),
        "target_class": target_class,
        "class_correct": motion_class(found) == target_class,
        "direction": found.direction if found.speed > 0 else None,
        # A video with no drift at all has no direction to be wrong about (not the 0 deg of atan2(0, 0)).
        "direction_error": _angle_between(found.direction, target.direction) if translation and found.speed > 0
        else None,
        "speed": found.speed,
        "speed_error": abs(found.speed - target.speed),
        "drift_along_target": drift_along(found, target),
        "zoom_error": abs(found.log_zoom - target.log_zoom),
        "turn_error": abs(found.degrees - target.degrees),
        "psnr": psnr(video[1:], truth[1:]) if frames > 1 else None,
        "ssim": ssim(video[1:], truth[1:]) if frames > 1 else None,
        "frame0_psnr": psnr(video[0], reference0),
        "motion": asdict(found),
    }


def direction_spread(directions: list[float]) -> dict:
    """Circular statistics of drift directions (degrees): ``mean`` direction and ``resultant`` length R in [0, 1]
    (1 = all the same direction, about ``1/sqrt(n)`` for ``n`` directions drawn at random)."""
    if not directions:
        return {"n": 0, "mean": None, "resultant": None}
    angles = np.radians(np.asarray(directions, dtype=np.float64))
    c, s = np.cos(angles).mean(), np.sin(angles).mean()
    return {"n": len(directions), "mean": float(math.degrees(math.atan2(s, c)) % 360.0),
            "resultant": float(math.hypot(c, s))}

"""Motion metrics for MotionWorld videos: the estimated motion, its class, and fidelity to the ground truth.

:func:`estimate_motion` fits, for every frame ``t``, the similarity transform (shift, zoom, turn about the frame
centre) that best maps frame 0 onto frame ``t`` (phase correlation for the starting shift, then a few hundred Adam
steps on the masked MSE of the warped frame 0, from several starting zooms and turns), and summarises the video as
one constant-velocity :class:`~miva.world.motions.Motion` (least-squares rates through the origin).
:func:`motion_class` names the dominant component ("static", one of the 8 directions, "zoom_in"/"zoom_out",
"rotate_cw"/"rotate_ccw"). :func:`evaluate_video` compares a generated video of a scene with the ground truth of a
target motion: class, direction / speed / zoom / turn errors, PSNR and SSIM of frames 1..F-1, frame-0 PSNR and
the :func:`coherent_length`. Each takes optional ``weights`` (a mask ``(H, W)`` or ``(F, H, W)`` in [0, 1]): the fit and
the scores then count each pixel by its weight, which is how a region's motion is measured
(:mod:`miva.world.regions`); weights of all ones give exactly the unweighted numbers.

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
    "coherent_length",
    "direction_spread",
    "drift_along",
    "estimate_motion",
    "evaluate_video",
    "motion_class",
    "psnr",
    "score_video",
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


def _weights(weights, frames: int, height: int, width: int) -> np.ndarray:
    """``None`` (every pixel counts fully), ``(H, W)`` or ``(F, H, W)`` in [0, 1] -> ``(F, H, W)`` float32."""
    if weights is None:
        return np.ones((frames, height, width), dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape not in ((height, width), (frames, height, width)):
        raise ValueError(f"weights must have shape ({height}, {width}) or ({frames}, {height}, {width}) to match the "
                         f"video, got {w.shape}")
    if not np.isfinite(w).all() or w.min() < 0.0 or w.max() > 1.0:
        raise ValueError(f"weights must be finite and in [0, 1], got values in [{w.min()}, {w.max()}]")
    return np.broadcast_to(w, (frames, height, width)).copy()


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _phase_correlation(reference: np.ndarray, moved: np.ndarray, w_reference: np.ndarray,
                       w_moved: np.ndarray) -> tuple[float, float]:
    """Integer ``(dx, dy)`` such that ``moved(p) ~ reference(p - d)`` (grey images ``(H, W)``, each with its
    weights ``(H, W)``: each image is centred on its weighted mean and multiplied by its weights)."""
    window = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1]))

    def centred(image: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (image - (image * w).sum() / max(float(w.sum()), 1e-9)) * w

    a = np.fft.fft2(centred(reference, w_reference) * window)
    b = np.fft.fft2(centred(moved, w_moved) * window)
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-9
    peak = np.unravel_index(np.argmax(np.real(np.fft.ifft2(cross))), reference.shape)
    dy, dx = (p if p <= s // 2 else p - s for p, s in zip(peak, reference.shape))
    return float(dx), float(dy)


def _warp(frame0: torch.Tensor, params: torch.Tensor, size: tuple[int, int],
          centre: tuple[float, float] = (0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``frame0 (1, 3, H, W)`` by ``params (N, 4)`` = (dx, dy in pixels, log zoom, radians) about ``centre``
    ``c`` (centred pixels; default the frame centre).

    Screen point ``p`` (centred pixels) shows frame-0 point ``c + A^-1 (p - c - b)``. Returns the warped frames
    ``(N, 3, H, W)`` and the mask ``(N, 1, H, W)`` of points whose source lies inside frame 0.
    """
    height, width = size
    n = params.shape[0]
    dx, dy, log_zoom, angle = params.unbind(-1)
    inv_scale = torch.exp(-log_zoom)
    c, s = torch.cos(angle), torch.sin(angle)
    ys = (torch.arange(height, dtype=params.dtype) + 0.5 - height / 2).view(1, height, 1).expand(n, height, width)
    xs = (torch.arange(width, dtype=params.dtype) + 0.5 - width / 2).view(1, 1, width).expand(n, height, width)
    rx, ry = xs - centre[0] - dx.view(n, 1, 1), ys - centre[1] - dy.view(n, 1, 1)
    # A^-1 = R(-angle) / zoom
    qx = inv_scale.view(n, 1, 1) * (c.view(n, 1, 1) * rx + s.view(n, 1, 1) * ry) + centre[0]
    qy = inv_scale.view(n, 1, 1) * (-s.view(n, 1, 1) * rx + c.view(n, 1, 1) * ry) + centre[1]
    grid = torch.stack([qx * 2 / width, qy * 2 / height], dim=-1)
    warped = F.grid_sample(frame0.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    inside = ((grid.abs() <= 1.0).all(dim=-1)).unsqueeze(1).to(warped.dtype)
    return warped, inside


def _refine(x: torch.Tensor, rows: torch.Tensor, owner: torch.Tensor, target_w: torch.Tensor, source_w, iterations: int,
            centre: tuple[float, float]):
    """Adam on the weighted MSE of frame 0 warped by each row ``(N, 4)`` against frame ``owner[n]``; returns the
    refined rows and their errors ``(N,)``."""
    _, _, height, width = x.shape
    targets = x[owner]
    unit = width / 64.0
    scale = torch.tensor([unit * 20.0, unit * 20.0, 1.0, 1.0])  # shifts move in pixels, zoom/turn in units of 1
    params = (rows / scale).requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=0.03)

    def error(p: torch.Tensor) -> torch.Tensor:
        warped, mask = _warp(x[:1], p, (height, width), centre)
        mask = mask * target_w
        if source_w is not None:
            mask = mask * _warp(source_w, p.detach(), (height, width), centre)[0]
        return ((warped - targets) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)) + 1.0)

    for _ in range(iterations):
        err = error(params * scale)
        optimizer.zero_grad()
        err.sum().backward()
        optimizer.step()
    with torch.no_grad():
        final = params * scale
        return final, error(final)


def _pick(final: torch.Tensor, err: torch.Tensor, owner: torch.Tensor, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's best row ``(F, 4)`` and its RMS residual ``(F,)`` in [0, 255] units."""
    best = np.zeros((frames, 4))
    residual = np.zeros(frames)
    for t in range(frames):
        candidates = (owner == t).nonzero().flatten()
        pick = candidates[err[candidates].argmin()]
        best[t] = final[pick].numpy()
        residual[t] = 255.0 * math.sqrt(float(err[pick]))
    best[0] = 0.0
    return best, residual


def estimate_motion(video, iterations: int = 80, weights=None) -> FrameMotion:
    """Fit the motion of ``video`` (see the module docstring). Deterministic.

    ``weights`` (``(H, W)`` or ``(F, H, W)`` in [0, 1], default all ones) weigh the pixels of frame ``t`` in the fit
    of frame ``t``'s transform (and frame 0's in the starting shift): a region's mask measures that region's motion.
    Frames whose weights are all zero (the region has left the frame) are left out of the summary's rates."""
    x = _blur(_to_float(video))
    frames, _, height, width = x.shape
    w = _weights(weights, frames, height, width)
    unit = width / 64.0
    grey = x.mean(1).numpy()
    # Starting points per frame: no zoom or turn, or the catalogue's zoom / turn rate either way.
    starts = ((0.0, 0.0), (0.04, 0.0), (-0.04, 0.0), (0.0, math.radians(4.0)), (0.0, -math.radians(4.0)))
    rows, owners = [], []
    for t in range(frames):
        dx, dy = _phase_correlation(grey[0], grey[t], w[0], w[t])
        for zoom, turn in starts:
            rows.append([dx, dy, zoom * t, turn * t])
            owners.append(t)
    owner = torch.tensor(owners)
    target_w = torch.from_numpy(w)[owner].unsqueeze(1)  # (N, 1, H, W): frame t's pixels by their weight
    # A pixel of frame t counts by its own weight and, for a region, by its source's weight in frame 0 (so that
    # what the region uncovers, which came from another region, does not count); all-ones weights skip this.
    source_w = torch.from_numpy(w[:1]).unsqueeze(1) if w[0].min() < 1.0 else None
    # Zoom and turn are fitted about the weighted centre of frame 0 (the frame centre for uniform weights): about
    # the frame centre, a small off-centre region's drift and zoom would be nearly the same warp.
    coords = (np.arange(width, dtype=np.float64) + 0.5 - width / 2, np.arange(height, dtype=np.float64) + 0.5 - height / 2)
    total = max(float(w[0].sum()), 1e-9)
    centre = (float((w[0].sum(0) * coords[0]).sum() / total), float((w[0].sum(1) * coords[1]).sum() / total))
    final, err = _refine(x, torch.tensor(rows, dtype=torch.float32), owner, target_w, source_w, iterations, centre)
    best, residual = _pick(final, err, owner, frames)
    if w.min() < 1.0:
        # A masked phase correlation is less reliable (the mask's own edges correlate), and a start far off sends
        # the fit astray: a region is fitted a second time from the constant-velocity path through the median
        # per-frame rate of the first fit, and each frame keeps the better of its two fits.
        times = np.arange(1, frames, dtype=np.float64)[:, None]
        rates = np.median(best[1:] / times, axis=0) if frames > 1 else np.zeros(4)
        again = np.arange(frames, dtype=np.float64)[:, None] * rates[None, :]
        final2, err2 = _refine(x, torch.tensor(again, dtype=torch.float32), torch.arange(frames),
                               target_w[:: len(starts)], source_w, iterations, centre)
        best2, residual2 = _pick(final2, err2, torch.arange(frames), frames)
        better = residual2 < residual
        best[better], residual[better] = best2[better], residual2[better]
    # back to the frame centre: p = A (q - c) + c + b = A q + (b + c - A c)
    zooms, angles = np.exp(best[:, 2]), best[:, 3]
    cx, cy = centre
    best[:, 0] += cx - zooms * (np.cos(angles) * cx - np.sin(angles) * cy)
    best[:, 1] += cy - zooms * (np.sin(angles) * cx + np.cos(angles) * cy)
    shifts = best[:, :2] / unit
    times = np.arange(frames, dtype=np.float64) * (w.reshape(frames, -1).max(axis=1) > 0)
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


def psnr(a, b, weights=None) -> float:
    """PSNR in dB of two images/videos in [0, 255] (same shape). ``weights`` (the shape of ``a`` without its
    channel axis, in [0, 1]) count each pixel by its weight: the PSNR of a region."""
    diff2 = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2
    if weights is None:
        mse = float(np.mean(diff2))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != diff2.shape[:-1]:
            raise ValueError(f"weights must have shape {diff2.shape[:-1]} (the images without channels), got {w.shape}")
        total = float(w.sum())
        if total <= 0:
            raise ValueError("weights are all zero: the region has no pixel to score")
        mse = float(np.sum(diff2 * w[..., None])) / (total * diff2.shape[-1])
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a, b, weights=None) -> float:
    """Mean SSIM (Gaussian window, sigma 1.5, on each RGB channel) of two ``(F, H, W, 3)`` videos in [0, 255];
    with ``weights`` ``(F, H, W)`` the SSIM map's mean weighted by them."""
    x, y = _to_float(a) * 255.0, _to_float(b) * 255.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _blur(x, 1.5), _blur(y, 1.5)
    var_x = _blur(x * x, 1.5) - mu_x**2
    var_y = _blur(y * y, 1.5) - mu_y**2
    cov = _blur(x * y, 1.5) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if weights is None:
        return float(value.mean())
    w = torch.from_numpy(_weights(weights, *value.shape[:1], *value.shape[2:])).unsqueeze(1).double()
    return float((value.double() * w).sum() / (w.sum() * value.shape[1]))


def coherent_length(video, truth, still=None, weights=None) -> int:
    """How many frames ``video`` keeps the scene: the first frame index ``t >= 1`` at which the PSNR of
    ``video[t]`` against ``truth[t]`` falls to (<=) that of the still frame against ``truth[t]``, or ``F`` (the clip
    length) if it never does (a frame equal to its truth never falls). The still frame is ``still`` (an ``(H, W, 3)`` image; default the video's own frame
    0, which carries the same autoencoder loss as the video); frame 0 is not judged (there the still is frame 0).
    ``video`` and ``truth`` are ``(F, H, W, 3)`` in [0, 255]; ``weights`` (``(H, W)`` or ``(F, H, W)``) score a
    region."""
    video, truth = np.asarray(video), np.asarray(truth)
    if video.shape != truth.shape or video.ndim != 4:
        raise ValueError(f"video and truth must both have shape (frames, height, width, 3), got {video.shape} and "
                         f"{truth.shape}")
    frames, height, width = video.shape[:3]
    w = None if weights is None else _weights(weights, frames, height, width)
    still = video[0] if still is None else np.asarray(still)
    for t in range(1, frames):
        wt = None if w is None else w[t]
        score = psnr(video[t], truth[t], wt)
        if score <= psnr(still, truth[t], wt) and score != math.inf:  # a video equal to the truth never falls
            return t
    return frames


def score_video(video, truth, target: Motion, image=None, weights=None) -> dict:
    """Score ``video`` against its ground truth ``truth`` (both ``(F, H, W, 3)``), made by ``target``: the dict of
    :func:`evaluate_video`. ``weights`` (``(H, W)`` or ``(F, H, W)`` in [0, 1]) restrict the fit and every score to
    a region (frame-0 PSNR by the weights of frame 0); all ones give exactly the unweighted scores."""
    video, truth = np.asarray(video), np.asarray(truth)
    frames, height, width = video.shape[:3]
    if truth.shape != video.shape:
        raise ValueError(f"truth must have the video's shape {video.shape}, got {truth.shape}")
    w = None if weights is None else _weights(weights, frames, height, width)
    fit = estimate_motion(video, weights=w)
    found = fit.summary
    target_class = motion_class(target)
    translation = target.speed > 0 and target_class in DIRECTIONS
    reference0 = truth[0] if image is None else np.asarray(image)
    later = None if w is None else w[1:]
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
        "psnr": psnr(video[1:], truth[1:], later) if frames > 1 else None,
        "ssim": ssim(video[1:], truth[1:], later) if frames > 1 else None,
        "frame0_psnr": psnr(video[0], reference0, None if w is None else w[0]),
        "coherent_length": coherent_length(video, truth, weights=w),
        # PSNR of each frame 1..F-1 against its truth and of the still frame 0 (how the coherent length is read)
        "frame_psnr": [psnr(video[t], truth[t], None if w is None else w[t]) for t in range(1, frames)],
        "still_psnr": [psnr(video[0], truth[t], None if w is None else w[t]) for t in range(1, frames)],
        "motion": asdict(found),
    }


def evaluate_video(video, scene: Scene, target: Motion, image=None) -> dict:
    """Score a generated ``video`` of ``scene`` against the ground truth of ``target``.

    Returns a dict: ``class`` / ``target_class`` / ``class_correct``, ``direction_error`` (degrees; translation
    targets and drifting videos only, else ``None``), ``speed`` / ``speed_error`` (px/frame at 64 px),
    ``drift_along_target`` (:func:`drift_along`), ``zoom_error`` (log zoom per frame), ``turn_error`` (degrees per
    frame), ``psnr`` / ``ssim`` of frames 1..F-1 against the ground truth, ``frame0_psnr`` against ``image``
    (default: the ground truth's frame 0), ``coherent_length`` (:func:`coherent_length`, frames), the fitted
    ``motion`` and ``own_coherent_length`` (the coherent length against the scene moved by that fitted motion).
    """
    video = np.asarray(video)
    frames, height, width = video.shape[:3]
    if height != width:
        raise ValueError(f"MotionWorld videos are square, got {height}x{width}")
    row = score_video(video, render_clip(scene, target, frames, width), target, image)
    # A base alone moves, but not as the target: how long it keeps the scene is read against the scene moved by the
    # video's own fitted motion.
    row["own_coherent_length"] = coherent_length(video, render_clip(scene, Motion(**row["motion"]), frames, width))
    return row


def direction_spread(directions: list[float]) -> dict:
    """Circular statistics of drift directions (degrees): ``mean`` direction and ``resultant`` length R in [0, 1]
    (1 = all the same direction, about ``1/sqrt(n)`` for ``n`` directions drawn at random)."""
    if not directions:
        return {"n": 0, "mean": None, "resultant": None}
    angles = np.radians(np.asarray(directions, dtype=np.float64))
    c, s = np.cos(angles).mean(), np.sin(angles).mean()
    return {"n": len(directions), "mean": float(math.degrees(math.atan2(s, c)) % 360.0),
            "resultant": float(math.hypot(c, s))}

"""Orthonormal 3-D DCT-II and DCTInit (docs/research.md#sampling): pure torch, cached matrices, no `torch_dct` dependency.

`dct_3d` equals `torch_dct.dct_3d(x, norm="ortho")` over the last three axes of a tensor `(..., frames, height,
width)`; `dct_init` keeps the low spatial frequencies of a base video and the high ones of noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DCT_CUTOFF_SHAPES", "dct_matrix", "dct_3d", "idct_3d", "dct_low_pass_mask", "dct_init"]

DCT_CUTOFF_SHAPES = ("rect", "tri")

_DCT_CACHE: dict[tuple[int, torch.device], Tensor] = {}
_DCT_CACHE_MAX = 32


def dct_matrix(n: int, *, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal DCT-II matrix `(n, n)`: `D[k, i] = s_k cos(pi (2i + 1) k / (2n))`.

    `s_0 = sqrt(1/n)`, `s_k = sqrt(2/n)` for k > 0. Rows are frequencies, so `X = D @ x` is the DCT-II of a
    length-n signal and `x = D.T @ X` its inverse (DCT-III). Built in float64, then cast to `dtype`.
    """
    if n < 1:
        raise ValueError(f"n={n!r} must be >= 1")
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d.to(dtype).to(device)


def _cached_dct_matrix(n: int, device: torch.device) -> Tensor:
    """float32 `dct_matrix(n)` on `device`, cached by (n, device)."""
    key = (n, device)
    d = _DCT_CACHE.get(key)
    if d is None:
        if len(_DCT_CACHE) >= _DCT_CACHE_MAX:
            _DCT_CACHE.clear()
        d = _DCT_CACHE[key] = dct_matrix(n, device=device, dtype=torch.float32)
    return d


def _apply_3d(x: Tensor, inverse: bool) -> Tensor:
    if x.ndim < 3:
        raise ValueError(f"expected a tensor (..., frames, height, width), got shape {tuple(x.shape)}")
    f, h, w = x.shape[-3:]
    d_f, d_h, d_w = (_cached_dct_matrix(n, x.device) for n in (f, h, w))
    # Forward contracts the signal index (columns of D); inverse contracts the frequency index (rows of D).
    sub = "ki" if inverse else "ik"
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = x.float()
        y = torch.einsum(f"{sub},...khw->...ihw", d_f, y)
        y = torch.einsum(f"{sub},...fkw->...fiw", d_h, y)
        y = torch.einsum(f"{sub},...fhk->...fhi", d_w, y)
    return y.to(x.dtype)


def dct_3d(x: Tensor) -> Tensor:
    """Orthonormal 3-D DCT-II over the last three axes.

    Args:
        x: `(..., frames, height, width)`, any float dtype.

    Returns:
        Coefficients `(..., frames, height, width)`, index `[0, 0, 0]` the DC term; computed in float32 and cast
        back to `x.dtype`. Equals `torch_dct.dct_3d(x, norm="ortho")`.
    """
    return _apply_3d(x, inverse=False)


def idct_3d(X: Tensor) -> Tensor:
    """Inverse of `dct_3d` (orthonormal 3-D DCT-III) over the last three axes, `(..., frames, height, width)`."""
    return _apply_3d(X, inverse=True)


def dct_low_pass_mask(
    frames: int,
    height: int,
    width: int,
    cutoff_ratio: float = 0.23,
    shape: str = "rect",
    *,
    device=None,
) -> Tensor:
    """DCTInit low-pass mask `(frames, height, width)`, float32, 1 = keep the base's coefficient.

    Spatial only: every temporal frequency passes. With `cy = int(height * cutoff_ratio)` and
    `cx = int(width * cutoff_ratio)`:
    - "rect": 1 on `[:, :cy, :cx]` (9x14 at 40x64 and 0.23);
    - "tri": 1 where `y / height + x / width < cutoff_ratio`, restricted to that rectangle as in the research
      code (without the restriction, e.g. (9, 0) at 40x64 would pass: 9/40 < 0.23 but 9 >= cy).
    """
    if shape not in DCT_CUTOFF_SHAPES:
        raise ValueError(f"dct_cutoff_shape={shape!r} is not one of {DCT_CUTOFF_SHAPES}")
    if not 0.0 <= cutoff_ratio <= 1.0:
        raise ValueError(f"dct_cutoff_ratio={cutoff_ratio!r} must be in [0, 1]")
    cy, cx = int(height * cutoff_ratio), int(width * cutoff_ratio)
    mask2d = torch.zeros(height, width, dtype=torch.float64)
    if shape == "rect":
        mask2d[:cy, :cx] = 1
    else:
        y = torch.arange(cy, dtype=torch.float64).unsqueeze(1) / height
        x = torch.arange(cx, dtype=torch.float64).unsqueeze(0) / width
        mask2d[:cy, :cx] = ((y + x) < cutoff_ratio).double()
    return mask2d.to(torch.float32).to(device).expand(frames, height, width).contiguous()


def dct_init(base: Tensor, noise: Tensor, cutoff_ratio: float = 0.23, shape: str = "rect") -> Tensor:
    """DCTInit: low spatial frequencies of `base`, high ones of `noise`.

    `idct_3d(LPF * dct_3d(base) + (1 - LPF) * dct_3d(noise))` with `LPF = dct_low_pass_mask(...)` over
    (frames, height, width).

    Args:
        base: `(batch, channels, frames - 1, height, width)`, usually `cinemo_base(...)`.
        noise: same shape, the noise of frames 1..F-1.
        cutoff_ratio: `dct_cutoff_ratio` in [0, 1].
        shape: `dct_cutoff_shape`, "rect" or "tri".

    Returns:
        Same shape as `base`; computed in float32, returned in `base.dtype`.
    """
    if base.shape != noise.shape:
        raise ValueError(f"base {tuple(base.shape)} and noise {tuple(noise.shape)} must have the same shape")
    f, h, w = base.shape[-3:]
    lpf = dct_low_pass_mask(f, h, w, cutoff_ratio, shape, device=base.device)
    base_freq = dct_3d(base.float())
    noise_freq = dct_3d(noise.to(device=base.device, dtype=torch.float32))
    return idct_3d(lpf * base_freq + (1 - lpf) * noise_freq).to(base.dtype)

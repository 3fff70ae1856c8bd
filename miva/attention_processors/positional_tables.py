"""The tables behind the `ca_pe_mode` encodings, as pure functions over tensors (used by `positional.py`).

Sinusoids (`sinusoid_table`, `temporal_table`), rotary angles and rotations (`rotary_angles`, `apply_rotary`,
`rotary_3d`, `rotary_by_frame`), and the small table cache: constant tables are built in float32, cast to the input
dtype and cached in a module-level dict keyed by (kind, sizes, device, dtype), so the denoising loop does not rebuild
them every call.
"""

from __future__ import annotations

import math

import torch

PE_STYLES: tuple[str, ...] = ("standard", "research")

_CACHE_MAX_ENTRIES = 64
_TABLE_CACHE: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}


def normalize_pe_style(style: str) -> str:
    """Check `pe_style` (`"standard"` or `"research"`)."""
    if style not in PE_STYLES:
        raise ValueError(f"pe_style={style!r} is not one of {list(PE_STYLES)}")
    return style


# --------------------------------------------------------------------------------------------------------------------
# table cache


def cached(key: tuple, build):
    """Return the cached table for `key`, building it with `build()` on a miss.

    Tables built under `torch.inference_mode` cannot be saved for backward later, so the inference-mode flag is
    part of the key. Under `torch.compile` the table is built in the graph instead (constant-folded by the
    compiler), which keeps the dict out of the trace.
    """
    if torch.compiler.is_compiling():
        return build()
    key = (*key, torch.is_inference_mode_enabled())
    table = _TABLE_CACHE.get(key)
    if table is None:
        if len(_TABLE_CACHE) >= _CACHE_MAX_ENTRIES:
            _TABLE_CACHE.clear()
        with torch.no_grad():
            table = build()
        _TABLE_CACHE[key] = table
    return table


# --------------------------------------------------------------------------------------------------------------------
# sinusoids


def _sinusoid_frequencies(num: int, dim: int, style: str, *, step: int = 2, device=None) -> torch.Tensor:
    """`(num,)` float32 frequencies `exp(sign * step*i * ln(10000) / dim)`; sign -1 standard, +1 research."""
    sign = -1.0 if normalize_pe_style(style) == "standard" else 1.0
    exponent = torch.arange(0, step * num, step, dtype=torch.float32, device=device)
    return torch.exp(exponent * (sign * math.log(10000.0) / dim))


def sinusoid_table(positions: torch.Tensor, dim: int, style: str) -> torch.Tensor:
    """Sinusoidal table `(N,) -> (N, dim)` float32: `pe[p, 2i] = sin(p w_i)`, `pe[p, 2i+1] = cos(p w_i)`.

    `w_i = 10000^(-2i/dim)` for `style="standard"`, `10000^(+2i/dim)` for `"research"` (the research code's sign).
    An odd `dim` keeps the last sine column without its cosine.
    """
    positions = positions.to(torch.float32)
    freqs = _sinusoid_frequencies((dim + 1) // 2, dim, style, device=positions.device)
    angles = positions[:, None] * freqs[None, :]  # (N, ceil(dim/2))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos
    return table[:, :dim]


def temporal_table(
    num_frames: int,
    dim: int,
    style: str,
    *,
    sine_only: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-frame table `(num_frames, dim)`; row 0 is all zeros (frame 0, the given image, is not shifted).

    `sine_only=False`: rows of :func:`sinusoid_table` at `p = frame index`. `sine_only=True` (`temporal_sine`):
    `pe[f, j] = sin(f w'_j)` with `w'_j = 10000^(-j/dim)` (standard) or `10000^(+j/dim)` (research).
    """
    normalize_pe_style(style)
    positions = torch.arange(num_frames, dtype=torch.float32, device=device)
    if sine_only:
        freqs = _sinusoid_frequencies(dim, dim, style, step=1, device=device)
        table = torch.sin(positions[:, None] * freqs[None, :])
    else:
        table = sinusoid_table(positions, dim, style)
    table[0] = 0.0
    return table.to(dtype) if dtype is not None else table


# --------------------------------------------------------------------------------------------------------------------
# rotary


def rotary_angles(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary `(cos, sin)`, each `(N, dim)` float32, for positions `(N,)`.

    Frequencies `theta^(-2k/dim)`, k = 0..dim/2-1, each duplicated on the interleaved channel pair (2k, 2k+1).
    """
    if dim % 2 != 0:
        raise ValueError(f"rotary needs an even number of channels, got dim={dim}")
    positions = positions.to(torch.float32)
    exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim
    inv_freq = theta**-exponent  # (dim/2,)
    angles = (positions[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)  # (N, dim)
    return angles.cos(), angles.sin()


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs `(a, b) -> (-b, a)`."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs: `(a, b) -> (a cos - b sin, b cos + a sin)`.

    `x (..., N, dim)`; `cos`, `sin` `(N, dim)` (or anything broadcastable to `x`).
    """
    return x * cos + _rotate_pairs(x) * sin


def _rotary_1d_tables(positions_key: tuple, positions_fn, dim: int, device, dtype):
    def build():
        cos, sin = rotary_angles(positions_fn(), dim)
        return cos.to(dtype), sin.to(dtype)

    return cached(("rotary_1d", *positions_key, dim, device, dtype), build)


def _rotary_3d_tables(frames: int, rows: int, cols: int, channels: int, device, dtype):
    """cos, sin `(frames, rows, cols, 3*channels/4)`: frame, row and col quarters of the axial rotary."""

    def build():
        quarter = channels // 4
        grids = torch.meshgrid(
            torch.arange(frames, device=device),
            torch.arange(rows, device=device),
            torch.arange(cols, device=device),
            indexing="ij",
        )
        cos_parts, sin_parts = [], []
        for grid in grids:  # three axes, not a loop over tokens
            cos, sin = rotary_angles(grid.reshape(-1), quarter)
            cos_parts.append(cos)
            sin_parts.append(sin)
        shape = (frames, rows, cols, 3 * quarter)
        cos = torch.cat(cos_parts, dim=-1).reshape(shape).to(dtype)
        sin = torch.cat(sin_parts, dim=-1).reshape(shape).to(dtype)
        return cos, sin

    return cached(("rotary_3d", frames, rows, cols, channels, device, dtype), build)


def rotary_3d(x: torch.Tensor) -> torch.Tensor:
    """Axial 3-D rotary `R3d(x)` of `x (batch, frames, rows, cols, channels)`, `channels % 8 == 0`; same shape.

    Channels `[frame C/4 | row C/4 | col C/4 | last C/4 untouched]`; each quarter is a rotary of dim C/4
    (frequencies `10000^(-2k/(C/4))`) at the integer grid position of its axis (0..F-1, 0..h-1, 0..w-1).
    """
    if x.ndim != 5:
        raise ValueError(f"rotary_3d expects (batch, frames, rows, cols, channels), got shape {tuple(x.shape)}")
    frames, rows, cols, channels = x.shape[1:]
    if channels % 8 != 0:
        raise ValueError(f"3-D rotary needs channels divisible by 8, got channels={channels}")
    cos, sin = _rotary_3d_tables(frames, rows, cols, channels, x.device, x.dtype)
    rotated_dim = 3 * (channels // 4)
    head, tail = x[..., :rotated_dim], x[..., rotated_dim:]
    return torch.cat((apply_rotary(head, cos, sin), tail), dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# position = frame index


def _frame_positions(num_frames: int, tokens_per_frame: int, device) -> torch.Tensor:
    """`(num_frames*tokens_per_frame,)` frame index of each token in frame-major order."""
    return torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)


def rotary_by_frame(x: torch.Tensor, num_frames: int, tokens_per_frame: int, style: str) -> torch.Tensor:
    """1-D rotary of `x (batch, num_frames*tokens_per_frame, C)` (frame-major), position = frame index."""
    cos, sin = _rotary_1d_tables(
        ("frame", num_frames, tokens_per_frame),
        lambda: _frame_positions(num_frames, tokens_per_frame, x.device),
        x.shape[-1],
        x.device,
        x.dtype,
    )
    rotated = apply_rotary(x, cos, sin)
    return x + rotated if style == "research" else rotated


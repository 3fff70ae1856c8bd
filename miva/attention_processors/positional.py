"""Positional encodings of the spatiotemporal cross-attention query (`ca_pe_mode`), as pure functions over tensors.

The cross-attention processor folds the n2-normalised hidden states into a video grid `(batch, frames, rows, cols,
channels)` (downsampled by `q_downsample_ratio`) and calls, in order:

1. :func:`encode_query_input` - flattens to `(batch, frames*rows*cols, channels)` (token order frame, row, col) and
   applies the pre-projection encodings (`naive`, `temporal`, `temporal_sine`, `rope_1d`, `rope_3d`);
2. `W_Q` (+ LoRA), then :func:`encode_query_output` - the post-projection encodings (`ropeQ_3d`, and the query side
   of `ropeQK_1d` / `ropeQKV_1d`);
3. :func:`encode_key_value` - tiles the text keys/values once per frame and rotates them (`ropeQK_1d`, `ropeQKV_1d`).

Two styles (`pe_style`):

- `"standard"` (default): textbook formulas. Sinusoid frequencies `10000^(-2i/d)`, rotary replaces `x` by `R(x)`,
  K/V tiled frame-major so that every key's position is its frame.
- `"research"`: reproduces the research implementation exactly (REFERENCE.md section 3): positive-exponent
  sinusoid `10000^(+2i/d)`, additive rotary `x + R(x)`, stop-gradient on the 3-D rotated term, bug B1 for
  `ropeQ_3d` (W_Q discarded), token-major K/V tiling with position `index // text_tokens`, and the 2560-token
  limit of `naive`. Adapters trained with the research code need this style.

In every temporal mode frame 0 (the given image) has position zero, i.e. no shift (the research `x + R(x)` turns
frame 0 into `2x`, since the rotation at position 0 is the identity).

Constant tables (sinusoids, rotary cos/sin) are built in float32, cast to the input dtype and cached in a small
module-level dict keyed by (kind, sizes, device, dtype), so the denoising loop does not rebuild them every call.
"""

from __future__ import annotations

import math

import torch

from ..guards import did_you_mean

__all__ = [
    "PE_MODES",
    "PE_STYLES",
    "RESEARCH_NAIVE_MAX_TOKENS",
    "normalize_pe_mode",
    "normalize_pe_style",
    "pe_uses_kv",
    "check_pe_channels",
    "encode_query_input",
    "encode_query_output",
    "encode_key_value",
    "sinusoid_table",
    "temporal_table",
    "rotary_angles",
    "apply_rotary",
    "rotary_3d",
]

PE_MODES: tuple[str, ...] = (
    "naive",
    "temporal",
    "temporal_sine",
    "rope_1d",
    "rope_3d",
    "ropeQ_3d",
    "ropeQK_1d",
    "ropeQKV_1d",
)
PE_STYLES: tuple[str, ...] = ("standard", "research")

# The research `naive` encoder is a fixed table of 2560 positions (`pe[:, :N]`).
RESEARCH_NAIVE_MAX_TOKENS = 2560

_NULL_MODES = ("null", "none")
_PRE_PROJECTION_MODES = ("naive", "temporal", "temporal_sine", "rope_1d", "rope_3d")
_KV_MODES = ("ropeQK_1d", "ropeQKV_1d")
_ROTARY_1D_MODES = ("rope_1d", "ropeQK_1d", "ropeQKV_1d")
_ROTARY_3D_MODES = ("rope_3d", "ropeQ_3d")

_CACHE_MAX_ENTRIES = 64
_TABLE_CACHE: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}


# --------------------------------------------------------------------------------------------------------------------
# mode / style handling


def normalize_pe_mode(mode: str | None) -> str | None:
    """Canonical `ca_pe_mode`: `None`, `"null"` and `"none"` give `None`; one of `PE_MODES` is returned as is."""
    if mode is None:
        return None
    if isinstance(mode, str):
        if mode.lower() in _NULL_MODES:
            return None
        if mode in PE_MODES:
            return mode
    valid = [None, "null", *PE_MODES]
    message = f"ca_pe_mode={mode!r} is not one of {valid}"
    if isinstance(mode, str):  # case slips such as "ROPE_3D" or "ropeqk_1d" first
        message += did_you_mean(mode, PE_MODES, cutoff=0.5)
    raise ValueError(message)


def normalize_pe_style(style: str) -> str:
    """Check `pe_style` (`"standard"` or `"research"`)."""
    if style not in PE_STYLES:
        raise ValueError(f"pe_style={style!r} is not one of {list(PE_STYLES)}")
    return style


def pe_uses_kv(mode: str | None) -> bool:
    """Whether `mode` tiles and encodes the keys/values (`ropeQK_1d`, `ropeQKV_1d`)."""
    return normalize_pe_mode(mode) in _KV_MODES


def check_pe_channels(mode: str | None, channels: int) -> None:
    """Raise a `ValueError` if `channels` does not suit `mode` (rotary: even; 3-D rotary: multiple of 8).

    Cheap: the processor can call it at construction time, with the block width.
    """
    mode = normalize_pe_mode(mode)
    if mode in _ROTARY_3D_MODES and channels % 8 != 0:
        raise ValueError(
            f"ca_pe_mode={mode!r} needs channels divisible by 8 (4 axial quarters of rotary pairs), "
            f"got channels={channels}; pick another ca_pe_mode for this width"
        )
    if mode in _ROTARY_1D_MODES and channels % 2 != 0:
        raise ValueError(
            f"ca_pe_mode={mode!r} needs an even number of channels (rotary pairs), got channels={channels}"
        )


# --------------------------------------------------------------------------------------------------------------------
# table cache


def _cached(key: tuple, build):
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

    return _cached(("rotary_1d", *positions_key, dim, device, dtype), build)


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

    return _cached(("rotary_3d", frames, rows, cols, channels, device, dtype), build)


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
# the three entry points used by the cross-attention processor


def _frame_positions(num_frames: int, tokens_per_frame: int, device) -> torch.Tensor:
    """`(num_frames*tokens_per_frame,)` frame index of each token in frame-major order."""
    return torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)


def _rotary_by_frame(x: torch.Tensor, num_frames: int, tokens_per_frame: int, style: str) -> torch.Tensor:
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


def encode_query_input(x: torch.Tensor, mode: str | None, style: str = "standard") -> torch.Tensor:
    """Flatten the query grid and apply the pre-projection encoding of `mode`.

    x: `(batch, frames, rows, cols, channels)`, the downsampled n2-normalised hidden states before W_Q.
    Returns `(batch, frames*rows*cols, channels)`, token order (frame, row, col), with `naive`, `temporal`,
    `temporal_sine`, `rope_1d` or `rope_3d` applied (other modes: just flattened).
    """
    mode, style = normalize_pe_mode(mode), normalize_pe_style(style)
    if x.ndim != 5:
        raise ValueError(f"encode_query_input expects (batch, frames, rows, cols, channels), got {tuple(x.shape)}")
    batch, frames, rows, cols, channels = x.shape
    check_pe_channels(mode, channels)
    tokens = frames * rows * cols

    if mode == "rope_3d":
        rotated = rotary_3d(x)
        if style == "research":
            rotated = x + rotated.detach()  # the research code computes the rotated term under torch.no_grad()
        return rotated.reshape(batch, tokens, channels)

    flat = x.reshape(batch, tokens, channels)
    if mode == "naive":
        if style == "research" and tokens > RESEARCH_NAIVE_MAX_TOKENS:
            raise ValueError(
                f"ca_pe_mode='naive' with pe_style='research' supports at most {RESEARCH_NAIVE_MAX_TOKENS} query "
                f"tokens (the research table has {RESEARCH_NAIVE_MAX_TOKENS} positions), got "
                f"frames*rows*cols={frames}*{rows}*{cols}={tokens}; raise q_downsample_ratio or use "
                f"pe_style='standard'"
            )
        table = _cached(
            ("naive", tokens, channels, style, x.device, x.dtype),
            lambda: sinusoid_table(torch.arange(tokens, device=x.device), channels, style).to(x.dtype),
        )
        return flat + table
    if mode in ("temporal", "temporal_sine"):
        table = _cached(
            (mode, frames, rows * cols, channels, style, x.device, x.dtype),
            lambda: temporal_table(
                frames, channels, style, sine_only=mode == "temporal_sine", device=x.device, dtype=x.dtype
            ).repeat_interleave(rows * cols, dim=0),
        )
        return flat + table
    if mode == "rope_1d":
        return _rotary_by_frame(flat, frames, rows * cols, style)
    return flat


def encode_query_output(
    q: torch.Tensor, x_in: torch.Tensor, grid: tuple[int, int, int], mode: str | None, style: str = "standard"
) -> torch.Tensor:
    """Apply the post-projection query encoding of `mode`.

    q: `(batch, F*h*w, channels)` after W_Q (+ LoRA). x_in: the flattened pre-projection input, same shape.
    grid: `(F, h, w)`.

    - `ropeQ_3d`: standard rotates q with the 3-D rotary; research reproduces bug B1 and returns
      `x_in + stopgrad(R3d(x_in))`, discarding q (W_Q and the Q-LoRA).
    - `ropeQK_1d` / `ropeQKV_1d`: standard rotates q with the 1-D rotary at position = frame index; research leaves
      q unchanged (the research code skips the query there).
    - other modes: q unchanged.
    """
    mode, style = normalize_pe_mode(mode), normalize_pe_style(style)
    if mode not in ("ropeQ_3d", *_KV_MODES):
        return q
    frames, rows, cols = grid
    batch, tokens, channels = q.shape
    if tokens != frames * rows * cols:
        raise ValueError(f"query has {tokens} tokens but grid={tuple(grid)} has {frames * rows * cols}")
    check_pe_channels(mode, channels)

    if mode == "ropeQ_3d":
        if style == "research":
            if x_in.shape != q.shape:
                raise ValueError(
                    f"ca_pe_mode='ropeQ_3d' with pe_style='research' rebuilds the query from the pre-projection "
                    f"input, which needs x_in.shape == q.shape; got {tuple(x_in.shape)} and {tuple(q.shape)}"
                )
            x_grid = x_in.reshape(batch, frames, rows, cols, channels)
            return (x_grid + rotary_3d(x_grid).detach()).reshape(batch, tokens, channels)
        return rotary_3d(q.reshape(batch, frames, rows, cols, channels)).reshape(batch, tokens, channels)

    if style == "research":
        return q
    return _rotary_by_frame(q, frames, rows * cols, style)


def encode_key_value(
    k: torch.Tensor, v: torch.Tensor, num_frames: int, mode: str | None, style: str = "standard"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile the text keys/values once per frame and rotate them, for `ropeQK_1d` / `ropeQKV_1d`.

    k, v: `(batch, text_tokens, channels)` after W_K / W_V. Other modes return them unchanged. Output
    `(batch, text_tokens*num_frames, channels)`, with positions `arange(num_frames).repeat_interleave(text_tokens)`
    (position = index // text_tokens):

    - standard: frame-major tiling (index `f*T + n`), so a key's position is its frame; `x <- R(x)`.
    - research: token-major tiling (index `n*F + f`), as in the research code; additive `x + R(x)`.

    K is rotated in both modes, V only for `ropeQKV_1d`; V is always tiled.
    """
    mode, style = normalize_pe_mode(mode), normalize_pe_style(style)
    if mode not in _KV_MODES:
        return k, v
    check_pe_channels(mode, k.shape[-1])
    check_pe_channels(mode, v.shape[-1])
    if style == "standard":
        k_tiled, v_tiled = k.repeat(1, num_frames, 1), v.repeat(1, num_frames, 1)
    else:
        k_tiled, v_tiled = k.repeat_interleave(num_frames, dim=1), v.repeat_interleave(num_frames, dim=1)
    text_tokens = k.shape[1]
    k_tiled = _rotary_by_frame(k_tiled, num_frames, text_tokens, style)
    if mode == "ropeQKV_1d":
        v_tiled = _rotary_by_frame(v_tiled, num_frames, v.shape[1], style)
    return k_tiled, v_tiled

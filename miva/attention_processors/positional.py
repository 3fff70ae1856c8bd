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
- `"research"`: reproduces the research implementation exactly (docs/research.md#positional-encodings): positive-exponent
  sinusoid `10000^(+2i/d)`, additive rotary `x + R(x)`, stop-gradient on the 3-D rotated term, bug B1 for
  `ropeQ_3d` (W_Q discarded), token-major K/V tiling with position `index // text_tokens`, and the 2560-token
  limit of `naive`. Adapters trained with the research code need this style.

In every temporal mode frame 0 (the given image) has position zero, i.e. no shift (the research `x + R(x)` turns
frame 0 into `2x`, since the rotation at position 0 is the identity).

Each mode is one `PEMode` entry of `PE_REGISTRY`: its encoders at the three points above (pure functions; `None`
where the mode does nothing there) and its channel constraint. `PE_MODES`, `normalize_pe_mode`, `pe_uses_kv`,
`check_pe_channels` and `MIVAAdapterConfig`'s validation all derive from the registry: a new mode is one entry here
(plus its tests). The tables themselves (sinusoids, rotary, their cache) live in `positional_tables.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..guards import did_you_mean
from .positional_tables import (
    PE_STYLES,
    apply_rotary,
    cached,
    normalize_pe_style,
    rotary_3d,
    rotary_angles,
    rotary_by_frame,
    sinusoid_table,
    temporal_table,
)

__all__ = [
    "PE_MODES",
    "PE_NULL_SPELLINGS",
    "PE_REGISTRY",
    "PE_STYLES",
    "PEMode",
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

# The research `naive` encoder is a fixed table of 2560 positions (`pe[:, :N]`).
RESEARCH_NAIVE_MAX_TOKENS = 2560
# Spellings of "no positional encoding" (besides None), compared lower-case.
PE_NULL_SPELLINGS = ("null", "none", "")


@dataclass(frozen=True)
class PEMode:
    """One `ca_pe_mode`: where it acts on the query/key path and what width it needs.

    - `encode_input(x, style)`: `x (batch, F, h, w, C)` -> `(batch, F*h*w, C)` before W_Q (None: just flatten);
    - `encode_output(q, x_in, grid, style)`: `q (batch, F*h*w, C)` after W_Q -> same shape (None: unchanged);
    - `encode_kv(k, v, num_frames, style)`: text `k, v (batch, T, C)` -> `(batch, T*F, C)` each (None: unchanged);
    - `channel_multiple` / `channel_rule`: the channel count must be a multiple of it (rule: why, for the error).
    """

    name: str
    encode_input: Callable[..., torch.Tensor] | None = None
    encode_output: Callable[..., torch.Tensor] | None = None
    encode_kv: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    channel_multiple: int = 1
    channel_rule: str = ""

    @property
    def uses_kv(self) -> bool:
        return self.encode_kv is not None


# --------------------------------------------------------------------------------------------------------------------
# the encoders of each mode (pure functions; the entry points below check shapes and channels first)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """`(batch, F, h, w, C)` -> `(batch, F*h*w, C)`, token order (frame, row, col)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _naive_input(x: torch.Tensor, style: str) -> torch.Tensor:
    """Sinusoid over the flattened token index, added to the query input."""
    batch, frames, rows, cols, channels = x.shape
    tokens = frames * rows * cols
    if style == "research" and tokens > RESEARCH_NAIVE_MAX_TOKENS:
        raise ValueError(
            f"ca_pe_mode='naive' with pe_style='research' supports at most {RESEARCH_NAIVE_MAX_TOKENS} query "
            f"tokens (the research table has {RESEARCH_NAIVE_MAX_TOKENS} positions), got "
            f"frames*rows*cols={frames}*{rows}*{cols}={tokens}; raise q_downsample_ratio or use "
            f"pe_style='standard'"
        )
    table = cached(
        ("naive", tokens, channels, style, x.device, x.dtype),
        lambda: sinusoid_table(torch.arange(tokens, device=x.device), channels, style).to(x.dtype),
    )
    return _flatten(x) + table


def _temporal_input(x: torch.Tensor, style: str, *, sine_only: bool) -> torch.Tensor:
    """Per-frame sin/cos (or sin only) table added to every token of the frame; frame 0 unshifted."""
    _, frames, rows, cols, channels = x.shape
    mode = "temporal_sine" if sine_only else "temporal"
    table = cached(
        (mode, frames, rows * cols, channels, style, x.device, x.dtype),
        lambda: temporal_table(
            frames, channels, style, sine_only=sine_only, device=x.device, dtype=x.dtype
        ).repeat_interleave(rows * cols, dim=0),
    )
    return _flatten(x) + table


def _rope_1d_input(x: torch.Tensor, style: str) -> torch.Tensor:
    """1-D rotary of the query input at position = frame index."""
    _, frames, rows, cols, _ = x.shape
    return rotary_by_frame(_flatten(x), frames, rows * cols, style)


def _rope_3d_input(x: torch.Tensor, style: str) -> torch.Tensor:
    """Axial 3-D rotary of the query input (research: `x + stopgrad(R3d(x))`)."""
    rotated = rotary_3d(x)
    if style == "research":
        rotated = x + rotated.detach()  # the research code computes the rotated term under torch.no_grad()
    return _flatten(rotated)


def _rope_q_3d_output(q, x_in, grid, style):
    """Standard: 3-D rotary of q. Research (bug B1): `x_in + stopgrad(R3d(x_in))`, discarding q (W_Q, Q-LoRA)."""
    frames, rows, cols = grid
    batch, tokens, channels = q.shape
    if style == "research":
        if x_in.shape != q.shape:
            raise ValueError(
                f"ca_pe_mode='ropeQ_3d' with pe_style='research' rebuilds the query from the pre-projection "
                f"input, which needs x_in.shape == q.shape; got {tuple(x_in.shape)} and {tuple(q.shape)}"
            )
        x_grid = x_in.reshape(batch, frames, rows, cols, channels)
        return (x_grid + rotary_3d(x_grid).detach()).reshape(batch, tokens, channels)
    return rotary_3d(q.reshape(batch, frames, rows, cols, channels)).reshape(batch, tokens, channels)


def _rope_1d_output(q, x_in, grid, style):
    """Standard: 1-D rotary of q at position = frame index. Research: q unchanged (the research code skips it)."""
    if style == "research":
        return q
    frames, rows, cols = grid
    return rotary_by_frame(q, frames, rows * cols, style)


def _rope_1d_kv(k, v, num_frames, style, *, rotate_v: bool):
    """Tile the text keys/values once per frame and rotate K (and V when `rotate_v`) at position = frame.

    Standard: frame-major tiling (index `f*T + n`), `x <- R(x)`. Research: token-major tiling (index `n*F + f`),
    additive `x + R(x)`; positions `arange(num_frames).repeat_interleave(T)` in both.
    """
    if style == "standard":
        k_tiled, v_tiled = k.repeat(1, num_frames, 1), v.repeat(1, num_frames, 1)
    else:
        k_tiled, v_tiled = k.repeat_interleave(num_frames, dim=1), v.repeat_interleave(num_frames, dim=1)
    k_tiled = rotary_by_frame(k_tiled, num_frames, k.shape[1], style)
    if rotate_v:
        v_tiled = rotary_by_frame(v_tiled, num_frames, v.shape[1], style)
    return k_tiled, v_tiled


_ROTARY_1D = dict(channel_multiple=2, channel_rule="an even number of channels (rotary pairs)")
_ROTARY_3D = dict(channel_multiple=8, channel_rule="channels divisible by 8 (4 axial quarters of rotary pairs)")

# --------------------------------------------------------------------------------------------------------------------
# the registry: the one list of modes (docs/research.md#positional-encodings), in the seed's order

PE_REGISTRY: dict[str, PEMode] = {
    spec.name: spec
    for spec in (
        PEMode("naive", encode_input=_naive_input),
        PEMode("temporal", encode_input=partial(_temporal_input, sine_only=False)),
        PEMode("temporal_sine", encode_input=partial(_temporal_input, sine_only=True)),
        PEMode("rope_1d", encode_input=_rope_1d_input, **_ROTARY_1D),
        PEMode("rope_3d", encode_input=_rope_3d_input, **_ROTARY_3D),
        PEMode("ropeQ_3d", encode_output=_rope_q_3d_output, **_ROTARY_3D),
        PEMode("ropeQK_1d", encode_output=_rope_1d_output, encode_kv=partial(_rope_1d_kv, rotate_v=False),
               **_ROTARY_1D),
        PEMode("ropeQKV_1d", encode_output=_rope_1d_output, encode_kv=partial(_rope_1d_kv, rotate_v=True),
               **_ROTARY_1D),
    )
}
PE_MODES: tuple[str, ...] = tuple(PE_REGISTRY)

# --------------------------------------------------------------------------------------------------------------------
# mode handling (derived from the registry)


def normalize_pe_mode(mode: str | None) -> str | None:
    """Canonical `ca_pe_mode`: `None`, `"null"`, `"none"` and `""` give `None`; one of `PE_MODES` is returned as is.

    Anything else raises `ValueError` naming the value, the valid modes and the closest one.
    """
    if mode is None:
        return None
    if isinstance(mode, str):
        if mode.lower() in PE_NULL_SPELLINGS:
            return None
        if mode in PE_REGISTRY:
            return mode
    valid = [None, "null", *PE_MODES]
    message = f"ca_pe_mode={mode!r} is not one of {valid}"
    if isinstance(mode, str):  # case slips such as "ROPE_3D" or "ropeqk_1d" first
        message += did_you_mean(mode, PE_MODES, cutoff=0.5)
    raise ValueError(message)


def pe_mode_spec(mode: str | None) -> PEMode | None:
    """The registry entry of `mode` (None for no positional encoding)."""
    mode = normalize_pe_mode(mode)
    return None if mode is None else PE_REGISTRY[mode]


def pe_uses_kv(mode: str | None) -> bool:
    """Whether `mode` tiles and encodes the keys/values (`ropeQK_1d`, `ropeQKV_1d`)."""
    spec = pe_mode_spec(mode)
    return spec is not None and spec.uses_kv


def check_pe_channels(mode: str | None, channels: int) -> None:
    """Raise a `ValueError` if `channels` does not suit `mode` (rotary: even; 3-D rotary: multiple of 8).

    Cheap: the processor can call it at construction time, with the block width.
    """
    spec = pe_mode_spec(mode)
    if spec is not None and channels % spec.channel_multiple != 0:
        raise ValueError(f"ca_pe_mode={spec.name!r} needs {spec.channel_rule}, got channels={channels}; pick another "
                         "ca_pe_mode for this width")


# --------------------------------------------------------------------------------------------------------------------
# the three entry points used by the cross-attention processor


def encode_query_input(x: torch.Tensor, mode: str | None, style: str = "standard") -> torch.Tensor:
    """Flatten the query grid and apply the pre-projection encoding of `mode`.

    x: `(batch, frames, rows, cols, channels)`, the downsampled n2-normalised hidden states before W_Q.
    Returns `(batch, frames*rows*cols, channels)`, token order (frame, row, col), with `naive`, `temporal`,
    `temporal_sine`, `rope_1d` or `rope_3d` applied (other modes: just flattened).
    """
    spec, style = pe_mode_spec(mode), normalize_pe_style(style)
    if x.ndim != 5:
        raise ValueError(f"encode_query_input expects (batch, frames, rows, cols, channels), got {tuple(x.shape)}")
    check_pe_channels(mode, x.shape[-1])
    if spec is None or spec.encode_input is None:
        return _flatten(x)
    return spec.encode_input(x, style)


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
    spec, style = pe_mode_spec(mode), normalize_pe_style(style)
    if spec is None or spec.encode_output is None:
        return q
    frames, rows, cols = grid
    if q.shape[1] != frames * rows * cols:
        raise ValueError(f"query has {q.shape[1]} tokens but grid={tuple(grid)} has {frames * rows * cols}")
    check_pe_channels(mode, q.shape[-1])
    return spec.encode_output(q, x_in, grid, style)


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
    spec, style = pe_mode_spec(mode), normalize_pe_style(style)
    if spec is None or spec.encode_kv is None:
        return k, v
    check_pe_channels(mode, k.shape[-1])
    check_pe_channels(mode, v.shape[-1])
    return spec.encode_kv(k, v, num_frames, style)

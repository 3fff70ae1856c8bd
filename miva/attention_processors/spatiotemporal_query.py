"""The spatiotemporal-Q layout of the cross-attention (`q_downsample`): the query grid, and the query side of
one adapted call (`QueryPlan`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .positional import encode_key_value, encode_query_input, encode_query_output, pe_uses_kv

__all__ = ["QueryPlan", "SpatiotemporalQuery"]


class SpatiotemporalQuery:
    """Query layout of the spatiotemporal-Q path: fold frames out of the batch, downsample space by `ratio`,
    flatten to (batch, frames*h'*w', channels) in (frame, row, column) order, and back.

    Two grids. `pe_style="research"` with nearest mode is the research one exactly (docs/research.md#spatiotemporal-query):
    `F.interpolate(nearest)` down to `(H // r, W // r)` and back up to `(H, W)`, so when r does not divide H or W
    the kept rows are `floor(i * H / (H // r))` and each coarse cell covers a band of uneven width. Otherwise
    (miva's standard grid) the grid is `ceil(H / r) x ceil(W / r)`: every r-th row and column (or r x r means),
    each cell back to an r x r block cropped at the edge; it never collapses a small level (the research grid
    is empty when r > H). Both agree whenever r divides H and W.
    """

    def __init__(self, key: tuple):
        _, self.ratio, self.mode, self.pe_mode, self.pe_style = key
        self.research_grid = self.pe_style == "research" and self.mode == "nearest"

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.research_grid:
            h, w = size[0] // self.ratio, size[1] // self.ratio
            if h == 0 or w == 0:
                raise ValueError(f"q_downsample_ratio={self.ratio} leaves no query rows at the {size[0]}x{size[1]} "
                                 f"latent level with pe_style='research' (grid H//r x W//r); use a ratio of at "
                                 f"most {min(size)} or pe_style='standard'")
            return h, w
        return -(-size[0] // self.ratio), -(-size[1] // self.ratio)  # ceil: never collapses a small level

    def downsample(self, x: torch.Tensor, frames: int, size: tuple[int, int]) -> torch.Tensor:
        """(batch*frames, h*w, C) -> (batch, frames, h', w', C)."""
        bf, _, channels = x.shape
        h, w = size
        x = x.view(bf // frames, frames, h, w, channels)
        r = self.ratio
        if r == 1:
            return x
        if self.research_grid:  # the research call, on (batch*frames, C, h, w): time is untouched
            small = F.interpolate(x.reshape(bf, h, w, channels).permute(0, 3, 1, 2), size=self.grid(size),
                                  mode="nearest")
            return small.permute(0, 2, 3, 1).reshape(bf // frames, frames, *small.shape[-2:], channels)
        if self.mode == "nearest":  # keep every r-th row and column
            return x[:, :, ::r, ::r]
        pooled = F.avg_pool2d(x.reshape(bf, h, w, channels).permute(0, 3, 1, 2), r, r, ceil_mode=True)
        return pooled.permute(0, 2, 3, 1).reshape(bf // frames, frames, *pooled.shape[-2:], channels)

    def upsample(self, y: torch.Tensor, frames: int, size: tuple[int, int]) -> torch.Tensor:
        """(batch, frames*h'*w', C) -> (batch*frames, h*w, C): each coarse cell back over the pixels it stands for."""
        h, w = size
        hq, wq = self.grid(size)
        y = y.reshape(-1, hq, wq, y.shape[-1])
        if self.ratio > 1 and self.research_grid:
            y = F.interpolate(y.permute(0, 3, 1, 2), size=(h, w), mode="nearest").permute(0, 2, 3, 1)
        elif self.ratio > 1:  # one copy: each cell broadcast over its r x r block, then the edge cropped
            r, channels = self.ratio, y.shape[-1]
            y = y[:, :, None, :, None].expand(-1, hq, r, wq, r, channels).reshape(-1, hq * r, wq * r, channels)
            if hq * r != h or wq * r != w:
                y = y[:, :h, :w]
        return y.reshape(-1, h * w, y.shape[-1])


class QueryPlan:
    """The query side of one adapted cross-attention call: ordinary queries, or spatiotemporal ones
    (downsampled, positionally encoded, (batch, frames*h'*w', C)) with the matching text rows (one per video).

    `query()` returns W_Q x at full resolution (computed on first use): only the ordinary path needs it.
    """

    def __init__(self, attn, x, query, frames, stq: SpatiotemporalQuery | None, size):
        self.attn, self.frames, self.stq, self.size = attn, frames, stq, size
        if stq is None:
            self.x_q, self.q_plain, self.grid = x, query(), None
        else:
            self.grid = stq.grid(size)
            self.x_q = encode_query_input(stq.downsample(x, frames, size), stq.pe_mode, stq.pe_style)
            self.q_plain = attn.to_q(self.x_q)

    def per_video(self, text: torch.Tensor) -> torch.Tensor:
        """Text rows are repeated per frame; the spatiotemporal path needs one per video."""
        return text if self.stq is None else text[:: self.frames]

    def finish_query(self, q: torch.Tensor) -> torch.Tensor:
        if self.stq is None:
            return q
        return encode_query_output(q, self.x_q, (self.frames, *self.grid), self.stq.pe_mode, self.stq.pe_style)

    def finish_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stq is not None and pe_uses_kv(self.stq.pe_mode):
            return encode_key_value(k, v, self.frames, self.stq.pe_mode, self.stq.pe_style)
        return k, v

    def upsample(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.stq is None else self.stq.upsample(y, self.frames, self.size)

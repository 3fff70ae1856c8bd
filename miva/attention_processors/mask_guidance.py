"""Mask-guided attention and the mask stream's attention at spatial self-attention (docs/mask_branch.md).

One `MaskGuidance` per pipeline call (in its `CallState`, `miva_call(..., mask_guidance=...)`) says which adapters
have a mask branch, their current soft region masks `(videos, F, H, W)` in [0, 1], the attention mode, and whether
the current UNet forward carries the mask stream's rows after the video's rows:

    rows = [video rows (CFG: uncond videos, then cond videos) ; stream of adapter 0 ; stream of adapter 1 ; ...]

each block `videos * F` rows. The processors ask it for per-token gates (`gate`) and run the mask rows' attention
(`stream_attention`); nothing here knows the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..guards import did_you_mean
from .parts import CROSS, SELF

__all__ = ["MASK_ATTENTION_MODES", "MaskGuidance", "check_mask_attention_mode"]

# Which processor kinds restrict an adapter to its region, per mode.
_GATED_KINDS = {"SA": (SELF,), "CA": (CROSS,), "original": (SELF, CROSS)}
MASK_ATTENTION_MODES: tuple[str, ...] = tuple(_GATED_KINDS)


def check_mask_attention_mode(mode) -> str:
    """`mode` when it is one of `MASK_ATTENTION_MODES`; `"TA"` is refused with the reason."""
    if mode == "TA":
        raise ValueError("mask_attention_mode='TA' is not supported: the MotionLoRA is a delta inside temporal "
                         "attention's projections, so restricting it to a region would need the frozen temporal "
                         "attention computed a second time at every motion module; use 'SA', 'CA' or 'original'")
    if mode not in MASK_ATTENTION_MODES:
        hint = did_you_mean(mode, MASK_ATTENTION_MODES) if isinstance(mode, str) else ""
        raise ValueError(f"mask_attention_mode={mode!r} is not one of {list(MASK_ATTENTION_MODES)}{hint}")
    return mode


@dataclass
class MaskGuidance:
    """The mask branch's per-call values (mutable between steps, read by the processors during a forward).

    - `names`: the mask-branch adapters, one mask stream each, in row order;
    - `videos`: videos per stream (the conditional batch: one mask per video, shared by both CFG halves);
    - `frames`: frames per video; `mode`: one of `MASK_ATTENTION_MODES`;
    - `image_guidance`: the mask rows also attend to the conditional video's tokens of the same frame;
    - `soft`: name -> `(videos, F, H, W)` soft masks in [0, 1] (`set_masks`);
    - `stream_rows`: whether the current forward carries the mask rows after the video rows.
    """

    names: tuple[str, ...]
    videos: int
    frames: int
    mode: str = "original"
    image_guidance: bool = True
    soft: dict[str, torch.Tensor] = field(default_factory=dict)
    stream_rows: bool = False
    _levels: dict = field(default_factory=dict, repr=False)  # (name, h, w) -> (videos*F, h*w, 1), per update

    def set_masks(self, name: str, soft: torch.Tensor) -> None:
        """Replace adapter `name`'s soft masks `(videos, F, H, W)`."""
        self.soft[name] = soft
        self._levels = {k: v for k, v in self._levels.items() if k[0] != name}

    @property
    def block(self) -> int:
        """Rows of one video batch (or one stream): `videos * frames`."""
        return self.videos * self.frames

    def video_rows(self, rows: int) -> int:
        """How many of a forward's `rows` are video rows (the rest are mask rows)."""
        return rows - (len(self.names) * self.block if self.stream_rows else 0)

    def gates(self, kind: str) -> bool:
        """Whether processors of `kind` restrict the adapters to their regions in this mode."""
        return kind in _GATED_KINDS[self.mode]

    def gate(self, name: str, size: tuple[int, int] | None, rows: int, dtype: torch.dtype, *,
             includes_stream: bool = True) -> torch.Tensor | None:
        """Per-token weights `(rows, h*w, 1)` of adapter `name` at a level of `size` `(h, w)`: its soft mask on every
        video row (the same mask on both CFG halves), 1 on mask-stream rows. `rows`: the forward's rows, or only its
        video rows with `includes_stream=False`. None for an adapter without a mask."""
        if name not in self.soft:
            return None
        if size is None:
            raise RuntimeError(f"mask guidance of adapter {name!r} needs the level size: run the whole UNet")
        key = (name, *size)
        if key not in self._levels:
            masks = F.interpolate(self.soft[name].float(), size=size, mode="area")  # (videos, F, h, w)
            self._levels[key] = masks.reshape(self.block, size[0] * size[1], 1)
        per_video = self._levels[key].to(dtype)
        video = self.video_rows(rows) if includes_stream else rows
        if video % self.block:
            raise ValueError(f"mask guidance: {video} video rows are not a multiple of videos*frames={self.block}")
        gate = per_video.repeat(video // self.block, 1, 1)  # [uncond; cond] halves hold the same videos in order
        if rows > video:
            gate = torch.cat([gate, gate.new_ones(rows - video, *gate.shape[1:])])
        return gate

    def stream_attention(self, processor, attn, hidden_states, key, value) -> torch.Tensor:
        """attn1 of the mask rows `(len(names)*videos*F, hw, C)`, before `to_out[1]` and the residual: each stream's
        queries from its adapter's `mask_to_q`, keys/values attn1's frozen ones of the stream's own tokens (plus,
        with `image_guidance`, the conditional video's tokens of the same frame), out through `mask_to_out`.
        `hidden_states`, `key`, `value`: every row of the forward."""
        video = self.video_rows(hidden_states.shape[0])
        cond = slice(video - self.block, video)
        outputs = []
        for j, name in enumerate(self.names):
            if name not in processor.adapters or processor.adapters[name].mask_to_q is None:
                raise ValueError(f"{processor.layer_name}: adapter {name!r} has no mask branch here "
                                 "(use_mask_branch=False)")
            adapter = processor.adapters[name]
            rows = slice(video + j * self.block, video + (j + 1) * self.block)
            k, v = key[rows], value[rows]
            if self.image_guidance:
                k, v = torch.cat([k, key[cond]], dim=1), torch.cat([v, value[cond]], dim=1)
            query = adapter.mask_to_q(hidden_states[rows])
            outputs.append(adapter.mask_to_out(processor.attend(query, k, v, attn.heads)))
        return torch.cat(outputs)

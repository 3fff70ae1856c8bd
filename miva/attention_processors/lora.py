"""Low-rank deltas (LoRA) used by every MIVA adapter part."""

from __future__ import annotations

import torch
from torch import nn


class LoRADelta(nn.Module):
    """`delta(x) = up(down(x)) * alpha / rank` (DESIGN.md §3.1).

    `down` starts at N(0, (1/rank)^2) and `up` at zero (the research init), so a new delta is exactly zero. `alpha`
    is the seed's `*_lora_scale` ("network_alpha"); `alpha=None` means no scaling. The delta runs in its own dtype and
    is cast back to the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 32, alpha: float | None = 1.0):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)
        self.rank = rank
        self.alpha = alpha
        self.scale = 1.0 if alpha is None else alpha / rank

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: (..., in_features) -> (..., out_features), in `x.dtype`."""
        out = self.up(self.down(x.to(self.down.weight.dtype)))
        return (out * self.scale).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense `(out_features, in_features)` matrix this delta adds to a Linear weight."""
        return (self.up.weight @ self.down.weight) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"

"""Low-rank deltas (LoRA) used by every MIVA adapter part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def linear_with_deltas(linear: nn.Module, x: torch.Tensor, deltas: list[tuple[LoRADelta, float]],
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """`linear(x) + sum_i w_i delta_i(x) (+ bias)`: (..., in_features) -> (..., out_features).

    Without autograd (inference) and on a plain `nn.Linear`, the deltas are merged into a temporary weight first:
    one matmul instead of 1 + 2N, for an extra (out x in x rank) per call, negligible next to the projection's
    (tokens x out x in). With autograd, or on a wrapped projection (PEFT LoRA), the low-rank path runs: it is
    cheaper to differentiate and leaves the wrapper in charge. `bias` is an extra constant `(out_features,)` term.
    """
    if not deltas:
        out = linear(x)
    elif torch.is_grad_enabled() or type(linear) is not nn.Linear:
        out = linear(x)
        for delta, w in deltas:
            d = delta(x)
            out = out + (d if w == 1.0 else d * w)
    else:
        weight = linear.weight
        for delta, w in deltas:
            d = delta.delta_weight().to(weight.dtype)
            weight = weight + (d if w == 1.0 else d * w)
        out = F.linear(x, weight, linear.bias)
    return out if bias is None else out + bias.to(out.dtype)

"""Several adapters' LoRA deltas on one projection, applied as stacked matmuls (the `"residual"` branches).

`"residual"` runs one attention branch per adapter. Done delta by delta, every branch costs a down and an up
matmul, a full-size add and a concatenation copy for the batched attention; stacked, the N downs are one matmul,
the N ups one batched matmul that writes each branch's projection straight into the `(N, ...)` layout the batched
attention reads, and the out deltas of all branches one `(tokens, N*rank) @ (N*rank, out)` matmul.

Inference only (no autograd) and only for deltas whose weights may be read directly (`LoRADelta.weights_readable`);
otherwise the processors run the deltas one by one through their forwards (training, offloading hooks), which is
the reference these paths are tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .lora import LoRADelta

__all__ = ["StackedLoRA", "stackable"]


def stackable(deltas: Sequence[LoRADelta | None]) -> bool:
    """Whether `deltas` (None: a branch without one) can run stacked: inference, at least one delta, and every
    delta's weights readable outside its forward."""
    present = [d for d in deltas if d is not None]
    return bool(present) and not torch.is_grad_enabled() and all(d.weights_readable() for d in present)


class StackedLoRA:
    """N deltas of one projection (`None` for a branch without one), their weights stacked in the input's dtype.

    `down`: `(N, rank, in)` with each delta's `alpha / rank` folded in; `up`: `(N, rank, out)`; ranks below the
    largest are padded with zero rows (exact: a zero row adds nothing).
    """

    def __init__(self, deltas: Sequence[LoRADelta | None], like: torch.Tensor):
        present = [d for d in deltas if d is not None]
        if not present:
            raise ValueError("StackedLoRA needs at least one delta")
        rank = max(d.rank for d in present)
        n, in_features, out_features = len(deltas), present[0].in_features, present[0].out_features
        self.down = like.new_zeros(n, rank, in_features)
        self.up = like.new_zeros(n, rank, out_features)
        for i, delta in enumerate(deltas):
            if delta is not None:
                self.down[i, : delta.rank] = delta.down.weight.to(like.dtype) * delta.scale
                self.up[i, : delta.rank] = delta.up.weight.T.to(like.dtype)

    def __len__(self) -> int:
        return self.down.shape[0]

    def add_each(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`base + delta_i(x)` for every i: `base` `(..., out)` (the frozen projection of `x` `(..., in)`, shared by
        all branches) -> `(N, ..., out)`, contiguous, i.e. the branches concatenated along the batch axis."""
        n, rank, in_features = self.down.shape
        z = x.reshape(-1, in_features) @ self.down.reshape(n * rank, in_features).T  # (tokens, N*rank): one matmul
        z = z.view(-1, n, rank).transpose(0, 1)  # (N, tokens, rank)
        out = torch.baddbmm(base.reshape(1, -1, base.shape[-1]), z, self.up)  # (N, tokens, out), written once
        return out.view(n, *base.shape)

    def mix(self, parts: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
        """`sum_i c_i delta_i(parts_i)`: N tensors `(..., in)` -> `(..., out)`; one small matmul per part, one
        `(tokens, N*rank) @ (N*rank, out)` for the sum."""
        n, rank, in_features = self.down.shape
        if len(parts) != n or len(coefficients) != n:
            raise ValueError(f"{n} deltas, {len(parts)} parts and {len(coefficients)} coefficients")
        z = torch.cat([part.reshape(-1, in_features) @ (self.down[i] * c).T
                       for i, (part, c) in enumerate(zip(parts, coefficients))], dim=1)  # (tokens, N*rank)
        out = z @ self.up.reshape(n * rank, -1)
        return out.view(*parts[0].shape[:-1], -1)

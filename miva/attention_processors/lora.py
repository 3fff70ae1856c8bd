"""Low-rank deltas (LoRA) used by every MIVA adapter part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoRADelta(nn.Module):
    """`delta(x) = up(down(x)) * alpha / rank` (docs/research.md#lora-layers).

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
        out = self.up(self.down(x.to(compute_dtype(self.down))))
        return (out * self.scale).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense `(out_features, in_features)` matrix this delta adds to a Linear weight."""
        return (self.up.weight @ self.down.weight) * self.scale

    def delta_bias(self) -> torch.Tensor | None:
        """The constant `(out_features,)` term this delta adds (none: LoRA has no bias)."""
        return None

    def weights_readable(self) -> bool:
        return weights_readable(self.down) and weights_readable(self.up)

    def low_rank(self) -> LoRADelta:
        """The `LoRADelta` behind this delta (itself), what `lora_bank.StackedLoRA` stacks."""
        return self

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def weights_readable(module: nn.Module) -> bool:
    """Whether `module`'s own parameters may be read directly, outside its forward.

    Not when something wraps its forward (accelerate's offload hooks, diffusers' layerwise casting and group
    offloading replace `module.forward`; torch hooks) or a parameter is on the meta device: those bring the real
    weights, in the compute dtype, only for the duration of the forward, so reading `.weight` would see an
    offloaded placeholder or the storage dtype (e.g. float8).
    """
    if "forward" in module.__dict__ or module._forward_pre_hooks or module._forward_hooks:
        return False
    return not any(p.is_meta for p in module.parameters(recurse=False))


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` computes in: its weights' dtype, or the compute dtype of diffusers' layerwise casting
    (whose weights are stored in e.g. float8 and cast up only inside the forward)."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("layerwise_casting") if registry is not None else None
    if hook is not None:
        return hook.compute_dtype
    return next(module.parameters()).dtype


def _mergeable(linear: nn.Module, deltas: list) -> bool:
    """The merged-weight fast path applies: inference, a plain `nn.Linear` and deltas whose weights can be read."""
    if torch.is_grad_enabled() or type(linear) is not nn.Linear or not weights_readable(linear):
        return False
    return all(delta.weights_readable() for delta, _ in deltas)


def linear_with_deltas(linear: nn.Module, x: torch.Tensor, deltas: list[tuple[nn.Module, float]],
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """`linear(x) + sum_i w_i delta_i(x) (+ bias)`: (..., in_features) -> (..., out_features).

    A delta is a module called on `x` with `delta_weight()`, `delta_bias()` and `weights_readable()` (`LoRADelta`,
    or a cross-attention adapter's out delta with its constant bias). Without autograd (inference), on a plain
    `nn.Linear`, the deltas are merged into a temporary weight first: one matmul instead of 1 + 2N, for an extra
    (out x in x rank) per call, negligible next to the projection's (tokens x out x in). Otherwise the low-rank
    path runs through every module's forward: it is cheaper to differentiate, leaves a wrapper (PEFT LoRA) in
    charge, and lets offloading / layerwise-casting hooks bring the weights in. `bias` is an extra constant
    `(out_features,)` term.
    """
    if deltas and _mergeable(linear, deltas):
        out = _merged_linear(linear, x, deltas)
    else:
        out = linear(x)
        for delta, w in deltas:
            d = delta(x)
            out = out + (d if w == 1.0 else d * w)
    return out if bias is None else out + bias.to(out.dtype)


def _merged_linear(linear: nn.Linear, x: torch.Tensor, deltas: list[tuple[nn.Module, float]]) -> torch.Tensor:
    """`F.linear` with the deltas merged into a temporary weight and bias (one matmul)."""
    weight, bias = linear.weight, linear.bias
    for delta, w in deltas:
        d = delta.delta_weight().to(weight.dtype)
        weight = weight + (d if w == 1.0 else d * w)
        b = delta.delta_bias()
        if b is not None:
            b = b.to(weight.dtype) * w
            bias = b if bias is None else bias + b
    return F.linear(x, weight, bias)


def linear_bias(linear: nn.Module, like: torch.Tensor) -> torch.Tensor | None:
    """The constant term of `linear` (`(out_features,)` or None), through its forward when hooks own its weights
    (`linear(0)` is exactly the bias; a PEFT LoRA wrapper adds nothing at 0)."""
    base = getattr(linear, "base_layer", linear)
    if weights_readable(linear) and weights_readable(base):
        return base.bias
    return linear(like.new_zeros(1, base.in_features))[0]


def linear_without_bias(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`W x` of `linear` without its bias (for a term added to an output that already has the bias)."""
    if type(linear) is nn.Linear and weights_readable(linear):
        return F.linear(x, linear.weight)
    bias = linear_bias(linear, x)
    return linear(x) if bias is None else linear(x) - bias

"""How the active adapters combine (`parallel_mode`, docs/research.md#multi-adapter): the modes and the combine functions.

Every processor and `fusing.py` asks this module; none compares mode strings itself.

- `"residual"` (default): one branch per adapter i (its own deltas, embedding and prompt) and
  `y = y_base + sum_i w_i (y_i - y_base)`, written `sum_i w_i y_i + (1 - sum_i w_i) y_base`: the frozen base branch
  `y_base` is computed only when the weights do not sum to 1 (`needs_base`). Equal to the research `sum_i w_i y_i`
  whenever the weights sum to 1.
- `"weights"` (research): one attention with the w_i-scaled deltas summed into each projection (one softmax over
  the adapters' prompts). This is what merged weights compute, so fused adapters always compose this way
  (`FUSED_MODE`).

The spatial self-attention branches (I2V) add `sum_i w_i branch_i` to the frozen output in both modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

PARALLEL_MODES: tuple[str, ...] = ("residual", "weights")
DEFAULT_PARALLEL_MODE = "residual"
FUSED_MODE = "weights"  # merged weights implement the summed w_i-scaled deltas

__all__ = [
    "DEFAULT_PARALLEL_MODE",
    "FUSED_MODE",
    "PARALLEL_MODES",
    "add_share",
    "check_fusable_mode",
    "check_not_fused",
    "check_parallel_mode",
    "merges_deltas",
    "mix_residual",
    "needs_base",
    "replace_share",
    "weighted_sum",
    "with_base_branch",
]


def check_parallel_mode(mode: Any) -> str:
    """`mode` if it is one of `PARALLEL_MODES`, else a `ValueError` naming it."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel_mode={mode!r} is not one of {list(PARALLEL_MODES)}")
    return mode


def merges_deltas(mode: str) -> bool:
    """Whether `mode` sums the w_i-scaled deltas into one attention (`"weights"`) rather than one branch per adapter
    (`"residual"`)."""
    return check_parallel_mode(mode) == "weights"


def check_fusable_mode(mode: str, num_active: int) -> None:
    """Merged weights compute `"weights"`; `"residual"` equals it only for a single adapter."""
    if check_parallel_mode(mode) == "residual" and num_active > 1:
        raise ValueError(
            f"parallel_mode='residual' with {num_active} active adapters cannot be fused: fusing implements "
            "'weights' (summed w_i-scaled deltas, one attention). Use pipe.set_adapters(names, weights, "
            "parallel_mode='weights') first, or run unfused"
        )


def check_not_fused(context, action: str, names: Sequence[str] | None = None) -> None:
    """The one rule about fused adapters: `action` (e.g. `"set_adapters"`) needs them unfused first; with `names`,
    only those adapters matter (e.g. the ones being deleted)."""
    fused = [(n, w) for n, w in context.fused if names is None or n in names]
    if fused:
        raise ValueError(f"{action}: adapters {fused} are fused into the base weights; call "
                         "pipe.unfuse_adapters() first")


# ---------------------------------------------------------------------------------------------------- "residual"


def needs_base(weights: Sequence[float]) -> bool:
    """The frozen base branch matters only when the adapter weights do not sum to one."""
    return abs(1.0 - sum(weights)) > 1e-12


def with_base_branch(branches: list[tuple[Any, float]], weights: Sequence[float]) -> list[tuple[Any, float]]:
    """`[(adapter, w_i)]` -> the same with the base branch `(None, 1 - sum_i w_i)` first when `needs_base`: the
    coefficients of `sum_j c_j y_j` (for a linear mix such as `W_O (sum_j c_j a_j)`)."""
    if needs_base(weights):
        return [(None, 1.0 - sum(weights)), *branches]
    return list(branches)


def weighted_sum(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """`sum_j parts_j * weights_j` (same shapes)."""
    return sum(part * w for part, w in zip(parts, weights))


def add_share(y: torch.Tensor | float, f: torch.Tensor, w: float) -> torch.Tensor:
    """`"residual"`: adapter output `f` enters with its weight, `y + w f` (the implicit prompt)."""
    return y + w * f


def mix_residual(y: torch.Tensor | float, weights: Sequence[float], base: Callable[[], torch.Tensor]):
    """`y = sum_i w_i y_i` -> `y + (1 - sum_i w_i) y_base`; `base()` (the frozen branch) runs only when needed."""
    if needs_base(weights):
        y = y + (1.0 - sum(weights)) * base()
    return y


# ----------------------------------------------------------------------------------------------------- "weights"


def replace_share(y: torch.Tensor, f: torch.Tensor, w: float) -> torch.Tensor:
    """`"weights"`: an adapter output `f` that replaces the attention (implicit prompt) takes share w of it,
    `y (1 - w) + f w`: exactly f at w = 1 (no trace of the text left)."""
    return y * (1.0 - w) + f * w

"""The mask branch's config keys (M-MIVA, docs/mask_branch.md), declared once: the training fields `TrainConfig`
inherits (`mask_root`, `num_iterations_per_data`, `ground_truth_mask_probability`, `mask_dice_loss_weight`) and
the checks of the `validation_data` mask keys (`sections.ValidationData`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attention_processors.mask_guidance import check_mask_attention_mode
from .fields import ConfigError, fail, integer, key, local_path, number, optional

__all__ = ["MaskTrainingFields", "ground_truth_mask_probability", "mask_attention_mode", "mask_branch_inputs"]


def mask_attention_mode(path: str, value: Any) -> str:
    """`SA`, `CA` or `original` (`TA` refused with its reason)."""
    try:
        return check_mask_attention_mode(value)
    except ValueError as e:
        problem = str(e).split(" ", 1)[1]  # "<name>=<value> <problem>" -> the problem
        raise fail(path, value, problem) from None


def ground_truth_mask_probability(path: str, value: Any) -> float | str:
    """A probability in [0, 1], or `"cosine"` (docs/mask_branch.md#training)."""
    if value == "cosine":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise fail(path, value, "must be a number in [0, 1] or 'cosine'")
    return float(value)


@dataclass
class MaskTrainingFields:
    """The mask branch's training fields (a base of `TrainConfig`; docs/mask_branch.md#training)."""

    mask_root: str | None = key(
        None, optional(local_path), "Mask videos of the clips (needs adapter.use_mask_branch); docs/mask_branch.md."
    )
    num_iterations_per_data: int = key(1, integer(1), "Training steps on each loaded batch (mask branch).")
    ground_truth_mask_probability: float | str = key(
        1.0, ground_truth_mask_probability, "Use the ground-truth mask latent with this probability, or 'cosine'."
    )
    mask_dice_loss_weight: float = key(0.0, number(0.0), "miva: weight of the soft Dice loss of the mask stream.")

    def validate_mask_fields(self, use_mask_branch: bool) -> None:
        """The rule between fields: mask data and a mask-branch adapter go together."""
        if self.mask_root is not None and not use_mask_branch:
            raise ConfigError(f"mask_root={self.mask_root!r} needs adapter.use_mask_branch: true")
        if use_mask_branch and self.mask_root is None:
            raise ConfigError("adapter.use_mask_branch: true needs mask_root (the clips' mask videos; "
                              "docs/mask_branch.md#training)")


def mask_branch_inputs(validation_data, names: list[str], configs: list) -> dict | None:
    """`MIVAPipeline(mask_branch=...)` from `validation_data` (`mask_path`: one mask image, or one per mask-branch
    adapter in adapter order) for the adapters `names` with configs `configs`; None without `mask_path`."""
    v = validation_data
    if v.mask_path is None:
        return None
    masked = [name for name, config in zip(names, configs) if config.use_mask_branch]
    paths = v.mask_path if isinstance(v.mask_path, list) else [v.mask_path]
    if len(paths) != len(masked):
        raise ConfigError(f"validation_data.mask_path: {len(paths)} mask(s) for {len(masked)} adapter(s) with "
                          f"use_mask_branch {masked}; give one mask image per mask-branch adapter")
    return dict(masks=dict(zip(masked, paths)), mask_inference_stride=v.mask_inference_stride,
                mask_inference_cutoff=v.mask_inference_cutoff, mask_attention_mode=v.mask_attention_mode,
                use_image_guidance=v.use_image_guidance)

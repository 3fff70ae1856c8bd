"""The trainer's settings, `TrainConfig`: defined in the one run-config schema, `miva.config.trainer`.

This module keeps the import path `miva.training.train_config` (the trainer, the app, the MotionWorld recipes and
user scripts import `TrainConfig` from here).
"""

from ..config.fields import apply_overrides
from ..config.trainer import (
    MIXED_PRECISION,
    TRACKERS,
    TRAINABLE_PARTS,
    TrainConfig,
    ValidationConfig,
    adapter_parts,
    lr_scheduler_names,
)

__all__ = [
    "MIXED_PRECISION",
    "TRACKERS",
    "TRAINABLE_PARTS",
    "TrainConfig",
    "ValidationConfig",
    "adapter_parts",
    "apply_overrides",
    "lr_scheduler_names",
]

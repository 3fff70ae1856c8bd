"""Reading run configs: YAML files, the `--set` overrides, and which of the two layouts a training file uses.

Two layouts describe a training run, both views of one schema:
- the seed's layout (`MIVAConfig`: header keys, `unet_additional_kwargs`, `train_data`, `validation_data`, ...),
  whose keys declare the `TrainConfig` fields they feed (`MIVAConfig.train_config()`);
- the trainer's flat layout (`TrainConfig` itself: `adapter:`, `video_root:`, `validation:`, ...).

:func:`train_layout` decides between them from the two schemas' own field names, in this one place.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from .fields import apply_overrides, parse_section, read_yaml
from .schema import MIVAConfig
from .trainer import TrainConfig

__all__ = ["load_train_config", "read_yaml", "train_layout"]


def train_layout(data: Mapping) -> str:
    """`"trainer"` when the top-level keys of `data` are the trainer's own (`TrainConfig`): at least one key only it
    has and none only the seed's layout (`MIVAConfig`) has; else `"seed"` (whose loader names any unknown key)."""
    seed = {f.name for f in dataclasses.fields(MIVAConfig)}
    trainer = {f.name for f in dataclasses.fields(TrainConfig)}
    keys = set(data)
    return "trainer" if keys & (trainer - seed) and not keys & (seed - trainer) else "seed"


def load_train_config(
    path_or_dict: str | os.PathLike | Mapping | None,
    overrides: list[str] | None = None,
    *,
    tiny: bool = False,
    resume: str | None = None,
    tiny_defaults: Mapping | None = None,
):
    """The `TrainConfig` of a training file in either layout (`train_layout`), `--set` overrides applied.

    `tiny`: the offline `miva.tiny` models (trainer layout: `tiny_defaults` fill the keys left unset; seed layout:
    placeholder paths and a missing `train_data.video_root` become synthetic clips). `resume`: `"latest"` or a
    checkpoint folder. No file at all (`None`) is an empty trainer-layout config. Returns `(config, layout)`.
    """
    if path_or_dict is None:
        data, layout = {}, "trainer"
    else:
        data = read_yaml(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else dict(path_or_dict)
        data = data or {}
        layout = train_layout(data) if isinstance(data, Mapping) else "seed"
    if resume:
        overrides = [*(overrides or []), f"resume_from_checkpoint={resume}"]
    data = apply_overrides(data, overrides)
    if layout == "seed":
        return parse_section(MIVAConfig, data).train_config(tiny=tiny), layout
    if tiny:
        data["tiny"] = True
        for name, value in (tiny_defaults or {}).items():
            data.setdefault(name, value)
    return TrainConfig.from_dict(data), layout

"""Reading run configs: which of the two layouts a training file uses, and `load_train_config`.

One schema, two layouts of it:
- the trainer's flat layout (`TrainConfig` itself: `adapter:`, `video_root:`, `validation:`, ...);
- the seed's (research) layout (`MIVAConfig`: header keys, `unet_additional_kwargs`, `train_data`,
  `validation_data`, ...), imported into `TrainConfig` by `MIVAConfig.train_config()` through the one key map
  (`miva.config.training.RESEARCH_KEY_MAP`).

:func:`train_layout` tells them apart by that key map: the top-level keys it carries over under their own name are
shared; the others belong to one layout only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from functools import cache

from .fields import apply_overrides, parse_section, read_yaml
from .schema import MIVAConfig
from .trainer import TrainConfig
from .training import import_map

__all__ = ["load_train_config", "read_yaml", "train_layout"]


@cache
def _own_keys() -> tuple[frozenset, frozenset]:
    """(top-level keys only the research layout has, keys only the trainer's layout has): every key but those the
    key map carries over under their own name (`learning_rate`, `output_dir`, ...)."""
    shared = {path for path, name in import_map(MIVAConfig).items() if path == name}
    research = {f.name for f in dataclasses.fields(MIVAConfig)} - shared
    trainer = {f.name for f in dataclasses.fields(TrainConfig)} - shared
    return frozenset(research), frozenset(trainer)


def train_layout(data: Mapping) -> str:
    """`"trainer"` when the top-level keys of `data` include one only the trainer's layout has (`adapter`,
    `num_frames`, `seed`, ...) and none only the research layout has (`global_seed`, `train_data`, `scale_lr`, ...);
    else `"seed"` (the research layout, whose loader names any unknown key)."""
    research, trainer = _own_keys()
    keys = set(data)
    return "trainer" if keys & trainer and not keys & research else "seed"


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

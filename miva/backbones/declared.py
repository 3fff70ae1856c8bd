"""The backbones miva's adapters are built for, declared once: the id an adapter records in `adapter_config.json`
(`backbone`), the words used in messages, and the pipeline that loads such an adapter.

UNet adapters predate the field and record no `backbone`: a missing value means the AnimateDiff UNet. Every loader
checks the recorded backbone against its own with `check_recorded_backbone`, so a wrong-base error names both.
Imports nothing heavy (no torch, no diffusers).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKBONES", "UNET", "WAN", "BackboneKind", "backbone_named", "check_recorded_backbone", "wrong_base_message"]


@dataclass(frozen=True)
class BackboneKind:
    """One base architecture (its identity; the network itself is described by `miva.backbones.base.Backbone`,
    whose `kind` points here): `id` (recorded in `adapter_config.json`), `description` (for messages), `pipeline`
    (the miva pipeline class that loads its adapters), `config_class` (the adapter config class) and `trainer`
    (`"module:Class"` of its trainer, imported by `miva.training.train.train` when a run's base is this backbone)."""

    id: str
    description: str
    pipeline: str
    config_class: str
    trainer: str


UNET = BackboneKind("animatediff-unet", "the AnimateDiff UNet (SD1.5, UNetMotionModel)", "MIVAPipeline",
                "MIVAAdapterConfig", "miva.training.train:MIVATrainer")
WAN = BackboneKind("wan2.1-dit", "the Wan2.1 DiT (WanTransformer3DModel)", "MIVAWanPipeline", "WanAdapterConfig",
               "miva.backbones.wan.trainer:WanTrainer")
BACKBONES: tuple[BackboneKind, ...] = (UNET, WAN)


def backbone_named(recorded) -> BackboneKind:
    """The backbone an adapter recorded (None: the UNet, whose adapters record none); an unknown id is refused."""
    if recorded is None:
        return UNET
    for backbone in BACKBONES:
        if recorded == backbone.id:
            return backbone
    raise ValueError(f"backbone={recorded!r} is not a backbone miva knows; valid: {[b.id for b in BACKBONES]}")


def wrong_base_message(where: str, recorded: BackboneKind, base: BackboneKind) -> str:
    return (f"{where}: this adapter was made for {recorded.description} (backbone {recorded.id!r}), but this "
            f"pipeline's base is {base.description} (backbone {base.id!r}); load it with {recorded.pipeline} "
            f"on a {recorded.id} base")


def check_recorded_backbone(data, base: BackboneKind, where: str) -> None:
    """Raise one `ValueError` naming both backbones when the adapter config dict `data` was made for another base
    than `base`. Non-dict data is left to the config class's own checks."""
    if not isinstance(data, dict):
        return
    recorded = backbone_named(data.get("backbone"))
    if recorded != base:
        raise ValueError(wrong_base_message(where, recorded, base))

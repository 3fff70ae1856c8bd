"""`miva convert`: research checkpoints named by a config -> native MIVA adapter folders.

    miva convert --config research.yaml --out converted/        # -> converted/<adapter name>/ per adapter

The checkpoints are the config's `unet_checkpoint_path` (research full-UNet `.safetensors` or `.pt`) or, with
`load_from_adapter_ckpt: true`, its split `adapter_i2v_path` / `adapter_lora_path` / `ca_lora_path`. The config
also gives what the files do not hold (LoRA alphas `ca_lora_scale` / `lora_scale`, `q_downsample`, `ca_pe_mode`,
`sa_mode`, ...). The base UNet (`pretrained_model_path` + `motion_module_path`, or `--tiny`) supplies the
cross-attention W_O that split checkpoints need for the exact out-LoRA conversion, and every converted adapter is
test-loaded into it. Name the folders with `adapter_names`.

The checkpoint files must exist, also under `--tiny` (which only replaces the base model): the example configs
name placeholder checkpoints (`checkpoints/...`), so `miva convert --config examples/configs/... --tiny` stops with
one line naming the missing file until those paths point at real research checkpoints.
"""

from __future__ import annotations

import argparse
import os

from .common import add_config_arguments, log

HELP = "convert the research checkpoints of a config into native MIVA adapter folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder; one sub-folder per adapter")


def base_unet(config, tiny: bool):
    """The `UNetMotionModel` the adapters belong to (None when the config names no base model and not `tiny`)."""
    if tiny:
        from ..tiny import tiny_unet_motion

        return tiny_unet_motion(seed=0)
    if config.pretrained_model_path is None or config.motion_module_path is None:
        return None
    from diffusers import UNet2DConditionModel, UNetMotionModel

    from ..base_registry import resolve_base_path
    from ..loaders.base_models import load_motion_adapter

    path = resolve_base_path(config.pretrained_model_path)  # a known name ("miva-world"): its folder, offline
    unet2d = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    return UNetMotionModel.from_unet2d(unet2d, load_motion_adapter(config.motion_module_path))


def convert_config(config, out_dir: str, tiny: bool = False) -> list[str]:
    """Convert every adapter of `config` that has a checkpoint; returns the written folders."""
    from ..config import ConfigError
    from ..loaders import convert_research_checkpoint

    specs = [spec for spec in config.adapter_sources(tiny) if spec.source is not None]
    if not specs:
        raise ConfigError(
            "unet_checkpoint_path: the config names no checkpoint to convert (set it, or "
            "load_from_adapter_ckpt: true with adapter_i2v_path / adapter_lora_path / ca_lora_path)"
        )
    unet = base_unet(config, tiny)
    if unet is None:
        log(
            "no base model in the config: converting without it (split checkpoints with a CA out-LoRA need "
            "pretrained_model_path and motion_module_path)"
        )
    folders = []
    for spec in specs:
        folder = convert_research_checkpoint(
            spec.source, os.path.join(out_dir, spec.name), spec.config, unet=unet, adapter_name=spec.name
        )
        log(f"adapter {spec.name!r}: {spec.source} -> {folder}")
        folders.append(str(folder))
    return folders


def run(args: argparse.Namespace) -> int:
    from .common import load_args_config

    convert_config(load_args_config(args), args.out, tiny=args.tiny)
    return 0

"""`miva convert`: research checkpoints named by a config -> native MIVA adapter folders.

    miva convert --config research.yaml --out converted/        # -> converted/<adapter name>/ per adapter

The checkpoints are the config's `unet_checkpoint_path` (research full-UNet `.safetensors` or `.pt`) or, with
`load_from_adapter_ckpt: true`, its split `adapter_i2v_path` / `adapter_lora_path` / `ca_lora_path`. The config
also gives what the files do not hold (LoRA alphas `ca_lora_scale` / `lora_scale`, `q_downsample`, `ca_pe_mode`,
`sa_mode`, ...). The base UNet (`pretrained_model_path` + `motion_module_path`, or `--tiny`) supplies the
cross-attention W_O that split checkpoints need for the exact out-LoRA conversion, and every converted adapter is
test-loaded into it. Name the folders with `adapter_names`.

An official MIVA-Wan run (docs/wan.md) converts from the same command: `--config` is the run's own YAML (with
`dit_kwargs`), `--checkpoint` its flat checkpoint, `--base` the Wan base (a diffusers Wan folder, a Hub id or
`tiny-wan`; `--tiny` is `tiny-wan`); the folder is `<out>/<name>` (`--name`, default the YAML's file name):

    miva convert --config run.yaml --checkpoint run/checkpoint.pt --base Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out converted/

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
    wan = parser.add_argument_group("official MIVA-Wan runs (--config is the run's YAML with dit_kwargs)")
    wan.add_argument("--checkpoint", help="the official flat checkpoint (.pt / .safetensors)")
    wan.add_argument("--base", help="the Wan base: a diffusers Wan folder, a Hub id, or tiny-wan")
    wan.add_argument("--name", help="adapter name and sub-folder (default: the YAML's file name)")
    wan.add_argument("--research-exact-first", action="store_true", help="keep the official 'first'-mode bug")


def official_wan_settings(path: str) -> dict | None:
    """The official MIVA-Wan run YAML at `path` as a dict (it has `dit_kwargs`); None for any other config."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError):
        return None  # the research-config reader gives the detailed error
    return data if isinstance(data, dict) and "dit_kwargs" in data else None


def convert_official_wan(args: argparse.Namespace, settings: dict) -> str:
    """`miva convert` on an official MIVA-Wan run: its checkpoint onto the Wan base -> `<out>/<name>`."""
    from ..backbones.wan.convert import convert_official_wan_checkpoint, wan_base_transformer
    from ..config import ConfigError
    from ..loaders.sources import sanitize_name

    if args.checkpoint is None:
        raise ConfigError(f"--checkpoint: required with {args.config} (an official MIVA-Wan run YAML): the "
                          "checkpoint file it was trained into")
    if args.base is None and not args.tiny:
        raise ConfigError("--base: required for an official MIVA-Wan checkpoint (a diffusers Wan folder, a Hub id, "
                          "or tiny-wan), or --tiny")
    if args.overrides:
        raise ConfigError(f"--set {args.overrides[0]}: --set edits miva run configs; an official MIVA-Wan YAML is "
                          "read as it is")
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint: {args.checkpoint} not found")
    name = sanitize_name(args.name or os.path.splitext(os.path.basename(args.config))[0])
    folder = convert_official_wan_checkpoint(args.checkpoint, settings, wan_base_transformer(args.base, args.tiny),
                                             os.path.join(args.out, name), name=name,
                                             research_exact_first=args.research_exact_first)
    log(f"adapter {name!r}: {args.checkpoint} -> {folder}")
    return str(folder)


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
    from ..config import ConfigError
    from .common import load_args_config

    settings = official_wan_settings(args.config) if os.path.isfile(args.config) else None
    if settings is not None:
        convert_official_wan(args, settings)
        return 0
    for flag, value in (("--checkpoint", args.checkpoint), ("--base", args.base)):
        if value is not None:
            raise ConfigError(f"{flag}: only for an official MIVA-Wan run YAML (with dit_kwargs); {args.config} is a "
                              "research config, which names its checkpoints (unet_checkpoint_path) and base itself")
    convert_config(load_args_config(args), args.out, tiny=args.tiny)
    return 0

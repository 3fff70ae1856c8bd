"""`miva train`: train one MIVA adapter from a research-layout config (`MIVAConfig.train_config()` -> the trainer).

    miva train --config examples/configs/train.yaml [--set max_train_steps=100] [--resume latest]
    miva train --config examples/configs/train.yaml --tiny     # offline: tiny models, synthetic clips if needed
    accelerate launch -m miva.cli train --config X.yaml        # several processes (DDP)

Files in the trainer's own layout (`miva.training.train_config.TrainConfig`: top-level `adapter:`, `video_root:`,
...) and runs without `--config` are handed to `miva.training.command` unchanged.
"""

from __future__ import annotations

import argparse

from .common import log

HELP = "train a MIVA adapter from a config (research layout, or the trainer's TrainConfig layout)"
# Top-level keys only the trainer's TrainConfig layout has; the research layout nests them in sections.
TRAINCONFIG_ONLY_KEYS = (
    "adapter",
    "adapter_name",
    "video_root",
    "prompt",
    "num_frames",
    "validation",
    "tiny",
    "width",
    "height",
    "sample_frame_rate",
    "seed",
)
RESEARCH_SECTIONS = ("unet_additional_kwargs", "train_data", "validation_data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training YAML: research layout (docs/config.md) or TrainConfig layout")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key, YAML-parsed (e.g. max_train_steps=100); repeatable",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="offline miva.tiny models; model paths are ignored and "
        "a missing train_data.video_root becomes synthetic clips",
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="resume from the latest checkpoint of output_dir, or from a checkpoint folder",
    )


def is_trainconfig_layout(data: dict) -> bool:
    """Whether a loaded YAML mapping is in the trainer's own layout rather than the research layout."""
    return any(k in data for k in TRAINCONFIG_ONLY_KEYS) and not any(k in data for k in RESEARCH_SECTIONS)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config_fields import ConfigError

    if not (args.config or args.tiny or args.overrides):
        raise ConfigError("--config: required (a training YAML, see docs/config.md), or --tiny for an offline run")
    if args.config:
        from omegaconf import OmegaConf

        if not Path(args.config).is_file():
            raise FileNotFoundError(f"--config {args.config}: file not found")
        data = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True) or {}
    if not args.config or is_trainconfig_layout(data):
        from ..training import command

        return command.run(args)
    from ..config import load_config
    from ..training.train import train

    overrides = list(args.overrides) + ([f"resume_from_checkpoint={args.resume}"] if args.resume else [])
    train_config = load_config(args.config, overrides).train_config(tiny=args.tiny)
    path = train(train_config)
    log(f"saved {path}")
    return 0

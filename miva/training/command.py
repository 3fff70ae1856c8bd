"""`miva train`: the command-line front of the trainer (also `python -m miva.training.train`).

A `miva.cli` subcommand module: `HELP`, `add_arguments(parser)` and `run(args)`. Only argparse is imported at module
level, so `miva --help` stays fast; torch, diffusers and accelerate load inside `run`.

    miva train --config train.yaml [--resume latest] [--set max_train_steps=500 --set adapter.use_ca_lora=true]
    accelerate launch -m miva.training.train --config train.yaml
    miva train --tiny --set output_dir=outputs/tiny     # offline smoke run on synthetic clips
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a MIVA adapter on a few clips of one motion (single process or under accelerate launch)"

# `--tiny` fills these in unless the config or --set gives them: a small, fast offline run on synthetic clips
# (written to <output_dir>/synthetic_clips when video_root is not set).
TINY_DEFAULTS = dict(
    width=64,
    height=64,
    num_frames=8,
    sample_frame_rate=1,
    mixed_precision="no",
    max_train_steps=30,
    checkpointing_steps=10,
    validation_steps=30,
    learning_rate=1e-3,
    prompt="a photo of clouds moving",
    validation={"num_inference_steps": 2},
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training YAML in the TrainConfig layout (miva.training.train_config)")
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="resume from the latest checkpoint of output_dir, or from a checkpoint folder",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="use the offline miva.tiny model; unless set otherwise: 64x64, 8 frames, 30 steps, 10 synthetic clips",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, YAML-parsed (dotted for sections: adapter.use_ca_lora=true); repeatable",
    )


def config_from_args(args: argparse.Namespace):
    """The `TrainConfig` that `--config`, `--set`, `--tiny` and `--resume` describe (in that order of precedence,
    later ones winning; `--tiny` defaults only fill keys left unset)."""
    from .train_config import TrainConfig, apply_overrides

    data: dict = {}
    if args.config:
        from omegaconf import OmegaConf

        if not Path(args.config).is_file():
            raise FileNotFoundError(f"--config {args.config}: file not found")
        data = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True) or {}
    data = apply_overrides(data, args.overrides)
    if args.tiny:
        data["tiny"] = True
        for key, value in TINY_DEFAULTS.items():
            data.setdefault(key, value)
    if args.resume:
        data["resume_from_checkpoint"] = args.resume
    return TrainConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .train import train

    path = train(config_from_args(args))
    if PartialState().is_main_process:  # once, not once per process under accelerate launch
        print(path)
    return 0

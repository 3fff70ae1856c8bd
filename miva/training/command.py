"""`miva train`: the command-line front of the trainer (also `python -m miva.training.train` and
`accelerate launch -m miva.training.train`); `miva.commands.train` is this module under `miva.cli`.

A `miva.cli` subcommand module: `HELP`, `add_arguments(parser)` and `run(args)`. Only argparse is imported at module
level, so `miva --help` stays fast; torch, diffusers and accelerate load inside `run`.

    miva train --config examples/configs/train.yaml [--set max_train_steps=100] [--resume latest]
    miva train --config own_layout.yaml --set adapter.use_ca_lora=true    # the trainer's TrainConfig layout
    miva train --tiny --set output_dir=outputs/tiny     # offline smoke run on synthetic clips
    accelerate launch -m miva.training.train --config X.yaml        # several processes (DDP)

Which layout a file uses is decided by `miva.config.train_layout` from the research key map.
"""

from __future__ import annotations

import argparse

HELP = "train a MIVA adapter from a config (research layout, or the trainer's TrainConfig layout)"

# `--tiny` fills these in for a trainer-layout config unless it or --set gives them: a small, fast offline run on
# synthetic clips (written to <output_dir>/synthetic_clips when video_root is not set).
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
    parser.add_argument("--config", help="training YAML: research layout (docs/config.md) or TrainConfig layout")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key, YAML-parsed (e.g. max_train_steps=100, adapter.use_ca_lora=true); repeatable",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="offline miva.tiny models; model paths are ignored and missing clips become synthetic clips "
        "(TrainConfig layout, unless set otherwise: 64x64, 8 frames, 30 steps)",
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="resume from the latest checkpoint of output_dir, or from a checkpoint folder",
    )


def config_from_args(args: argparse.Namespace):
    """The `TrainConfig` that `--config`, `--set`, `--tiny` and `--resume` describe (later ones win; `--tiny`
    defaults only fill keys left unset)."""
    return _load(args)[0]


def _load(args: argparse.Namespace):
    from ..config import ConfigError, load_train_config

    if not (args.config or args.tiny or args.overrides):
        raise ConfigError("--config: required (a training YAML, see docs/config.md), or --tiny for an offline run")
    return load_train_config(args.config, args.overrides, tiny=args.tiny, resume=args.resume,
                             tiny_defaults=TINY_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from . import train as trainer

    config, layout = _load(args)
    path = trainer.train(config)
    if layout == "seed":
        print(f"saved {path}", flush=True)
    elif PartialState().is_main_process:  # once, not once per process under accelerate launch
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m miva.training.train` / `accelerate launch -m miva.training.train`: the same as `miva train` (a
    config in the research layout or in the TrainConfig layout, `--set`, `--tiny`, `--resume`)."""
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(prog="python -m miva.training.train", description=HELP)
    add_arguments(parser)
    parser.set_defaults(command="train")
    return run(parser.parse_args(argv))

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
import sys

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


def resume_command(args: argparse.Namespace) -> str:
    """The `miva train` command line that resumes the run `args` describe from its latest checkpoint."""
    import shlex

    words = ["miva", "train"] + (["--config", args.config] if args.config else []) + (["--tiny"] if args.tiny else [])
    for override in args.overrides:
        if not override.replace(" ", "").startswith("resume_from_checkpoint="):
            words += ["--set", override]
    return shlex.join([*words, "--resume", "latest"])


def interrupted_message(args: argparse.Namespace, output_dir: str) -> str:
    """One line for Ctrl-C: the step reached (from the training log), the last checkpoint and how to resume."""
    import json
    from pathlib import Path

    from .checkpointing import LOG_FILE, list_checkpoints

    step = 0
    log = Path(output_dir) / LOG_FILE
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    checkpoints = list_checkpoints(output_dir)
    saved = (f"last checkpoint: {checkpoints[-1][1]}" if checkpoints
             else "no checkpoint yet, so this starts again from step 0")
    return f"interrupted at step {step} ({saved}); resume with: {resume_command(args)}"


def run(args: argparse.Namespace) -> int:
    """Train; Ctrl-C re-raises `KeyboardInterrupt` whose message (main process only) says how to resume."""
    from accelerate import PartialState

    from . import train as trainer

    config, layout = _load(args)
    interrupted = False
    try:
        path = trainer.train(config)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # raised out here, the interrupted frames are freed first: their progress bar closes above
        main_process = PartialState().is_main_process
        raise KeyboardInterrupt(interrupted_message(args, config.output_dir) if main_process else "")
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
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt as stop:
        if str(stop):
            print(f"\nmiva train: {stop}", file=sys.stderr, flush=True)
        return 130

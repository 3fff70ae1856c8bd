"""Train MIVA adapters on MotionWorld clips with miva's own trainer (what `miva train` runs).

    python -m miva.world.adapters --motion right --out outputs/world/right               # one adapter
    python -m miva.world.adapters --ship                                                 # rebuild the shipped ones

:func:`world_train_config` is the recipe as a `miva train` config dict (also written next to the adapter as
``train_config.yaml``, so ``miva train --config that.yaml`` repeats it): 10 clips of 8 frames at 64x64 of training
scenes under one motion, prompts that describe the scene only, the research adapter (cross-frame branch "first" +
MotionLoRA + CA-LoRA, research loss), no flips (a flip would turn "right" into "left").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from . import ADAPTERS_PATH, WORLD_ID, base_fingerprint
from .data import write_world_clips

__all__ = ["RECIPE_STEPS", "SHIPPED", "train_world_adapter", "world_train_config"]

# name -> motion of the adapters that ship in miva/world/weights/adapters/.
SHIPPED = {"right": "right", "zoom_in": "zoom_in", "rotate_cw": "rotate_cw"}
RESEARCH_PARTS = {"use_i2v": True, "sa_mode": "first", "use_motion_lora": True, "use_ca_lora": True}
# Measured on base v1 ("right", 8 held-out scenes, plain init): 400 steps, lr 1e-3, rank 8 -> 83 deg direction error;
# 600 steps, lr 3e-3, rank 16 with the cross-frame branch's own W_Q -> 49 deg.
WORLD_PARTS = {**RESEARCH_PARTS, "i2v_train_q": True}
RECIPE_STEPS = 600  # training steps of the recipe (batch 2: 120 passes over 10 clips)


def world_train_config(
    output_dir: str | Path,
    video_root: str | Path,
    *,
    adapter_name: str,
    adapter: dict | None = None,
    steps: int = RECIPE_STEPS,
    learning_rate: float = 3e-3,
    rank: int = 16,
    seed: int = 0,
    batch_size: int = 2,
    extra: dict | None = None,
    base: str | Path = WORLD_ID,
) -> dict:
    """The MotionWorld adapter recipe as a ``TrainConfig`` dict (the layout of ``miva train --config``)."""
    parts = {**WORLD_PARTS, **(adapter or {})}
    parts.setdefault("motion_lora_rank", rank)
    parts.setdefault("ca_lora_rank", rank)
    parts.setdefault("motion_lora_scale", float(rank))  # alpha = rank: a delta factor of 1 on this small model
    parts.setdefault("ca_lora_scale", float(rank))
    return {
        "output_dir": str(output_dir),
        "pretrained_model_path": str(base),
        "motion_module_path": f"{base}/motion_adapter",
        "adapter_name": adapter_name,
        "adapter": parts,
        "video_root": str(video_root),
        "num_frames": 8,
        "sample_frame_rate": 1,
        "width": 64,
        "height": 64,
        "random_flip": False,
        "learning_rate": learning_rate,
        "train_batch_size": batch_size,
        "max_train_steps": steps,
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "checkpointing_steps": max(steps // 2, 1),
        "checkpoints_total_limit": 1,
        "validation_steps": None,
        "seed": seed,
        "report_to": "none",
        **(extra or {}),
    }


def train_world_adapter(
    motion: str,
    output_dir: str | Path,
    *,
    adapter_name: str | None = None,
    num_clips: int = 10,
    first_scene: int = 0,
    log=print,
    **recipe,
) -> dict:
    """Write the clips, train with :func:`miva.training.train.train`, return ``{"adapter": folder, "seconds",
    "config"}``. ``recipe`` goes to :func:`world_train_config`."""
    from omegaconf import OmegaConf

    from ..training.train import train
    from ..training.train_config import TrainConfig

    output_dir = Path(output_dir)
    clips = output_dir / "clips"
    write_world_clips(clips, motion, num_clips=num_clips, first_scene=first_scene)
    config = world_train_config(output_dir, clips, adapter_name=adapter_name or motion.replace("+", "_"), **recipe)
    (output_dir / "train_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    start = time.perf_counter()
    adapter = train(TrainConfig.from_dict(config))
    seconds = time.perf_counter() - start
    log(f"trained {motion!r} on {num_clips} clips in {seconds:.0f} s -> {adapter}")
    return {"adapter": Path(adapter), "seconds": seconds, "config": config}


def ship(log=print, steps: int = RECIPE_STEPS) -> None:
    """Retrain the shipped adapters into ``miva/world/weights/adapters/<name>`` (with a sample GIF each); their
    ``training.json`` records the recipe's steps and clips and the base they were trained on
    (:func:`~miva.world.base_fingerprint`)."""
    from .samples import write_adapter_sample

    ADAPTERS_PATH.mkdir(parents=True, exist_ok=True)
    for name, motion in SHIPPED.items():
        work = ADAPTERS_PATH.parent / f".train_{name}"
        record = work / "training.json"
        if record.is_file():  # trained by an earlier, interrupted `--ship`
            result = {"adapter": work / "adapter", **json.loads(record.read_text())}
        else:
            result = train_world_adapter(motion, work, adapter_name=name, log=log, steps=steps)
            record.write_text(json.dumps({"seconds": result["seconds"]}), encoding="utf-8")
        target = ADAPTERS_PATH / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(result["adapter"], target)
        shutil.copy2(work / "train_config.yaml", target / "train_config.yaml")
        record = {"motion": motion, "seconds": round(result["seconds"], 1), "clips": 10, "steps": steps,
                  "base": base_fingerprint()}
        (target / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_adapter_sample(target, name, motion)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miva.world.adapters", description=__doc__.split("\n")[0])
    parser.add_argument("--motion", help="motion name (e.g. right, zoom_in, rotate_cw, right+down)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--steps", type=int, default=RECIPE_STEPS)
    parser.add_argument("--ship", action="store_true", help="rebuild the shipped adapters")
    args = parser.parse_args(argv)
    if args.ship:
        ship(steps=args.steps)
        return 0
    if not args.motion or not args.out:
        parser.error("--motion and --out are required (or --ship)")
    train_world_adapter(args.motion, args.out, num_clips=args.clips, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

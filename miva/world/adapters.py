"""Train MIVA adapters on MotionWorld clips with miva's own trainer (what `miva train` runs).

    python -m miva.world.adapters --motion right --out outputs/world/right               # one adapter
    python -m miva.world.adapters --ship [right ...]                                     # rebuild the shipped ones

:func:`world_train_config` is the recipe as a `miva train` config dict (also written next to the adapter as
``train_config.yaml``, so ``miva train --config that.yaml`` repeats it): 10 clips of 8 frames at 64x64 of training
scenes under one motion, prompts that describe the scene only, the research adapter (cross-frame branch "first" +
MotionLoRA + CA-LoRA, research loss), no flips (a flip would turn "right" into "left").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ADAPTERS_PATH, WORLD_ID, base_fingerprint
from .data import write_world_clips

__all__ = [
    "RECIPE_STEPS",
    "SHIPPED",
    "ShippedAdapter",
    "recipe_fingerprint",
    "world_recipe_fingerprint",
    "saved_recipe_fingerprint",
    "ship",
    "train_world_adapter",
    "validation_rank",
    "world_train_config",
]

RESEARCH_PARTS = {"use_i2v": True, "sa_mode": "first", "use_motion_lora": True, "use_ca_lora": True}
# Measured on base v1 ("right", 8 held-out scenes, plain init): 400 steps, lr 1e-3, rank 8 -> 83 deg direction error;
# 600 steps, lr 3e-3, rank 16 with the cross-frame branch's own W_Q -> 49 deg.
WORLD_PARTS = {**RESEARCH_PARTS, "i2v_train_q": True}
RECIPE_STEPS = 600  # training steps of the recipe (batch 2: 120 passes over 10 clips)
RECIPE_CLIPS = 10


@dataclass(frozen=True)
class ShippedAdapter:
    """How one adapter in miva/world/weights/adapters/ is made: its motion, its :func:`train_world_adapter`
    arguments over the recipe above, and the training seeds tried; the seed that scores best on the validation
    scenes (:func:`validation_rank`) ships."""

    motion: str
    recipe: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)

    @property
    def steps(self) -> int:
        return self.recipe.get("steps", RECIPE_STEPS)

    @property
    def clips(self) -> int:
        return self.recipe.get("num_clips", RECIPE_CLIPS)


# The few-shot benchmark chose right's recipe (spatiotemporal Q with 3D RoPE, 2400 steps: benchmarks/motion_world).
# zoom_in and rotate_cw keep the plain recipe: no recipe measured makes them on this base (it never zooms or turns).
STQ_ROPE_3D = {"q_downsample": True, "q_downsample_ratio": 2, "ca_pe_mode": "rope_3d"}
SHIPPED = {
    "right": ShippedAdapter("right", {"adapter": STQ_ROPE_3D, "steps": 2400}),
    "zoom_in": ShippedAdapter("zoom_in"),
    "rotate_cw": ShippedAdapter("rotate_cw"),
}

# TrainConfig fields that say where files are or how a run is logged and checkpointed, not what is trained
# (checkpoints resume exactly, so where they fall changes no weight).
_NOT_RECIPE = frozenset({
    "output_dir", "video_root", "pretrained_model_path", "motion_module_path", "adapter_name", "oa_bases_path",
    "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "dataloader_num_workers",
    "push_to_hub", "hub_model_id", "hub_private", "report_to",
})
_NOT_ADAPTER_RECIPE = frozenset({"base_model", "motion_adapter"})


def recipe_fingerprint(config: dict) -> str:
    """12 hex digits that identify how an adapter is trained (parts, ranks, optimiser, steps, seed, frames), whatever
    its folders: two `miva train` configs with the same fingerprint train the same adapter from the same clips and
    base. ``config`` is a ``TrainConfig`` mapping (e.g. a ``train_config.yaml`` or :func:`world_train_config`);
    defaults are filled in first, so a short config and its full dump agree."""
    from ..training.train_config import TrainConfig

    full = TrainConfig.from_dict(dict(config)).to_dict()
    recipe = {key: value for key, value in full.items() if key not in _NOT_RECIPE}
    recipe["adapter"] = {key: value for key, value in full["adapter"].items() if key not in _NOT_ADAPTER_RECIPE}
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def world_recipe_fingerprint(**recipe) -> str:
    """:func:`recipe_fingerprint` of what :func:`train_world_adapter` trains with ``recipe`` (its keyword arguments:
    ``adapter``, ``steps``, ``seed``, ``extra``, ...; the clip count names no config field and is left out)."""
    recipe = {key: value for key, value in recipe.items() if key not in ("num_clips", "first_scene")}
    return recipe_fingerprint(world_train_config(".", ".", adapter_name="fingerprint", **recipe))


def saved_recipe_fingerprint(folder: str | Path) -> str | None:
    """:func:`recipe_fingerprint` of the ``train_config.yaml`` kept next to an adapter, or None without one."""
    from omegaconf import OmegaConf

    path = Path(folder) / "train_config.yaml"
    if not path.is_file():
        return None
    return recipe_fingerprint(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


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
    num_clips: int = RECIPE_CLIPS,
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


def validation_rank(summary: dict) -> tuple[float, float]:
    """How a training is ranked among others of its recipe: the share of validation videos that make the target's
    motion class, then their PSNR against the ground truth (both generic to every motion)."""
    return summary["class_accuracy"], summary["psnr"]


def _validate(adapter: Path, motion: str) -> dict:
    """Scores of ``adapter`` on the validation scenes (held-out, never the reported ones)."""
    from . import load_pipeline
    from .evaluate import HELDOUT_SCENES, VALIDATION_SCENE, evaluate_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters([str(adapter)], adapter_names=["candidate"])
    result = evaluate_pipeline(pipe, motion, scenes=HELDOUT_SCENES, first_scene=VALIDATION_SCENE)
    return {key: result[key] for key in ("class_accuracy", "direction_error", "zoom_error", "turn_error", "psnr")}


def _train_candidate(name: str, shipped: ShippedAdapter, seed: int, log) -> dict:
    """Train (or take from an interrupted ``--ship`` of the same recipe) one seed of ``shipped`` and validate it:
    ``{"work", "seed", "seconds", "validation"}``."""
    work = ADAPTERS_PATH.parent / f".train_{name}_seed{seed}"
    recipe = {**shipped.recipe, "seed": seed}
    record = work / "training.json"
    if record.is_file() and saved_recipe_fingerprint(work) == world_recipe_fingerprint(**recipe):
        return {"work": work, **json.loads(record.read_text())}
    shutil.rmtree(work, ignore_errors=True)
    result = train_world_adapter(shipped.motion, work, adapter_name=name, log=log, **recipe)
    candidate = {"seed": seed, "seconds": round(result["seconds"], 1),
                 "validation": _validate(result["adapter"], shipped.motion)}
    log(f"{name} seed {seed}: validation {candidate['validation']}")
    record.write_text(json.dumps(candidate), encoding="utf-8")
    return {"work": work, **candidate}


def ship(names: list[str] | None = None, log=print) -> None:
    """Retrain shipped adapters (default: all of :data:`SHIPPED`) into ``miva/world/weights/adapters/<name>``: each
    seed of its recipe is trained and scored on the validation scenes, the best (:func:`validation_rank`) is kept
    with its ``train_config.yaml``, a sample GIF and a ``training.json`` that records the motion, steps, clips,
    seed, every candidate's validation scores and the base (:func:`~miva.world.base_fingerprint`)."""
    from .samples import write_adapter_sample

    unknown = sorted(set(names or ()) - set(SHIPPED))
    if unknown:
        raise ValueError(f"names={unknown} are not shipped adapters; choose from {sorted(SHIPPED)}")
    ADAPTERS_PATH.mkdir(parents=True, exist_ok=True)
    for name in names or SHIPPED:
        shipped = SHIPPED[name]
        candidates = [_train_candidate(name, shipped, seed, log) for seed in shipped.seeds]
        best = max(candidates, key=lambda candidate: validation_rank(candidate["validation"]))
        target = ADAPTERS_PATH / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(best["work"] / "adapter", target)
        shutil.copy2(best["work"] / "train_config.yaml", target / "train_config.yaml")
        record = {"motion": shipped.motion, "seconds": best["seconds"], "clips": shipped.clips, "steps": shipped.steps,
                  "seed": best["seed"], "base": base_fingerprint(),
                  "validation": {str(c["seed"]): c["validation"] for c in candidates}}
        (target / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_adapter_sample(target, name, shipped.motion)
        for candidate in candidates:
            shutil.rmtree(candidate["work"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miva.world.adapters", description=__doc__.split("\n")[0])
    parser.add_argument("--motion", help="motion name (e.g. right, zoom_in, rotate_cw, right+down)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--clips", type=int, default=RECIPE_CLIPS)
    parser.add_argument("--steps", type=int, default=RECIPE_STEPS)
    parser.add_argument("--ship", nargs="*", metavar="NAME", choices=sorted(SHIPPED),
                        help="rebuild the shipped adapters (all, or the names given)")
    args = parser.parse_args(argv)
    if args.ship is not None:
        ship(args.ship or None)
        return 0
    if not args.motion or not args.out:
        parser.error("--motion and --out are required (or --ship)")
    train_world_adapter(args.motion, args.out, num_clips=args.clips, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

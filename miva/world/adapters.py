"""Train MIVA adapters on MotionWorld clips with miva's own trainer (what `miva train` runs).

    python -m miva.world.adapters --motion right --out outputs/world/right               # one adapter
    python -m miva.world.adapters --ship [right ...]                                     # rebuild the shipped ones
    python -m miva.world.adapters --base wan --ship [right ...]                          # ... on the Wan base

:func:`world_train_config` is the recipe as a `miva train` config dict (also written next to the adapter as
``train_config.yaml``, so ``miva train --config that.yaml`` repeats it): 10 clips of training scenes under one
motion at 64x64, prompts that describe the scene only, no flips (a flip would turn "right" into "left"). On the UNet
base (``world="unet"``): 8 frames, the research adapter (cross-frame branch "first" + MotionLoRA + CA-LoRA). On the
Wan base (``world="wan"``): 9 frames, the official MIVA-Wan adapter (cross-frame branch "first_prev" with the
adaptive first-frame weight + the implicit prompt) plus miva's MotionLoRA (:data:`WAN_PARTS`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ADAPTERS_PATH, WAN_ADAPTERS_PATH, WORLD_BASES, base_fingerprint, world_base
from .data import write_world_clips

__all__ = [
    "RECIPES",
    "RECIPE_STEPS",
    "SHIPPED",
    "SHIPPED_WAN",
    "WAN_PARTS",
    "WAN_RECIPE",
    "ShippedAdapter",
    "recipe_fingerprint",
    "shipped_recipes",
    "world_recipe_fingerprint",
    "saved_recipe_fingerprint",
    "ship",
    "train_world_adapter",
    "train_world_config",
    "validation_rank",
    "world_train_config",
]

RESEARCH_PARTS = {"use_i2v": True, "sa_mode": "first", "use_motion_lora": True, "use_ca_lora": True}
# Measured on base v1 ("right", 8 held-out scenes, plain init): 400 steps, lr 1e-3, rank 8 -> 83 deg direction error;
# 600 steps, lr 3e-3, rank 16 with the cross-frame branch's own W_Q -> 49 deg.
WORLD_PARTS = {**RESEARCH_PARTS, "i2v_train_q": True}
RECIPE_STEPS = 600  # training steps of the recipe (batch 2: 120 passes over 10 clips)
RECIPE_CLIPS = 10
# The Wan world's parts (docs/wan.md): the official MIVA-Wan adapter, i.e. the cross-frame branch "first_prev" (keys
# of frame 0 and of the previous frame under one softmax, frame 0's share from the adaptive weight) and the implicit
# prompt in place of the text cross-attention; plus miva's MotionLoRA on the 3-D self-attention and the branch's own
# W_Q (both helped on the UNet world). CA-LoRA is refused beside the implicit prompt, spatiotemporal Q is UNet-only.
WAN_PARTS = {"use_i2v": True, "sa_mode": "first_prev", "sa_first_frame_scale": "adaptive_0.2", "i2v_train_q": True,
             "ca_mode": "implicit", "use_ca_lora": False, "use_motion_lora": True}
# The recipe's numbers per base (the lead tunes the Wan ones on the validation scenes; not measured yet). `rank`
# sets the MotionLoRA rank (alpha = rank) and, on Wan, the implicit prompt's rank.
WAN_RECIPE = {"steps": 600, "learning_rate": 1e-3, "rank": 16, "batch_size": 2, "num_frames": 9}
RECIPES = {
    "unet": {"steps": RECIPE_STEPS, "learning_rate": 3e-3, "rank": 16, "batch_size": 2, "num_frames": 8},
    "wan": WAN_RECIPE,
}


@dataclass(frozen=True)
class ShippedAdapter:
    """How one adapter in miva/world/weights/adapters/ is made: its motion, its :func:`train_world_adapter`
    arguments over the recipe above, and the training seeds tried; the seed that scores best on the validation
    scenes (:func:`validation_rank`) ships."""

    motion: str
    recipe: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    world: str = "unet"  # the MotionWorld base it is trained on: "unet" / "wan"

    @property
    def steps(self) -> int:
        return self.recipe.get("steps", RECIPES[self.world]["steps"])

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
# The Wan world's: the same three motions on the plain Wan recipe (miva/world/weights/wan_adapters/<name>), at the
# step budget the validation scenes chose (benchmarks/motion_world/README.md, session 11): zoom_in moves in 55% / 80% /
# 95% of the validation videos after 600 / 1200 / 2400 steps, rotate_cw in 50% / 95% after 600 / 1200.
SHIPPED_WAN = {
    "right": ShippedAdapter("right", world="wan"),
    "zoom_in": ShippedAdapter("zoom_in", {"steps": 2400}, world="wan"),
    "rotate_cw": ShippedAdapter("rotate_cw", {"steps": 1200}, world="wan"),
}


def shipped_recipes(base: str = "unet") -> dict[str, ShippedAdapter]:
    """:data:`SHIPPED` (``base="unet"``) or :data:`SHIPPED_WAN` (``"wan"``)."""
    world_base(base)
    return SHIPPED if base == "unet" else SHIPPED_WAN


def _ship_folder(base: str) -> Path:
    """Where ``--ship`` writes the adapters of MotionWorld ``base`` (:func:`miva.world.adapters_path`)."""
    return ADAPTERS_PATH if base == "unet" else WAN_ADAPTERS_PATH

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
    steps: int | None = None,
    learning_rate: float | None = None,
    rank: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    extra: dict | None = None,
    base: str | Path | None = None,
    world: str = "unet",
) -> dict:
    """The MotionWorld adapter recipe of base ``world`` (``"unet"`` / ``"wan"``) as a ``TrainConfig`` dict (the
    layout of ``miva train --config``). ``steps``, ``learning_rate``, ``rank``, ``batch_size`` None: the base's
    :data:`RECIPES`; ``base``: the model path recorded (default: the world base's registry name)."""
    world_base(world)  # a clear error for anything but "unet" / "wan"
    numbers = RECIPES[world]
    steps, learning_rate, rank, batch_size = (numbers[k] if v is None else v for k, v in (
        ("steps", steps), ("learning_rate", learning_rate), ("rank", rank), ("batch_size", batch_size)))
    base = str(base or WORLD_BASES[world])
    parts = {**(WAN_PARTS if world == "wan" else WORLD_PARTS), **(adapter or {})}
    parts.setdefault("motion_lora_rank", rank)
    parts.setdefault("motion_lora_scale", float(rank))  # alpha = rank: a delta factor of 1 on this small model
    if world == "wan":
        parts.setdefault("implicit_rank", rank)
        models = {"pretrained_model_path": base}  # a Wan base has no motion module
    else:
        parts.setdefault("ca_lora_rank", rank)
        parts.setdefault("ca_lora_scale", float(rank))
        models = {"pretrained_model_path": base, "motion_module_path": f"{base}/motion_adapter"}
    return {
        "output_dir": str(output_dir),
        **models,
        "adapter_name": adapter_name,
        "adapter": parts,
        "video_root": str(video_root),
        "num_frames": numbers["num_frames"],
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
    "config"}``. ``recipe`` goes to :func:`world_train_config` (``world="wan"``: on the Wan base)."""
    output_dir = Path(output_dir)
    clips = output_dir / "clips"
    config = world_train_config(output_dir, clips, adapter_name=adapter_name or motion.replace("+", "_"), **recipe)
    write_world_clips(clips, motion, num_clips=num_clips, num_frames=config["num_frames"], first_scene=first_scene)
    return train_world_config(config, output_dir, f"{motion!r} on {num_clips} clips", log)


def train_world_config(config: dict, output_dir: str | Path, what: str, log=print) -> dict:
    """Keep ``config`` (a :func:`world_train_config` dict whose clips are written) as ``output_dir/train_config.yaml``,
    train it with :func:`miva.training.train.train`, return ``{"adapter": folder, "seconds", "config"}``."""
    from omegaconf import OmegaConf

    from ..training.train import train
    from ..training.train_config import TrainConfig

    (Path(output_dir) / "train_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    start = time.perf_counter()
    adapter = train(TrainConfig.from_dict(config))
    seconds = time.perf_counter() - start
    log(f"trained {what} in {seconds:.0f} s -> {adapter}")
    return {"adapter": Path(adapter), "seconds": seconds, "config": config}


def validation_rank(summary: dict) -> tuple[float, float]:
    """How a training is ranked among others of its recipe: the share of validation videos that make the target's
    motion class, then their PSNR against the ground truth (both generic to every motion)."""
    return summary["class_accuracy"], summary["psnr"]


def _validate(adapter: Path, motion: str, base: str = "unet") -> dict:
    """Scores of ``adapter`` on the validation scenes (held-out, never the reported ones) of MotionWorld ``base``."""
    from . import load_pipeline
    from .evaluate import HELDOUT_SCENES, VALIDATION_SCENE, evaluate_pipeline

    pipe = load_pipeline(base=base)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters([str(adapter)], adapter_names=["candidate"])
    result = evaluate_pipeline(pipe, motion, scenes=HELDOUT_SCENES, first_scene=VALIDATION_SCENE)
    return {key: result[key] for key in ("class_accuracy", "direction_error", "zoom_error", "turn_error", "psnr")}


def _train_candidate(name: str, shipped: ShippedAdapter, seed: int, log) -> dict:
    """Train (or take from an interrupted ``--ship`` of the same recipe) one seed of ``shipped`` and validate it:
    ``{"work", "seed", "seconds", "validation"}``."""
    prefix = "" if shipped.world == "unet" else f"{shipped.world}_"
    work = _ship_folder(shipped.world).parent / f".train_{prefix}{name}_seed{seed}"
    recipe = {**shipped.recipe, "seed": seed, "world": shipped.world}
    record = work / "training.json"
    if record.is_file() and saved_recipe_fingerprint(work) == world_recipe_fingerprint(**recipe):
        return {"work": work, **json.loads(record.read_text())}
    shutil.rmtree(work, ignore_errors=True)
    result = train_world_adapter(shipped.motion, work, adapter_name=name, log=log, **recipe)
    candidate = {"seed": seed, "seconds": round(result["seconds"], 1),
                 "validation": _validate(result["adapter"], shipped.motion, shipped.world)}
    log(f"{name} seed {seed}: validation {candidate['validation']}")
    record.write_text(json.dumps(candidate), encoding="utf-8")
    return {"work": work, **candidate}


def ship(names: list[str] | None = None, log=print, base: str = "unet") -> None:
    """Retrain the adapters shipped for MotionWorld ``base`` (default: all of :func:`shipped_recipes`) into
    ``miva/world/weights/adapters/<name>`` (``wan_adapters/<name>`` on the Wan base): each seed of its recipe is
    trained and scored on the validation scenes, the best (:func:`validation_rank`) is kept with its
    ``train_config.yaml``, a sample GIF and a ``training.json`` that records the motion, steps, clips, seed, every
    candidate's validation scores and the base (:func:`~miva.world.base_fingerprint`)."""
    from .samples import write_adapter_sample

    recipes = shipped_recipes(base)
    unknown = sorted(set(names or ()) - set(recipes))
    if unknown:
        raise ValueError(f"names={unknown} are not shipped adapters of the {base} base; choose from {sorted(recipes)}")
    folder = _ship_folder(base)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or recipes:
        shipped = recipes[name]
        candidates = [_train_candidate(name, shipped, seed, log) for seed in shipped.seeds]
        best = max(candidates, key=lambda candidate: validation_rank(candidate["validation"]))
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(best["work"] / "adapter", target)
        shutil.copy2(best["work"] / "train_config.yaml", target / "train_config.yaml")
        record = {"motion": shipped.motion, "seconds": best["seconds"], "clips": shipped.clips, "steps": shipped.steps,
                  "seed": best["seed"], "base": base_fingerprint(base=base),
                  "validation": {str(c["seed"]): c["validation"] for c in candidates}}
        (target / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_adapter_sample(target, name, shipped.motion, base=base)
        for candidate in candidates:
            shutil.rmtree(candidate["work"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miva.world.adapters", description=__doc__.split("\n")[0])
    parser.add_argument("--motion", help="motion name (e.g. right, zoom_in, rotate_cw, right+down)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--base", choices=sorted(WORLD_BASES), default="unet",
                        help="the MotionWorld base: unet (miva-world, default) or wan (miva-world-wan)")
    parser.add_argument("--clips", type=int, default=RECIPE_CLIPS)
    parser.add_argument("--steps", type=int, help="training steps (default: the base's recipe)")
    parser.add_argument("--ship", nargs="*", metavar="NAME", choices=sorted(SHIPPED),
                        help="rebuild the shipped adapters (all, or the names given)")
    args = parser.parse_args(argv)
    if args.ship is not None:
        ship(args.ship or None, base=args.base)
        return 0
    if not args.motion or not args.out:
        parser.error("--motion and --out are required (or --ship)")
    train_world_adapter(args.motion, args.out, num_clips=args.clips, steps=args.steps, world=args.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A mask-branch (M-MIVA) adapter on MotionWorld's regional clips, and how well it keeps its motion in its region
(docs/mask_branch.md#motionworld).

- :func:`train_world_mask_adapter`: the UNet world recipe (:func:`miva.world.adapters.world_train_config`) plus the
  mask branch, trained on regional clips (:func:`miva.world.data.write_regional_clips`) where one region moves by
  the motion and every other region is static, with that region's ground-truth masks as ``mask_root``.
- :func:`evaluate_mask_adapter`: on held-out regional clips, the adapter is given frame 0 and its region's frame-0
  mask; scored are the Dice of the predicted mask video against the ground truth (:func:`mask_dice`), the motion
  inside the region against the motion and the drift outside it (confinement: should be ~0).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .adapters import RECIPE_CLIPS, train_world_config, world_train_config
from .data import write_regional_clips
from .evaluate import HELDOUT_SCENES, _to_uint8, animate_scene_output, sampling_defaults, summarise
from .motions import get_motion
from .regions import LAYOUTS, evaluate_regions, render_regional_clip
from .scenes import make_scene

__all__ = ["evaluate_mask_adapter", "mask_dice", "region_motions", "train_world_mask_adapter"]


def region_motions(layout: str, region: str, motion: str) -> tuple[str, ...]:
    """The motions of ``layout``'s regions (in :data:`~miva.world.regions.LAYOUTS` order): ``motion`` for
    ``region``, ``"static"`` for every other; one-line errors for a bad layout, region or motion."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {', '.join(LAYOUTS)}")
    if region not in LAYOUTS[layout]:
        raise ValueError(f"region={region!r} is not a region of layout {layout!r}; choose one of "
                         f"{', '.join(LAYOUTS[layout])}")
    get_motion(motion)  # its own error for an unknown motion
    return tuple(motion if name == region else "static" for name in LAYOUTS[layout])


def mask_dice(predicted, truth) -> float:
    """Dice of a predicted mask video against the ground truth, both ``(F, H, W)`` in [0, 1], on frames 1.. (frame 0
    is the given mask): the trainer's logged ``dice`` (:func:`miva.training.mask_training.dice_score`, binarised at
    0.5, two empty masks score 1), so training logs and this evaluation measure the same thing."""
    import torch

    from ..training.mask_training import dice_score

    predicted, truth = np.asarray(predicted, dtype=np.float32), np.asarray(truth, dtype=np.float32)
    if predicted.ndim != 3 or predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth must be mask videos (F, H, W) of one shape, got {predicted.shape} "
                         f"and {truth.shape}")
    return float(dice_score(torch.from_numpy(predicted[None, 1:]), torch.from_numpy(truth[None, 1:]))[0])


def train_world_mask_adapter(motion: str, output_dir: str | Path, *, layout: str = "shape", region: str = "shape",
                             num_clips: int = RECIPE_CLIPS, first_scene: int = 0, adapter_name: str | None = None,
                             log=print, **recipe) -> dict:
    """Write ``num_clips`` regional clips of training scenes (``region`` moved by ``motion``, the rest static) under
    ``output_dir/data`` (``clips/`` and ``masks/<region>/``), train the UNet world recipe with the mask branch on
    them with :func:`miva.training.train.train`; returns ``{"adapter": folder, "seconds", "config"}`` as
    :func:`~miva.world.adapters.train_world_adapter`. ``recipe`` goes to
    :func:`~miva.world.adapters.world_train_config` (``adapter=`` adds adapter parts, ``extra=`` TrainConfig keys,
    e.g. ``ground_truth_mask_probability`` or ``mask_dice_loss_weight``); the UNet base only (the Wan base has no
    mask branch)."""
    motions = region_motions(layout, region, motion)
    if recipe.get("world", "unet") != "unet":
        raise ValueError(f"world={recipe['world']!r}: the mask branch exists on the unet world only")
    output_dir = Path(output_dir)
    data = output_dir / "data"
    recipe["adapter"] = {**(recipe.get("adapter") or {}), "use_mask_branch": True}
    recipe["extra"] = {"mask_root": str(data / "masks" / region), **(recipe.get("extra") or {})}
    name = adapter_name or f"{region}_{motion.replace('+', '_')}"
    config = world_train_config(output_dir, data / "clips", adapter_name=name, **recipe)
    write_regional_clips(data, layout, motions, num_clips=num_clips, num_frames=config["num_frames"],
                         first_scene=first_scene)
    return train_world_config(config, output_dir, f"{region!r} by {motion!r} ({layout}) on {num_clips} clips", log)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def evaluate_mask_adapter(pipe, adapter_name: str, motion: str, *, layout: str = "shape", region: str = "shape",
                          scenes: int = HELDOUT_SCENES, first_scene: int = 0, seed: int = 0, reference: bool = False,
                          log=None, **call_kwargs) -> dict:
    """Animate held-out scenes ``first_scene..first_scene+scenes-1`` with the mask-branch adapter ``adapter_name``
    (loaded and active in ``pipe``) and score each against its regional truth (``region`` moved by ``motion``, the
    rest static, :func:`region_motions`).

    Each video starts from the truth's frame 0 with the scene's prompt, the adapter given the region's frame-0
    ground-truth mask (``mask_branch``, its stream seeded like the video, ``seed + scene``); the sampling is the
    world's (:func:`~miva.world.evaluate.sampling_defaults` ``("unet")`` under ``call_kwargs``). Per scene:
    ``dice`` (:func:`mask_dice` of the predicted mask video), ``still_dice`` (that of frame 0's mask held still: the
    baseline a mask branch must beat), ``regions`` (:func:`~miva.world.regions.
    evaluate_regions`, every region's scores) and ``seconds``. ``reference=True`` scores the truth itself (its video
    and mask video; ``pipe`` unused): Dice 1, the metric's best.

    Returns ``{"summary": {"videos", "dice", "still_dice", "inside_direction_error", "inside_class_accuracy", "inside_speed",
    "outside_speed"}, "regions": {name: summarise(rows)}, "layout", "region", "motion", "reference", "sampling",
    "rows"}``; ``outside_speed`` is the mean drift speed (px per frame) measured outside ``region``.
    """
    motions = region_motions(layout, region, motion)
    call_kwargs = {**sampling_defaults("unet"), **call_kwargs}
    frames = call_kwargs["num_frames"]
    rows = []
    for index in range(first_scene, first_scene + scenes):
        start = time.perf_counter()
        clip = render_regional_clip(make_scene("heldout", index), layout, motions, frames, 64)
        truth_masks = clip.mask(region)
        if reference:
            video, predicted = clip.frames, truth_masks
        else:
            from ..pipelines.mask_stream import MaskBranchInputs

            branch = MaskBranchInputs(masks={adapter_name: truth_masks[0]}, seed=seed + index)
            output = animate_scene_output(pipe, index, seed=seed + index, image=clip.frames[0], mask_branch=branch,
                                          **call_kwargs)
            video = _to_uint8(output.frames[0])
            predicted = np.asarray(output.masks[adapter_name][0].float().cpu())
        row = {"scene": index, "dice": mask_dice(predicted, truth_masks),
               # the baseline: frame 0's mask held still (a mask branch that predicts no motion of its region)
               "still_dice": mask_dice(np.repeat(truth_masks[:1], len(truth_masks), 0), truth_masks),
               "regions": evaluate_regions(video, clip), "seconds": time.perf_counter() - start}
        rows.append(row)
        if log:
            inside = row["regions"][region]
            log(f"scene {index}: dice {row['dice']:.3f} inside class {inside['class']} dir {inside['direction']} "
                + " ".join(f"{n} speed {r['speed']:.2f}" for n, r in row["regions"].items() if n != region))
    regions = {name: summarise([row["regions"][name] for row in rows]) for name in LAYOUTS[layout]}
    inside = regions[region]
    summary = {
        "videos": len(rows),
        "dice": _mean(row["dice"] for row in rows),
        "still_dice": _mean(row["still_dice"] for row in rows),
        "inside_direction_error": inside["direction_error"],
        "inside_class_accuracy": inside["class_accuracy"],
        "inside_speed": inside["speed"],
        "outside_speed": _mean(row["regions"][name]["speed"] for row in rows for name in LAYOUTS[layout]
                               if name != region),
    }
    return {"summary": summary, "regions": regions, "layout": layout, "region": region, "motion": motion,
            "reference": reference, "sampling": call_kwargs, "rows": rows}

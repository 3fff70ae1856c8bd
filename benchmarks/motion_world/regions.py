"""Where and when (issue 30's must-show): two adapters masked to two halves, and a schedule that hands over at the
middle frame, scored on held-out MotionWorld scenes.

    python benchmarks/motion_world/regions.py --base wan --adapter right=PATH --adapter down=PATH --scenes 20

Cases (each a JSON block in ``--out``):
- ``no_masks``: both adapters over the whole frame at weight 1 (the baseline: both halves move diagonally);
- ``masks``: the first adapter masked to the left half, the second to the right half (``adapter_masks``);
- ``schedule``: both over the whole frame, the first at weight 1 on frames ``0..mid`` and 0 after, the second the
  reverse (``adapter_schedules``); each segment is scored against its own adapter's direction.
Regions are scored inside their ground-truth masks against their own motion (``miva.world.regions``,
``evaluate_regional_pipeline``); segments by the drift fitted on their frames (``miva.world.metrics.estimate_motion``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

from miva.world import get_motion, load_pipeline
from miva.world.evaluate import animate_scene, evaluate_regional_pipeline, sampling_defaults
from miva.world.metrics import estimate_motion


def _direction_error(found: tuple[float, float], target_degrees: float) -> float:
    angle = math.degrees(math.atan2(found[1], found[0]))
    return abs((angle - target_degrees + 180.0) % 360.0 - 180.0)


def halves(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` masks ``(size, size)``: the columns whose centres lie left / right of the frame centre (the
    ``"halves"`` layout's own boundary)."""
    left = np.broadcast_to((np.arange(size) + 0.5 < size / 2.0).astype(np.float32), (size, size)).copy()
    return left, 1.0 - left


CASES = ("no_masks", "masks", "schedule")


def evaluate_schedule(pipe, names, motions, scenes: int, frames: int, **call_kwargs) -> dict:
    """The hand-over at the middle frame, scored per segment (mean direction error and drift speed)."""
    mid = frames // 2
    first = [1.0] * (mid + 1) + [0.0] * (frames - mid - 1)
    schedules = {names[0]: first, names[1]: [1.0 - w for w in first]}
    rows = []
    for index in range(scenes):
        video = animate_scene(pipe, index, seed=index, adapter_schedules=schedules, **call_kwargs)
        row = {"scene": index}
        for segment, (part, motion) in enumerate(((video[: mid + 1], motions[0]), (video[mid:], motions[1]))):
            summary = estimate_motion(part).summary
            row[f"segment{segment}"] = {"direction_error": _direction_error((summary.vx, summary.vy),
                                                                          motion.direction),
                                        "speed": math.hypot(summary.vx, summary.vy)}
        rows.append(row)
    summary = {f"segment{s}": {key: statistics.fmean(r[f"segment{s}"][key] for r in rows)
                               for key in ("direction_error", "speed")} for s in (0, 1)}
    return {"schedule": schedules, "mid_frame": mid, **summary, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=("unet", "wan"), default="wan")
    parser.add_argument("--adapter", action="append", required=True, help="NAME=FOLDER, twice (left, then right)")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--parallel-mode", choices=("residual", "weights"), default="residual",
                        help="how the two adapters compose (docs/regions.md)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which cases to run")
    parser.add_argument("--weight", type=float, default=1.0, help="both adapters' weight (default 1)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    pairs = [item.split("=", 1) for item in args.adapter]
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        parser.error("--adapter NAME=FOLDER exactly twice (the left half's adapter first)")
    names = [name for name, _ in pairs]
    motions = [get_motion(name) for name in names]
    pipe = load_pipeline(base=args.base)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters([folder for _, folder in pairs], adapter_names=names)
    pipe.set_adapters(names, [args.weight] * 2, parallel_mode=args.parallel_mode)
    call = sampling_defaults(args.base)
    left, right = halves()
    results, start = ({"base": args.base, "adapters": dict(pairs), "scenes": args.scenes,
                       "parallel_mode": args.parallel_mode, "weight": args.weight}, time.perf_counter())
    for case, extra in (("no_masks", {}), ("masks", {"adapter_masks": {names[0]: left, names[1]: right}})):
        if case not in args.cases:
            continue
        outcome = evaluate_regional_pipeline(pipe, "halves", names, scenes=args.scenes, **call, **extra)
        results[case] = outcome["regions"]
        print(case, {region: {k: v for k, v in r.items() if k in ("class_accuracy", "direction_error", "psnr")}
                     for region, r in outcome["regions"].items()}, flush=True)
    if "schedule" in args.cases:
        results["schedule"] = evaluate_schedule(pipe, names, motions, args.scenes, call["num_frames"], **call)
        print("schedule", {k: v for k, v in results["schedule"].items() if k.startswith("segment")}, flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The mask branch (M-MIVA) on MotionWorld (issue 30): train a mask-branch adapter on regional clips where one
region moves and the rest is static, then score it on held-out scenes (docs/mask_branch.md#motionworld).

    python benchmarks/motion_world/mask_branch.py --motion right --steps 600 --out mask_right.json
    python benchmarks/motion_world/mask_branch.py --motion right --adapter outputs/mask_right/adapter --out eval.json
    python benchmarks/motion_world/mask_branch.py --motion right --reference --out reference.json   # the metric's best

Training (``miva.world.mask_adapter.train_world_mask_adapter``): the UNet world recipe plus ``use_mask_branch``,
``--clips`` regional clips of the ``--layout`` (default ``shape``: the scene's first shape and the background) with
``--region`` moved by ``--motion``, that region's masks as ``mask_root``; the adapter lands in ``--work``/adapter.
Evaluation (``evaluate_mask_adapter``): on ``--scenes`` held-out scenes, the adapter gets frame 0 and the region's
frame-0 mask; scored are the Dice of its predicted mask video against the ground truth (frames 1..), the motion
inside the region (direction error, class accuracy) and the drift speed outside it (confinement: ~0 is best).
The JSON holds the command, the training and evaluation seconds, the summary, per-region summaries and the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from miva.world import base_fingerprint, load_pipeline
from miva.world.evaluate import HELDOUT_SCENES
from miva.world.mask_adapter import evaluate_mask_adapter, train_world_mask_adapter

ADAPTER_NAME = "mask"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--motion", required=True, help="the region's motion, e.g. right, zoom_in, right+down")
    parser.add_argument("--layout", default="shape", help="regional layout: shape (default) or halves")
    parser.add_argument("--region", default="shape", help="the moving region (shape/background or left/right)")
    parser.add_argument("--steps", type=int, help="training steps (default: the UNet world recipe's)")
    parser.add_argument("--clips", type=int, default=10, help="training clips")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--adapter", help="a trained mask-branch adapter folder: skip training")
    parser.add_argument("--reference", action="store_true", help="score the ground truth itself (no adapter)")
    parser.add_argument("--work", default="outputs/world/mask_branch", help="training folder")
    parser.add_argument("--scenes", type=int, default=HELDOUT_SCENES)
    parser.add_argument("--first-scene", type=int, default=0)
    parser.add_argument("--inference-steps", type=int, help="denoising steps (default: the world's, 25)")
    parser.add_argument("--out", required=True, help="results JSON")
    args = parser.parse_args(argv)

    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "base_fingerprint": base_fingerprint()}
    call = {} if args.inference_steps is None else {"num_inference_steps": args.inference_steps}
    where = {"layout": args.layout, "region": args.region}
    pipe, adapter = None, args.adapter
    if not args.reference:
        if adapter is None:
            recipe = {} if args.steps is None else {"steps": args.steps}
            trained = train_world_mask_adapter(args.motion, args.work, num_clips=args.clips, seed=args.seed,
                                               **where, **recipe)
            adapter = str(trained["adapter"])
            result["train_seconds"] = round(trained["seconds"], 1)
            result["train_steps"] = trained["config"]["max_train_steps"]
        result["adapter"] = adapter
        pipe = load_pipeline(base="unet")
        pipe.set_progress_bar_config(disable=True)
        pipe.load_adapters([adapter], adapter_names=[ADAPTER_NAME])
    start = time.perf_counter()
    scores = evaluate_mask_adapter(pipe, ADAPTER_NAME, args.motion, **where, scenes=args.scenes,
                                   first_scene=args.first_scene, reference=args.reference, log=print, **call)
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    result.update(scores)
    print(json.dumps({"summary": scores["summary"]}, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

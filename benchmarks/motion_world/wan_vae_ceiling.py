"""What the Wan world's autoencoder does to motion: the target's true clip through the VAE, encoded and decoded as
one clip (how the pipeline and the trainer use it) and frame by frame (each frame a clip of one), scored with the
MotionWorld metric on held-out scenes. No sampling: this is the ceiling of every model of the latent space.

    python benchmarks/motion_world/wan_vae_ceiling.py --motion right --scenes 20

Session 10 (shipped Wan base, `right`, 20 scenes): as one clip 65% / 19.3 deg / 18.27 dB; frame by frame 100% /
0.5 deg / 20.31 dB. The causal 3-D convolutions mix each frame with the ones before it, and that costs the motion.
Since session 11 the shipped base's VAE is frame-wise (`miva.world.wan_architecture.make_vae_framewise`), so both
rows are the same there; `--base FOLDER` measures any other Wan base.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from diffusers.image_processor import VaeImageProcessor

from miva.world import load_pipeline
from miva.world.evaluate import _to_uint8
from miva.world.metrics import evaluate_video
from miva.world.motions import get_motion
from miva.world.scenes import make_scene, render_clip
from miva.world.wan_architecture import FRAMES


def through_vae(vae, frames, per_frame: bool):
    """``(F, 64, 64, 3)`` uint8 -> the same through ``vae`` (one clip, or ``F`` clips of one frame), uint8."""
    x = VaeImageProcessor.normalize(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0)  # (F, 3, H, W)
    clips = [x[i : i + 1] for i in range(len(x))] if per_frame else [x]
    with torch.no_grad():
        decoded = [vae.decode(vae.encode(c.permute(1, 0, 2, 3)[None]).latent_dist.mode()).sample[0] for c in clips]
    video = torch.cat(decoded, dim=1).permute(1, 2, 3, 0)  # (F, H, W, 3) in [-1, 1]
    return _to_uint8(VaeImageProcessor.denormalize(video).numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--motion", default="right")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--base", help="a Wan base folder (default: the shipped one)")
    args = parser.parse_args(argv)
    vae, motion = load_pipeline(base="wan", path=args.base).vae, get_motion(args.motion)
    for per_frame in (False, True):
        rows = []
        for index in range(args.scenes):
            scene = make_scene("heldout", index)
            rows.append(evaluate_video(through_vae(vae, render_clip(scene, motion, FRAMES, 64), per_frame), scene,
                                       motion))
        errors = [r["direction_error"] for r in rows if r["direction_error"] is not None]
        print("frame by frame" if per_frame else "one clip", {
            "class_accuracy": statistics.fmean(r["class_correct"] for r in rows),
            "direction_error": round(statistics.fmean(errors), 2) if errors else None,
            "psnr": round(statistics.fmean(r["psnr"] for r in rows), 2)}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

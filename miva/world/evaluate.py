"""Animate held-out MotionWorld scenes with a pipeline and score the videos against a target motion.

    python -m miva.world.evaluate --motion right --adapter right --scenes 20     # the shipped "right" adapter
    python -m miva.world.evaluate --motion right --scenes 20                     # the base alone
    python -m miva.world.evaluate --motion right --reference ground_truth        # the best score possible
    python -m miva.world.evaluate --motion right --base wan --scenes 20          # the Wan base (9 frames)
    python -m miva.world.evaluate --motion right --base <folder>                 # any base folder (UNet or Wan)

Every video starts from frame 0 of a held-out scene (odd seeds: never seen in training), with that scene's prompt
(which never names the motion), so the motion comes from the base and the active adapters only.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

from .metrics import direction_spread, evaluate_video
from .motions import Motion, get_motion
from .scenes import make_scene, render_clip
from .wan_architecture import FRAMES as WAN_FRAMES

__all__ = [
    "BASE_SAMPLING",
    "HELDOUT_SCENES",
    "REFERENCES",
    "SAMPLING",
    "VALIDATION_SCENE",
    "WAN_SAMPLING",
    "animate_scene",
    "animate_scene_output",
    "evaluate_pipeline",
    "evaluate_regional_pipeline",
    "pipeline_base",
    "reference_video",
    "sampling_defaults",
    "summarise",
]

# How MotionWorld videos are sampled unless told otherwise: 8 frames of 64x64, 25 DDIM steps, no guidance, and the
# research inference's defaults (docs/research.md#sampling): the noised image latent for every frame ("cinemo") with
# its low spatial frequencies kept (DCT low-pass) instead of pure noise for frames 1.. ("lamp"), and AdaIN "last"
# (each frame's latent mean and std matched to frame 0's once after the loop). Without them the later frames of
# this small base drift in colour and contrast and lose the scene, and the motion read from them with it
# (benchmarks/motion_world/README.md, sampling rows).
# Held-out scenes ``0..HELDOUT_SCENES-1`` are what every reported number is measured on; the next as many
# (``VALIDATION_SCENE``..) choose among trainings of one recipe, so that a choice is never made on the reported scenes.
HELDOUT_SCENES = 20
VALIDATION_SCENE = HELDOUT_SCENES

SAMPLING = {"num_frames": 8, "num_inference_steps": 25, "guidance_scale": 1.0,
            "first_frame_cond_type": "cinemo", "use_dct_init": True, "use_adain_norm": "last"}
# The Wan base's (miva-world-wan): 9 frames (1 + 4k, the Wan VAE's chunking), 25 flow-matching Euler steps, no
# guidance (prompts are padded to the T5 length it was pretrained with, which its tokenizer declares), and the same
# research latent init as the UNet's (the noised image latent for every frame, DCT low-pass), so that the two bases
# differ only in the model. No AdaIN: MIVAWanPipeline has none. A first choice, not a measured one: tune it on the
# validation scenes (`--first-scene VALIDATION_SCENE`), never on the reported ones.
WAN_SAMPLING = {"num_frames": WAN_FRAMES, "num_inference_steps": 25, "guidance_scale": 1.0,
                "first_frame_cond_type": "cinemo", "use_dct_init": True}
# The one place per-base sampling defaults live: MotionWorld base ("unet" / "wan") -> its pipeline call defaults.
BASE_SAMPLING = {"unet": SAMPLING, "wan": WAN_SAMPLING}


def sampling_defaults(base: str = "unet") -> dict:
    """A copy of :data:`BASE_SAMPLING` ``[base]`` (``"unet"`` / ``"wan"``)."""
    if base not in BASE_SAMPLING:
        raise ValueError(f"base={base!r} has no MotionWorld sampling defaults; choose one of {sorted(BASE_SAMPLING)}")
    return dict(BASE_SAMPLING[base])


def pipeline_base(pipe) -> str:
    """``"wan"`` for a Wan pipeline (it has a ``transformer``), else ``"unet"``: which :data:`BASE_SAMPLING` applies."""
    return "wan" if getattr(pipe, "transformer", None) is not None else "unet"


def animate_scene(pipe, index: int, seed: int = 0, split: str = "heldout", image=None, **call_kwargs) -> np.ndarray:
    """Animate scene ``index`` of ``split`` (from ``image`` ``(64, 64, 3)`` instead of the scene's frame 0 if given):
    ``(F, 64, 64, 3)`` ``uint8``. ``call_kwargs`` override the pipeline's base's :func:`sampling_defaults` and go to
    ``pipe(...)`` (e.g. ``adapter_weights``, ``batch_prompt``)."""
    return _to_uint8(animate_scene_output(pipe, index, seed, split, image, **call_kwargs).frames[0])


def animate_scene_output(pipe, index: int, seed: int = 0, split: str = "heldout", image=None, **call_kwargs):
    """:func:`animate_scene`'s call, returning the pipeline's whole output (``frames`` as floats, ``masks`` ...)."""
    import torch
    from PIL import Image

    scene = make_scene(split, index)
    image = Image.fromarray(render_clip(scene, Motion(), 1, 64)[0] if image is None else np.asarray(image))
    kwargs = {**sampling_defaults(pipeline_base(pipe)), "height": 64, "width": 64, **call_kwargs}
    kwargs.setdefault("prompt", scene.prompt)
    return pipe(image=image, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)


def _to_uint8(frames) -> np.ndarray:
    """``(F, H, W, 3)`` floats in [0, 1] -> ``uint8``, rounded as the metric's ground truth is."""
    return np.clip(np.rint(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)


# Videos that bracket the metric's scale on the same scenes, made without sampling: the target's ground truth
# through the base's autoencoder (the best a model of this latent space can score) and frame 0 through it,
# repeated (no motion at all).
REFERENCES = ("ground_truth", "still")


def reference_video(pipe, index: int, target: Motion, kind: str, num_frames: int | None = None,
                    split: str = "heldout") -> np.ndarray:
    """A :data:`REFERENCES` video of scene ``index`` of ``split``: ``(F, 64, 64, 3)`` ``uint8``, encoded to the
    mode of ``pipe.vae``'s latent distribution and decoded back (frame by frame on the UNet base, as one clip
    through the Wan base's video autoencoder, as the pipeline does; the shipped one is frame-wise). ``num_frames`` None: the base's default."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    if kind not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}; got {kind!r}")
    wan = pipeline_base(pipe) == "wan"
    num_frames = num_frames or sampling_defaults(pipeline_base(pipe))["num_frames"]
    truth = render_clip(make_scene(split, index), target, num_frames, 64)
    if kind == "still":
        truth = np.repeat(truth[:1], num_frames, axis=0)
    vae = pipe.vae
    pixels = torch.from_numpy(truth).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 255.0  # (F, 3, 64, 64)
    pixels = VaeImageProcessor.normalize(pixels)
    if wan:  # (1, 3, F, 64, 64): the Wan autoencoder encodes a clip
        pixels = pixels.permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    if wan:
        decoded = decoded[0].permute(1, 0, 2, 3)
    return _to_uint8(VaeImageProcessor.denormalize(decoded.float()).permute(0, 2, 3, 1).cpu().numpy())


def evaluate_pipeline(
    pipe,
    target: str | Motion,
    scenes: int = HELDOUT_SCENES,
    seed: int = 0,
    log=None,
    adapter_prompts: int = 0,
    reference: str | None = None,
    first_scene: int = 0,
    **call_kwargs,
) -> dict:
    """Animate held-out scenes ``first_scene..first_scene+scenes-1`` and score each against ``target``; returns
    :func:`summarise` of the rows, ``base`` (:func:`pipeline_base`) and ``sampling`` (the call's settings: the base's
    :func:`sampling_defaults` under ``call_kwargs``) plus the rows themselves. ``adapter_prompts=N`` gives each of N
    active adapters the scene's prompt as its own prompt (``batch_prompt``). ``reference`` (one of
    :data:`REFERENCES`) scores :func:`reference_video` instead of sampling."""
    motion = get_motion(target) if isinstance(target, str) else target
    base = pipeline_base(pipe)
    call_kwargs = {**sampling_defaults(base), **call_kwargs}
    rows = []
    for index in range(first_scene, first_scene + scenes):
        start = time.perf_counter()
        if adapter_prompts:
            call_kwargs["batch_prompt"] = [make_scene("heldout", index).prompt] * adapter_prompts
        if reference is not None:
            video = reference_video(pipe, index, motion, reference, num_frames=call_kwargs["num_frames"])
        else:
            video = animate_scene(pipe, index, seed=seed + index, **call_kwargs)
        row = evaluate_video(video, make_scene("heldout", index), motion)
        row["scene"], row["seconds"] = index, time.perf_counter() - start
        rows.append(row)
        if log:
            log(f"scene {index}: class {row['class']} dir {row['direction']} speed {row['speed']:.2f} "
                f"psnr {row['psnr']:.2f} coherent {row['coherent_length']}")
    return {**summarise(rows), **_settings(base, call_kwargs), "rows": rows}


def _settings(base: str, call_kwargs: dict) -> dict:
    """What a result records of how it was sampled: the base kind and the call's settings (no per-scene prompts)."""
    return {"base": base, "sampling": {k: v for k, v in call_kwargs.items() if k not in ("batch_prompt", "prompt")}}


def evaluate_regional_pipeline(pipe, layout: str, motions, scenes: int = HELDOUT_SCENES, seed: int = 0,
                               first_scene: int = 0, log=None, **call_kwargs) -> dict:
    """Animate frame 0 of the regional clips (:mod:`miva.world.regions`) of held-out scenes and score each region
    inside its ground-truth mask against its motion: ``{"regions": {name: summarise(rows)}, "base", "sampling",
    "rows": [...]}`` (as :func:`evaluate_pipeline`)."""
    from .regions import evaluate_regions, render_regional_clip

    base = pipeline_base(pipe)
    call_kwargs = {**sampling_defaults(base), **call_kwargs}
    frames = call_kwargs["num_frames"]
    rows = []
    for index in range(first_scene, first_scene + scenes):
        clip = render_regional_clip(make_scene("heldout", index), layout, motions, frames, 64)
        video = animate_scene(pipe, index, seed=seed + index, image=clip.frames[0], **call_kwargs)
        scores = evaluate_regions(video, clip)
        rows.append({"scene": index, **scores})
        if log:
            log(f"scene {index}: " + "; ".join(f"{name} class {r['class']} dir {r['direction']}"
                                               for name, r in scores.items()))
    names = [name for name in rows[0] if name != "scene"] if rows else []
    return {"regions": {name: summarise([row[name] for row in rows]) for name in names},
            **_settings(base, call_kwargs), "rows": rows}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _range(values) -> list | None:
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def summarise(rows: list[dict]) -> dict:
    """Aggregate per-video rows of :func:`~miva.world.metrics.evaluate_video`."""
    moving = [r["direction"] for r in rows if r["direction"] is not None and r["speed"] > 0.35]
    return {
        "videos": len(rows),
        "class_accuracy": _mean(float(r["class_correct"]) for r in rows),
        "direction_error": _mean(r["direction_error"] for r in rows),
        "speed": _mean(r["speed"] for r in rows),
        "speed_error": _mean(r["speed_error"] for r in rows),
        "drift_along_target": _mean(r["drift_along_target"] for r in rows),
        "zoom_error": _mean(r["zoom_error"] for r in rows),
        "turn_error": _mean(r["turn_error"] for r in rows),
        "psnr": _mean(r["psnr"] for r in rows),
        "ssim": _mean(r["ssim"] for r in rows),
        "frame0_psnr": _mean(r["frame0_psnr"] for r in rows),
        "static_fraction": _mean(float(r["class"] == "static") for r in rows),
        # frames each video keeps the scene (metrics.coherent_length): the mean, and the shortest and longest
        # (rows scored before it existed have none)
        "coherent_length": _mean(r.get("coherent_length") for r in rows),
        "coherent_length_range": _range(r.get("coherent_length") for r in rows),
        # ... against the video's own fitted motion (metrics.evaluate_video): does it keep the scene as it moves?
        "own_coherent_length": _mean(r.get("own_coherent_length") for r in rows),
        "direction_spread": direction_spread(moving),
    }


def main(argv: list[str] | None = None) -> int:
    from ..base_registry import known_base
    from . import WORLD_BASES, base_fingerprint, load_pipeline, shipped_adapters

    parser = argparse.ArgumentParser(prog="python -m miva.world.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--motion", required=True,
                        help="target motion, e.g. right, zoom_in, right+down; with --layout one per region: right,down")
    parser.add_argument("--layout", choices=("halves", "shape"),
                        help="score region by region on regional clips (miva.world.regions) of the held-out scenes")
    parser.add_argument("--adapter", action="append", default=[], help="shipped adapter name or folder; repeatable")
    parser.add_argument("--weight", action="append", type=float, default=[], help="adapter weights")
    parser.add_argument("--scenes", type=int, default=HELDOUT_SCENES)
    parser.add_argument("--first-scene", type=int, default=0,
                        help=f"first held-out scene (the validation scenes start at {VALIDATION_SCENE})")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the base's, 25 on both)")
    parser.add_argument("--frames", type=int, help="frames per video (default: the base's, 8 on unet, 9 on wan)")
    parser.add_argument("--base", default="unet",
                        help="unet (miva-world, the default), wan (miva-world-wan), or a base folder of either "
                             "architecture (e.g. a new pretraining run)")
    parser.add_argument("--reference", choices=REFERENCES,
                        help="score the target's ground truth (or frame 0, still) through the base's autoencoder")
    parser.add_argument("--out", help="write the summary JSON here")
    args = parser.parse_args(argv)
    kind = args.base if args.base in WORLD_BASES else None
    if kind is None:
        from ..backbones.declared import WAN
        from ..base_registry import base_backbone

        kind = "wan" if base_backbone(args.base) == WAN.id else "unet"
    pipe = load_pipeline(path=None if args.base in WORLD_BASES else args.base, base=kind)
    pipe.set_progress_bar_config(disable=True)
    call = {k: v for k, v in (("num_inference_steps", args.steps), ("num_frames", args.frames)) if v is not None}
    if args.adapter:
        shipped = shipped_adapters(kind)
        paths = [str(shipped.get(a, a)) for a in args.adapter]
        names = [f"a{i}" for i in range(len(paths))]
        pipe.load_adapters(paths, adapter_names=names, weights=args.weight or None)
    if args.layout and args.reference:
        parser.error("--reference scores whole-frame references; it cannot be combined with --layout")
    if args.layout:
        result = evaluate_regional_pipeline(pipe, args.layout, args.motion.split(","), args.scenes, log=print,
                                            first_scene=args.first_scene, **call)
    else:
        result = evaluate_pipeline(pipe, args.motion, args.scenes, log=print, reference=args.reference,
                                   first_scene=args.first_scene, **call)
    folder = known_base(WORLD_BASES[args.base]).folder if args.base in WORLD_BASES else args.base
    result = {"base_model": args.base, "base_fingerprint": base_fingerprint(folder), **result}
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

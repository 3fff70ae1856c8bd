"""`miva demo`: animate an unseen MotionWorld scene with a shipped MIVA adapter, next to the base model alone.

Needs no download and no GPU (well under a minute on 2 CPU cores). The base model and the adapters ship inside the
package (`miva.world`); the scene is a held-out one, never seen in training. Writes the adapter's video (mp4 + GIF),
a side-by-side GIF (columns captioned ground truth | base | base + adapter) and the measured motion of both (`motion.json`).

    miva demo --out outputs/demo --adapter right       # also: zoom_in, rotate_cw (on the default base, wan)
    miva demo --base unet                              # the AnimateDiff UNet world base (miva-world)
    miva demo --tiny                                   # the random tiny components: mechanics only, no real motion
"""

from __future__ import annotations

import argparse
import json
import os
import time

HELP = "animate an unseen scene with a shipped MotionWorld adapter (offline, CPU); writes videos and measured motion"
ADAPTER_NAME = "demo"
# The demo's MotionWorld base: the one whose shipped adapters show motion best on the 20 reported held-out scenes
# (the numbers: benchmarks/motion_world/README.md, session 11; on the UNet base zoom_in and rotate_cw do not move).
DEMO_BASE = "wan"
PROMPT = "a waterfall, water flowing"


def randomise_adapter_outputs(pipe, adapter_name: str, seed: int = 0, std: float = 0.3) -> int:
    """Give adapter `adapter_name`'s zero-initialised output weights (LoRA `up`, cross-frame `to_out`) small random
    values (seeded) so that the untrained adapter visibly acts. Returns the number of tensors changed."""
    import torch

    from .attention_processors import get_miva_adapter_modules

    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for _layer, module in sorted(get_miva_adapter_modules(pipe.unet, adapter_name).items()):
            for name, param in sorted(module.named_parameters()):
                if name.endswith("up.weight") or name.startswith("to_out."):
                    scale = std * (32.0 if name.endswith("up.weight") else 1.0)  # LoRA deltas carry alpha/rank = 1/32
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
                    changed += 1
    return changed


def run_tiny_demo(
    out_dir: str = "outputs/demo", frames: int = 8, steps: int = 4, seed: int = 0, size: int = 64, log=print
) -> dict[str, str]:
    """Build `MIVAPipeline(**tiny_components(seed))`, add a randomised adapter, animate `make_test_image()`.

    Writes `input.png`, `demo.mp4` and `demo.gif` into `out_dir`; returns `{"image", "mp4", "gif"}` paths.
    """
    import torch
    from diffusers.utils import export_to_gif, export_to_video

    from .attention_processors import MIVAAdapterConfig
    from .pipelines.pipeline_miva import MIVAPipeline
    from .tiny import make_test_image, tiny_components

    if frames < 2:
        raise ValueError(f"frames={frames} must be >= 2 (frame 0 is the input image)")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    start = time.perf_counter()
    pipe = MIVAPipeline(**tiny_components(seed))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter(ADAPTER_NAME, MIVAAdapterConfig(use_i2v=True, use_motion_lora=True, use_ca_lora=True))
    changed = randomise_adapter_outputs(pipe, ADAPTER_NAME, seed)
    log(
        f"adapter {ADAPTER_NAME!r}: untrained; its {changed} zero-initialised output weights were randomised "
        f"(seed {seed}) so that it visibly changes the video"
    )
    image = make_test_image(size, size, seed)
    video = pipe(
        image,
        PROMPT,
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(seed),
    ).frames[0]
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "image": os.path.join(out_dir, "input.png"),
        "mp4": os.path.join(out_dir, "demo.mp4"),
        "gif": os.path.join(out_dir, "demo.gif"),
    }
    image.save(paths["image"])
    export_to_video(video, paths["mp4"], fps=8)
    export_to_gif(video, paths["gif"], fps=8)
    log(f"animated {size}x{size} image, {frames} frames, {steps} steps in {time.perf_counter() - start:.1f} s")
    for kind in ("image", "mp4", "gif"):
        log(f"wrote {paths[kind]}")
    return paths


def run_demo(
    out_dir: str = "outputs/demo",
    adapter: str = "right",
    scene: int = 0,
    frames: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    log=print,
    base: str = DEMO_BASE,
) -> dict[str, str]:
    """Animate held-out MotionWorld scene `scene` with world base `base` ("unet": miva-world, "wan": miva-world-wan)
    alone and with its shipped adapter `adapter`; `frames` / `steps` None: the base's sampling defaults
    (`miva.world.evaluate.sampling_defaults`). A base with no shipped adapter yet is shown alone (the log says how
    to build them).

    Writes `demo.mp4` and `demo.gif` (with the adapter), `side_by_side.gif` (ground truth of the adapter's motion |
    base | base + adapter) and `motion.json` (the fitted motion and scores of both videos) into `out_dir`; returns
    their paths by kind (`"mp4"`, `"gif"`, `"side_by_side"`, `"motion"`).
    """
    from diffusers.utils import export_to_video
    from PIL import Image

    from .world import load_pipeline, make_scene, shipped_adapters
    from .world.adapters import shipped_recipes
    from .world.evaluate import animate_scene, sampling_defaults
    from .world.metrics import evaluate_video
    from .world.motions import get_motion
    from .world.samples import comparison_labels, side_by_side, write_gif
    from .world.scenes import render_clip

    defaults = sampling_defaults(base)
    frames = defaults["num_frames"] if frames is None else frames
    steps = defaults["num_inference_steps"] if steps is None else steps
    shipped = shipped_adapters(base)
    if shipped and adapter not in shipped:
        raise ValueError(f"adapter={adapter!r} is not a shipped MotionWorld adapter of the {base} base; choose one of "
                         f"{sorted(shipped)}")
    if frames < 2:
        raise ValueError(f"frames={frames} must be >= 2 (frame 0 is the input image)")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    start = time.perf_counter()
    pipe = load_pipeline(base=base)  # a missing base folder: FileNotFoundError naming the rebuild command
    pipe.set_progress_bar_config(disable=True)
    call = {"num_frames": frames, "num_inference_steps": steps}
    videos = {"base": animate_scene(pipe, scene, seed=seed, **call)}
    if shipped:
        pipe.load_adapters([str(shipped[adapter])], adapter_names=[adapter])
        videos[adapter] = animate_scene(pipe, scene, seed=seed, **call)
    else:
        log(f"no adapter is shipped for the {base} base yet (build them with `python -m miva.world.adapters --base "
            f"{base} --ship`); showing the base alone")
    recipes = shipped_recipes(base)
    motion = recipes[adapter].motion if adapter in recipes else adapter  # a shipped folder the recipes do not list
    world_scene, target = make_scene("heldout", scene), get_motion(motion)
    truth = render_clip(world_scene, target, frames, 64)
    scores = {name: evaluate_video(video, world_scene, target) for name, video in videos.items()}
    shown = videos[adapter] if shipped else videos["base"]
    labels = comparison_labels(adapter) if shipped else ("ground truth", "base")
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in (
        ("mp4", "demo.mp4"), ("gif", "demo.gif"), ("side_by_side", "side_by_side.gif"), ("motion", "motion.json"))}
    export_to_video([Image.fromarray(f) for f in shown], paths["mp4"], fps=8)
    write_gif(shown, paths["gif"])
    write_gif(side_by_side([truth, *videos.values()], labels=labels), paths["side_by_side"])
    with open(paths["motion"], "w", encoding="utf-8") as f:
        json.dump({"scene": scene, "prompt": world_scene.prompt, "target": target.describe(), "world_base": base,
                   "num_frames": frames, **scores}, f, indent=2)
    log(f"held-out scene {scene}: {world_scene.prompt!r}; target motion of {adapter!r}: {target.describe()}")
    for name, row in scores.items():
        label = "base alone" if name == "base" else f"with {name!r}"
        log(f"  {label:>16}: {_describe(row)}; PSNR vs ground truth {row['psnr']:.1f} dB")
    log(f"{base} base, {frames} frames, {steps} steps, {len(videos)} videos in {time.perf_counter() - start:.1f} s")
    for kind in ("mp4", "gif", "side_by_side", "motion"):
        log(f"wrote {paths[kind]}")
    return paths


def _describe(row: dict) -> str:
    from .world.motions import Motion

    return f"{Motion(**row['motion']).describe()} (class {row['class']})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--adapter", default="right", help="shipped MotionWorld adapter (default: right)")
    parser.add_argument("--scene", type=int, default=0, help="held-out scene index (default: 0)")
    parser.add_argument("--base", choices=("unet", "wan"), default=DEMO_BASE,
                        help=f"MotionWorld base: wan (miva-world-wan, Wan2.1 DiT) or unet (miva-world, AnimateDiff); "
                        f"default {DEMO_BASE}")
    parser.add_argument("--frames", type=int, default=None,
                        help="number of frames, >= 2 (default: the base's, 8 on unet, 9 on wan; 8 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 25; 4 with --tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--tiny", action="store_true", help="random tiny components instead (mechanics only)")


def run(args: argparse.Namespace) -> int:
    if args.tiny:
        run_tiny_demo(args.out, frames=args.frames or 8, steps=args.steps or 4, seed=args.seed)
    else:
        run_demo(args.out, adapter=args.adapter, scene=args.scene, frames=args.frames, steps=args.steps,
                 seed=args.seed, base=args.base)
    return 0

"""`miva demo`: animate an unseen MotionWorld scene with a shipped MIVA adapter, next to the base model alone.

Needs no download and no GPU (well under a minute on 2 CPU cores). The base model and the adapters ship inside the
package (`miva.world`); the scene is a held-out one, never seen in training. Writes the adapter's video (mp4 + GIF),
a side-by-side GIF (columns captioned ground truth | base | base + adapter) and the measured motion of both (`motion.json`).

    miva demo --out outputs/demo --adapter right       # also: zoom_in, rotate_cw
    miva demo --tiny                                   # the random tiny components: mechanics only, no real motion
"""

from __future__ import annotations

import argparse
import json
import os
import time

HELP = "animate an unseen scene with a shipped MotionWorld adapter (offline, CPU); writes videos and measured motion"
ADAPTER_NAME = "demo"
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
    frames: int = 8,
    steps: int = 25,
    seed: int = 0,
    log=print,
) -> dict[str, str]:
    """Animate held-out MotionWorld scene `scene` with the base alone and with shipped adapter `adapter`.

    Writes `demo.mp4` and `demo.gif` (with the adapter), `side_by_side.gif` (ground truth of the adapter's motion |
    base | base + adapter) and `motion.json` (the fitted motion and scores of both videos) into `out_dir`; returns
    their paths by kind (`"mp4"`, `"gif"`, `"side_by_side"`, `"motion"`).
    """
    from diffusers.utils import export_to_video
    from PIL import Image

    from .world import load_pipeline, make_scene, shipped_adapters
    from .world.adapters import SHIPPED
    from .world.evaluate import animate_scene
    from .world.metrics import evaluate_video
    from .world.motions import get_motion
    from .world.samples import comparison_labels, side_by_side, write_gif
    from .world.scenes import render_clip

    shipped = shipped_adapters()
    if adapter not in shipped:
        raise ValueError(f"adapter={adapter!r} is not a shipped MotionWorld adapter; choose one of {sorted(shipped)}")
    if frames < 2:
        raise ValueError(f"frames={frames} must be >= 2 (frame 0 is the input image)")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    start = time.perf_counter()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    call = {"num_frames": frames, "num_inference_steps": steps}
    base = animate_scene(pipe, scene, seed=seed, **call)
    pipe.load_adapters([str(shipped[adapter])], adapter_names=[adapter])
    adapted = animate_scene(pipe, scene, seed=seed, **call)
    motion = SHIPPED[adapter].motion if adapter in SHIPPED else adapter  # a shipped folder SHIPPED does not list
    world_scene, target = make_scene("heldout", scene), get_motion(motion)
    truth = render_clip(world_scene, target, frames, 64)
    scores = {"base": evaluate_video(base, world_scene, target), adapter: evaluate_video(adapted, world_scene, target)}
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in (
        ("mp4", "demo.mp4"), ("gif", "demo.gif"), ("side_by_side", "side_by_side.gif"), ("motion", "motion.json"))}
    export_to_video([Image.fromarray(f) for f in adapted], paths["mp4"], fps=8)
    write_gif(adapted, paths["gif"])
    write_gif(side_by_side([truth, base, adapted], labels=comparison_labels(adapter)), paths["side_by_side"])
    with open(paths["motion"], "w", encoding="utf-8") as f:
        json.dump({"scene": scene, "prompt": world_scene.prompt, "target": target.describe(), **scores}, f, indent=2)
    log(f"held-out scene {scene}: {world_scene.prompt!r}; target motion of {adapter!r}: {target.describe()}")
    for name, _video in (("base alone", base), (f"with {adapter!r}", adapted)):
        row = scores["base" if name == "base alone" else adapter]
        log(f"  {name:>16}: {_describe(row)}; PSNR vs ground truth {row['psnr']:.1f} dB")
    log(f"{frames} frames, {steps} steps, 2 videos in {time.perf_counter() - start:.1f} s")
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
    parser.add_argument("--frames", type=int, default=8, help="number of frames, >= 2 (default: 8)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 25; 4 with --tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--tiny", action="store_true", help="random tiny components instead (mechanics only)")


def run(args: argparse.Namespace) -> int:
    if args.tiny:
        run_tiny_demo(args.out, frames=args.frames, steps=args.steps or 4, seed=args.seed)
    else:
        run_demo(args.out, adapter=args.adapter, scene=args.scene, frames=args.frames, steps=args.steps or 25,
                 seed=args.seed)
    return 0

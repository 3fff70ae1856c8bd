"""`miva demo`: animate a generated test picture with the tiny offline components and one MIVA adapter.

Needs no download and no GPU (a few seconds on 2 CPU cores). The tiny models are random, so the video shows the
mechanics (frame 0 is the input picture, frames 1..F-1 are sampled), not a meaningful motion.

    miva demo --out outputs/demo --frames 8 --steps 4
"""

from __future__ import annotations

import argparse
import os
import time

HELP = "animate a generated test image with tiny offline weights and one adapter; writes an mp4 and a GIF"
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


def run_demo(
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--frames", type=int, default=8, help="number of frames, >= 2 (default: 8)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny weights, adapter and noise (default: 0)")


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, frames=args.frames, steps=args.steps, seed=args.seed)
    return 0

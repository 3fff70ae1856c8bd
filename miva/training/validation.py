"""Validation videos during training: the trainer's `validation_pipeline()` on the training components, GIFs per
validation step."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image

    from .train import MIVATrainer

__all__ = ["run_validation", "validation_images"]

VALIDATION_FOLDER = "validation"


def validation_images(trainer: MIVATrainer) -> list[tuple[str, Image.Image]]:
    """`(name, RGB image)` pairs: `validation.image` paths, or the first frame of the first training clip (cropped
    to the training size)."""
    from diffusers.utils import load_image
    from PIL import Image

    from .data import read_clip, resize_center_crop

    paths = trainer.config.validation.images
    if paths:
        return [(Path(p).stem, load_image(p).convert("RGB")) for p in paths]
    clip = trainer.dataset.clips[0]
    frame = torch.from_numpy(read_clip(clip)[:1]).permute(0, 3, 1, 2)
    frame = resize_center_crop(frame, trainer.config.height, trainer.config.width).round().clamp(0, 255).byte()
    return [(f"{Path(clip).stem}-frame0", Image.fromarray(frame[0].permute(1, 2, 0).numpy()))]


def run_validation(trainer: MIVATrainer) -> list[Path]:
    """Animate the validation images with the adapter being trained; GIFs go to `<output_dir>/validation/`.

    Runs in eval mode under `no_grad` (and the run's autocast), with a generator seeded by `validation.seed` (default
    the training seed). The adapter settings (active adapters, enabled, composition mode) are restored afterwards;
    the pipeline's per-call values (prompt layout, CA store) end with each call (`miva_call`).
    """
    from diffusers.utils import export_to_gif

    from ..attention_processors.install import kept_adapter_settings

    config = trainer.config
    settings = config.validation
    unet = trainer.unet
    folder = Path(config.output_dir) / VALIDATION_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    pipe = trainer.validation_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # The pipeline's own arguments: a UNet-only sampling setting (e.g. `use_adain_norm`) does not reach a Wan one.
    accepted = inspect.signature(type(pipe).__call__).parameters
    extra = {k: v for k, v in settings.pipeline_kwargs.items() if k in accepted}
    dropped = sorted(k for k, v in settings.pipeline_kwargs.items() if k not in accepted and v is not None)
    if dropped:
        trainer.logger.info(f"validation: {dropped} do not apply to {type(pipe).__name__}; left out")
    prompt = settings.prompt or config.prompt or trainer.dataset.prompts[0]
    seed = config.seed if settings.seed is None else settings.seed
    gifs = []
    unet.eval()
    try:
        with torch.no_grad(), trainer.accelerator.autocast(), kept_adapter_settings(unet):
            for name, image in validation_images(trainer):
                out = pipe(
                    image=image,
                    prompt=prompt,
                    num_frames=settings.num_frames or config.num_frames,
                    height=settings.height or config.height,
                    width=settings.width or config.width,
                    num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pil",
                    **extra,
                )
                path = folder / f"step-{trainer.global_step:06d}-{name}.gif"
                export_to_gif(out.frames[0], str(path), fps=8)
                gifs.append(path)
    finally:
        unet.train()
    trainer.logger.info(f"validation GIFs: {[str(g) for g in gifs]}")
    return gifs

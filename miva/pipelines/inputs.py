"""Inputs of `MIVAPipeline`: the research sampling options (seed names and defaults) and the input image.

`SamplingOptions` groups the options so that callers (e.g. a config-driven `miva infer`) can build and validate
them from a seed config's `validation_data` before calling the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from ..guards import check_finite_tensor, check_float, check_int
from .latent_init import DCT_CUTOFF_SHAPES, FIRST_FRAME_COND_TYPES, check_adain_mode

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_SIZE = 8192  # pixels per side; larger sizes (and batches) only reach the allocator
MAX_VIDEOS = 256
MAX_GUIDANCE = 1000.0  # beyond this the guided noise overflows into NaN frames


@dataclass(kw_only=True)
class SamplingOptions:
    """How the initial latents are built and refined (docs/research.md#sampling); field names are the seed's keys."""

    use_adain_norm: str = "off"  # "off" / "on" (after every step, LAMP) / "last" (once after the loop)
    shared_noise_ratio: float = 0.0  # n_f <- r n_0 + (1 - r) n_f for f >= 1
    first_frame_cond_type: str = "lamp"  # "lamp" / "cinemo"
    use_dct_init: bool = False  # cinemo only
    dct_cutoff_ratio: float = 0.23
    dct_cutoff_shape: str = "rect"  # "rect" / "tri"
    cil_ratio: float = 1.0  # timesteps round(t * cil_ratio)
    cil_analytic: bool = False  # initial noise with CIL's analytic std

    def validate(self) -> SamplingOptions:
        """Raise `ValueError` naming the option, its value and what is valid; return self."""
        check_adain_mode(self.use_adain_norm)
        for name in ("use_dct_init", "cil_analytic"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")
        for name in ("shared_noise_ratio", "dct_cutoff_ratio", "cil_ratio"):
            setattr(self, name, check_float(name, getattr(self, name)))
        if not 0.0 <= self.shared_noise_ratio <= 1.0:
            raise ValueError(f"shared_noise_ratio={self.shared_noise_ratio!r} must be in [0, 1]")
        if self.first_frame_cond_type not in FIRST_FRAME_COND_TYPES:
            raise ValueError(
                f"first_frame_cond_type={self.first_frame_cond_type!r} is not one of {FIRST_FRAME_COND_TYPES}"
            )
        if self.use_dct_init and self.first_frame_cond_type != "cinemo":
            raise ValueError(
                f"use_dct_init=True requires first_frame_cond_type='cinemo', got {self.first_frame_cond_type!r}"
            )
        if self.dct_cutoff_shape not in DCT_CUTOFF_SHAPES:
            raise ValueError(f"dct_cutoff_shape={self.dct_cutoff_shape!r} is not one of {DCT_CUTOFF_SHAPES}")
        if not 0.0 <= self.dct_cutoff_ratio <= 1.0:
            raise ValueError(f"dct_cutoff_ratio={self.dct_cutoff_ratio!r} must be in [0, 1]")
        if not self.cil_ratio > 0:
            raise ValueError(f"cil_ratio={self.cil_ratio!r} must be > 0")
        return self


def check_call_arguments(
    *,
    height,
    width,
    num_inference_steps,
    num_videos_per_prompt,
    guidance_scale,
    eta,
    output_type,
    prompt,
    negative_prompt,
    generator,
    clip_skip,
    cross_attention_kwargs,
    text_layers: int | None = None,
) -> None:
    """Types and ranges of `MIVAPipeline.__call__`'s plain arguments; one `TypeError` / `ValueError` naming the
    argument, its value and what is valid (instead of an error from deep inside torch, or a NaN video).
    `text_layers`: the text encoder's number of layers (the largest `clip_skip`)."""
    check_int("height", height, 8, MAX_SIZE)
    check_int("width", width, 8, MAX_SIZE)
    check_int("num_inference_steps", num_inference_steps, 1)
    check_int("num_videos_per_prompt", num_videos_per_prompt, 1, MAX_VIDEOS)
    check_float("guidance_scale", guidance_scale, -MAX_GUIDANCE, MAX_GUIDANCE)
    check_float("eta", eta, 0.0, 1.0)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not one of {OUTPUT_TYPES}")
    for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if value is None or isinstance(value, str) or isinstance(value, dict):  # dict: FreeNoise {frame: text}
            continue  # (dict contents are checked with FreeNoise's own rules, `prompts.check_interpolation_inputs`)
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(p, str) for p in value):
            raise TypeError(f"{name}={value!r:.80} must be a string, a non-empty list of strings or a "
                            "{frame: text} dict (FreeNoise)")
    generators = generator if isinstance(generator, list) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators) or generators == []:
        raise TypeError(f"generator={generator!r:.80} must be a torch.Generator, a list of them, or None")
    if clip_skip is not None:
        check_int("clip_skip", clip_skip, 0, text_layers)
    if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
        raise TypeError(f"cross_attention_kwargs={cross_attention_kwargs!r:.80} must be a dict or None")


def check_latents(latents, expected: tuple[int, ...]) -> None:
    """`latents` (given initial noise) must be a finite float tensor of shape `expected` `(B, C, F, H/8, W/8)`."""
    if latents is None:
        return
    if not torch.is_tensor(latents) or not latents.is_floating_point():
        raise TypeError(f"latents must be a float tensor of shape {expected}, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(expected):
        raise ValueError(
            f"latents has shape {tuple(latents.shape)} but this call needs {expected} "
            "(batch * num_videos_per_prompt, channels, num_frames, height / 8, width / 8)"
        )
    check_finite_tensor("latents", latents)


def check_scaled_timesteps(timesteps: torch.Tensor, cil_ratio: float, num_train_timesteps: int) -> None:
    """CIL's scaled timesteps must stay below the scheduler's training timesteps (it indexes its tables by them)."""
    largest = int(timesteps.max())
    if largest >= num_train_timesteps:
        raise ValueError(
            f"cil_ratio={cil_ratio!r} scales the first timestep to {largest}, beyond the scheduler's "
            f"{num_train_timesteps} training timesteps; use cil_ratio <= "
            f"{(num_train_timesteps - 1) / max(largest / cil_ratio, 1):.3f}"
        )


def check_finite_result(latents: torch.Tensor) -> None:
    """A last guard: a denoising that produced NaN / inf ends in an error, never in a silently broken video."""
    if not bool(torch.isfinite(latents).all()):
        raise ValueError(
            "the denoised latents contain NaN or infinity: an adapter weight, a given latent / embedding or a "
            "numerical overflow (fp16?) poisoned the call; check the adapters and inputs, or use float32"
        )


def image_to_tensors(image) -> list[torch.Tensor]:
    """Images -> a list of `(3, H, W)` float tensors in [0, 1].

    Accepts a PIL image (alpha dropped); a numpy `(H, W, 3|4)` array, uint8 or float in [0, 1]; a torch `(3, H, W)`
    float tensor in [0, 1] (diffusers' convention; a tensor with negative values is read as [-1, 1]); a batch
    `(N, H, W, C)` array or `(N, 3, H, W)` tensor; or a list of any of these.
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image=[] is empty: pass at least one image")
        return [t for item in image for t in image_to_tensors(item)]
    if isinstance(image, PIL.Image.Image):
        return [torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)]
    if isinstance(image, np.ndarray):
        if image.ndim == 4:
            return [t for item in image for t in image_to_tensors(item)]
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"image: numpy array of shape {image.shape} is not (H, W, 3) or (H, W, 4)")
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image: numpy dtype {image.dtype} is not uint8 or float")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return [torch.from_numpy(image[..., :3].astype(np.float32) / scale).permute(2, 0, 1)]
    if torch.is_tensor(image):
        if image.ndim == 4:
            return [t for item in image for t in image_to_tensors(item)]
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"image: tensor {tuple(image.shape)} ({image.dtype}) is not a float (3, H, W) image")
        image = image.detach().float().cpu()
        return [(image + 1) / 2 if image.min() < 0 else image]
    raise ValueError(f"image of type {type(image).__name__} is not a PIL image, numpy array, tensor or list")


def preprocess_image(image, height: int, width: int) -> torch.Tensor:
    """`image` (see `image_to_tensors`) -> `(N, 3, height, width)` in [-1, 1].

    Each image is scaled to cover `width` x `height` keeping its aspect ratio (bicubic, antialiased), then
    center-cropped, the same way for every input type (diffusers' `VaeImageProcessor` crops PIL images only); then
    normalised to [-1, 1] like `VaeImageProcessor`. An image already at the target size is used as it is.
    """
    out = []
    for i, x in enumerate(image_to_tensors(image)):
        if min(x.shape[-2:]) < 1:
            raise ValueError(f"image {i} is {x.shape[-1]}x{x.shape[-2]} pixels; it needs at least 1x1")
        check_finite_tensor(f"image {i}", x)
        x = x[None].clamp(0, 1)
        h0, w0 = x.shape[-2:]
        if (h0, w0) != (height, width):
            scale = max(height / h0, width / w0)
            size = (max(height, round(h0 * scale)), max(width, round(w0 * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            top, left = (size[0] - height) // 2, (size[1] - width) // 2
            x = x[..., top : top + height, left : left + width]
        out.append(VaeImageProcessor.normalize(x))
    return torch.cat(out)


def check_miva_inputs(pipe, options: SamplingOptions, *, num_frames, height, width, batch_prompt, adapter_weights,
                      decode_chunk_size) -> None:
    """The MIVA options of `MIVAPipeline.__call__` against the pipeline's state (its UNet's frame limit and active
    adapters, FreeNoise, the scheduler): `ValueError` naming the argument for every invalid one."""
    from diffusers import DDIMScheduler

    options.validate()
    if height % 8 or width % 8:
        raise ValueError(f"height={height} and width={width} must both be divisible by 8")
    context = pipe.unet.miva_context
    if not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames={num_frames!r} must be an int >= 2 (frame 0 is the input image)")
    if num_frames > context.max_frames and not pipe.free_noise_enabled:
        raise ValueError(
            f"num_frames={num_frames} exceeds the motion module's maximum of {context.max_frames} "
            "(motion_max_seq_length); use fewer frames or pipe.enable_free_noise()"
        )
    if options.cil_ratio != 1 and not isinstance(pipe.scheduler, DDIMScheduler):
        raise ValueError(
            f"cil_ratio={options.cil_ratio!r} needs a DDIMScheduler (it steps by timestep value), "
            f"got {type(pipe.scheduler).__name__}; use cil_ratio=1"
        )
    check_per_adapter_list(context, "adapter_weights", adapter_weights)
    check_batch_prompt(context, batch_prompt)
    for i, weight in enumerate(adapter_weights or []):
        check_float(f"adapter_weights[{i}]", weight)  # NaN / inf would poison every frame
    if not isinstance(decode_chunk_size, int) or decode_chunk_size < 1:
        raise ValueError(f"decode_chunk_size={decode_chunk_size!r} must be a positive int")


def check_per_adapter_list(context, arg: str, value) -> None:
    """`value` (argument `arg`) is None or a list with one entry per active adapter of `context`."""
    active = [name for name, _ in context.active]
    if value is not None and (not isinstance(value, (list, tuple)) or len(value) != len(active)):
        raise ValueError(f"{arg}={value!r} must be a list with one entry per active adapter, in order "
                         f"{active} ({len(active)} entries)")


def check_batch_prompt(context, batch_prompt, *, interpolation: bool = True) -> None:
    """The per-adapter prompts of a call (UNet or Wan): one entry per active adapter, each a string, None (the
    adapter's config prompt, else the main prompt) or, with `interpolation`, a FreeNoise `{frame: text}` dict;
    refused while adapters are fused."""
    check_per_adapter_list(context, "batch_prompt", batch_prompt)
    kinds = (str, dict) if interpolation else (str,)
    if batch_prompt is not None and not all(p is None or isinstance(p, kinds) for p in batch_prompt):
        what = "strings, {frame: text} dicts (FreeNoise prompt interpolation) or None" if interpolation else (
            "strings or None")
        raise ValueError(f"batch_prompt={batch_prompt!r} entries must be {what}")
    fused = [name for name, _ in context.fused]
    if batch_prompt and fused:
        raise ValueError(f"batch_prompt (one prompt per adapter) cannot be used while adapters {fused} are fused "
                         "(each adapter's K/V delta applies to a different prompt); call pipe.unfuse_adapters() "
                         "first, or leave batch_prompt out")

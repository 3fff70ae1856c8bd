"""The mask stream at inference (M-MIVA, docs/mask_branch.md): each mask-branch adapter's region mask video is
denoised beside the video in its own latent stream, and its soft masks restrict the adapter to its region.

- Frame 0 of a stream is the VAE latent of the given frame-0 mask (replicated to 3 channels, mapped to [-1, 1]),
  clean at every step like the video's frame 0; frames 1.. start from their own noise (their own generator: the
  video's draws are unchanged) and are stepped by their own copy of the scheduler.
- Until `mask_inference_cutoff` (a fraction of the steps) the stream is stepped at every step; its noise is
  predicted every `mask_inference_stride` steps, in the same UNet forward as the video (its rows appended), and
  reused in between. After the cutoff the stream stops and its last masks stay.
- The soft masks are the VAE decoding of the stream's predicted x0 (channel mean, [-1, 1] -> [0, 1]), refreshed
  with each prediction; before the first one every frame uses the frame-0 mask.
- Under classifier-free guidance the stream is not guided: it runs once, on the conditional prompt, and the same
  masks gate both halves of the video batch (`MaskGuidance.gate`).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..attention_processors import get_miva_context
from ..attention_processors.mask_guidance import MaskGuidance, check_mask_attention_mode
from .inputs import preprocess_image

__all__ = ["MaskBranchInputs", "MaskStream", "mask_from_input"]


@dataclass
class MaskBranchInputs:
    """`MIVAPipeline(mask_branch=...)`: the frame-0 masks and how the mask stream runs (docs/mask_branch.md).

    - `masks`: mask-branch adapter name -> its region's frame-0 mask, `(H, W)` or one per video `(B, H, W)`: a
      tensor / array in [0, 1] (uint8: 0..255), a PIL image or an image path (grey); scaled and cropped like the
      input image when its size differs from the video's;
    - `mask_inference_stride`: predict the stream's noise every this many steps (positive int);
    - `mask_inference_cutoff`: fraction of the steps, in (0, 1], during which the stream is stepped;
    - `mask_attention_mode`: `"SA"`, `"CA"` or `"original"` (both), where the adapter is restricted to its region;
    - `use_image_guidance`: the stream's queries also attend to the video's tokens of the same frame;
    - `seed`: of the stream's own noise.
    """

    masks: dict[str, Any] = field(default_factory=dict)
    mask_inference_stride: int = 1
    mask_inference_cutoff: float = 1.0
    mask_attention_mode: str = "original"
    use_image_guidance: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.masks, dict) or not self.masks:
            raise ValueError(f"mask_branch.masks={self.masks!r:.80} must be a non-empty dict: adapter name -> "
                             "its frame-0 mask")
        stride = self.mask_inference_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"mask_inference_stride={stride!r} must be a positive int (predict the mask stream "
                             "every that many steps)")
        cutoff = self.mask_inference_cutoff
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff <= 1:
            raise ValueError(f"mask_inference_cutoff={cutoff!r} must be a number in (0, 1] (the fraction of the "
                             "steps during which the mask stream runs)")
        check_mask_attention_mode(self.mask_attention_mode)
        if not isinstance(self.use_image_guidance, bool):
            raise ValueError(f"use_image_guidance={self.use_image_guidance!r} must be true or false")


def mask_from_input(mask, name: str, videos: int, height: int, width: int) -> torch.Tensor:
    """One adapter's frame-0 mask(s) as float `(videos, H, W)` in [0, 1]; a one-line error naming the adapter. A
    mask of another size is scaled and cropped as the input image is (`inputs.preprocess_image`: cover, centre)."""
    if isinstance(mask, (str, os.PathLike)):
        if not os.path.isfile(mask):
            raise ValueError(f"mask_branch.masks[{name!r}]: {os.fspath(mask)!r} is not a file")
        with PIL.Image.open(mask) as image:
            mask = image.convert("L")
    if hasattr(mask, "convert"):  # PIL
        mask = np.array(mask.convert("L"))  # a writable copy
    tensor = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor, given = tensor.float(), tuple(tensor.shape)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] not in (1, videos) or min(tensor.shape[1:]) < 1:
        raise ValueError(f"mask_branch.masks[{name!r}] has shape {given}; give (H, W) or ({videos}, H, W)")
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError(f"mask_branch.masks[{name!r}] has values outside [0, 1]")
    if tuple(tensor.shape[1:]) != (height, width):
        pixels = preprocess_image(tensor[:, None].expand(-1, 3, -1, -1), height, width)  # in [-1, 1]
        tensor = ((pixels[:, 0] + 1) / 2).clamp(0, 1)
    return tensor.expand(videos, -1, -1).contiguous()


class MaskStream:
    """The mask streams of one pipeline call; `guidance` goes into the call's `miva_call`."""

    def __init__(self, pipe, inputs: MaskBranchInputs | dict, *, videos: int, num_frames: int, height: int,
                 width: int, num_steps: int, dtype: torch.dtype, device, uses_ca_maps: bool):
        if isinstance(inputs, dict):
            valid = [f.name for f in fields(MaskBranchInputs)]
            unknown = [k for k in inputs if k not in valid]
            if unknown:
                raise ValueError(f"mask_branch: unknown field {unknown[0]!r}; the fields are {valid}")
            inputs = MaskBranchInputs(**inputs)
        if not isinstance(inputs, MaskBranchInputs):
            raise ValueError(f"mask_branch={inputs!r:.60} must be a MaskBranchInputs or a dict of its fields")
        context = get_miva_context(pipe.unet)
        active = [name for name, _ in context.active] if context.enabled else []
        for name in inputs.masks:
            config = context.configs.get(name)
            if config is None or not config.use_mask_branch or name not in active:
                valid = [n for n in active if context.configs[n].use_mask_branch]
                raise ValueError(f"mask_branch.masks: {name!r} is not an active adapter with a mask branch; "
                                 f"valid: {valid}")
        if uses_ca_maps or pipe.free_init_enabled or pipe.free_noise_enabled:
            raise ValueError("mask_branch: not supported together with ca_map_resolutions, FreeInit or FreeNoise "
                             "(the mask rows would join their batches)")
        self.pipe, self.inputs = pipe, inputs
        self.names = tuple(inputs.masks)
        self.stop = math.ceil(inputs.mask_inference_cutoff * num_steps)  # steps [0, stop) step the stream
        first = torch.cat([mask_from_input(inputs.masks[n], n, videos, height, width) for n in self.names])
        self.first_masks = first.to(device)  # (K*videos, H, W)
        pixels = (first[:, None].expand(-1, 3, -1, -1) * 2 - 1).to(device=device, dtype=pipe.vae.dtype)
        # The mean of the posterior: the frame-0 latent is deterministic and draws nothing from the video's generator.
        frame0 = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        self.frame0 = frame0.unsqueeze(2).to(dtype)  # (K*videos, C, 1, h, w)
        generator = torch.Generator(device="cpu").manual_seed(inputs.seed)
        shape = (len(first), frame0.shape[1], num_frames - 1, *frame0.shape[2:])
        noise = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        self.latents = torch.cat([self.frame0, noise * pipe.scheduler.init_noise_sigma], dim=2)
        self.scheduler = copy.deepcopy(pipe.scheduler)  # its own step state (timesteps already set)
        self.eps = None
        self.guidance = MaskGuidance(self.names, videos, num_frames, inputs.mask_attention_mode,
                                     inputs.use_image_guidance)
        for j, name in enumerate(self.names):  # until the first prediction: the frame-0 mask on every frame
            block = self.first_masks[j * videos:(j + 1) * videos]
            self.guidance.set_masks(name, block[:, None].expand(-1, num_frames, -1, -1))

    def denoise(self, run, model_input: torch.Tensor, text: torch.Tensor, step: int, t, cfg: bool) -> torch.Tensor:
        """The video's noise prediction for `model_input` (`run(sample, text)` is one UNet forward), the mask
        streams predicted in the same forward at their steps and stepped by their scheduler copy."""
        if step >= self.stop:
            return run(model_input, text)
        if step % self.inputs.mask_inference_stride == 0:
            x = self.scheduler.scale_model_input(self.latents, t)
            x = torch.cat([self.frame0, x[:, :, 1:]], dim=2)
            cond_text = text[text.shape[0] // 2:] if cfg else text  # the stream runs once, on the conditional prompt
            self.guidance.stream_rows = True
            try:
                out = run(torch.cat([model_input, x.to(model_input.dtype)]),
                          torch.cat([text, cond_text.repeat(len(self.names), *[1] * (text.ndim - 1))]))
            finally:
                self.guidance.stream_rows = False
            noise_pred, self.eps = out[:model_input.shape[0]], out[model_input.shape[0]:]
        else:
            noise_pred = run(model_input, text)
        stepped = self.scheduler.step(self.eps[:, :, 1:], t, self.latents[:, :, 1:])
        self.latents = torch.cat([self.frame0, stepped.prev_sample], dim=2)
        if step % self.inputs.mask_inference_stride == 0:
            x0 = getattr(stepped, "pred_original_sample", None)
            if x0 is None:
                raise ValueError(f"mask_branch: {type(self.scheduler).__name__}.step returns no predicted x0 "
                                 "(pred_original_sample); use DDIM, DDPM, Euler or another scheduler that does")
            self._update_masks(torch.cat([self.frame0, x0.to(self.frame0.dtype)], dim=2))
        return noise_pred

    def _update_masks(self, x0: torch.Tensor) -> None:
        """Soft masks `(videos, F, H, W)` from the streams' predicted x0 `(K*videos, C, F, h, w)`; frame 0 is the
        given mask."""
        video = self.pipe.decode_latents(x0.to(self.pipe.vae.dtype))  # (K*videos, 3, F, H, W), about [-1, 1]
        soft = ((video.float().mean(dim=1) + 1) / 2).clamp(0, 1)
        soft[:, 0] = self.first_masks.to(soft.dtype)
        videos = self.guidance.videos
        for j, name in enumerate(self.names):
            self.guidance.set_masks(name, soft[j * videos:(j + 1) * videos])

    def mask_videos(self) -> dict[str, torch.Tensor]:
        """Adapter name -> its predicted mask video `(videos, F, H, W)` in [0, 1] (float32, on the CPU)."""
        return {name: self.guidance.soft[name].float().cpu() for name in self.names}

"""`MIVAWanPipeline`: image-to-video with MIVA adapters on Wan2.1's text-to-video base (`WanPipeline`).

Sampling as in the official MIVA-Wan release: latent frame 0 is the VAE latent of the input image, put into every
transformer input and back after every scheduler step (the transformer sees all frames with one timestep; frame 0
is never left stepped). The MIVA processors read this call's adapter weights through one `miva_call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import WanPipeline
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils import replace_example_docstring

from ..attention_processors import miva_call
from ..attention_processors.gates import set_denoising_step
from ..backbones.wan.install import install_miva_wan
from .inputs import check_batch_prompt
from .latent_init import build_initial_latents
from .wan_adapter_verbs import WanAdapterVerbsMixin

__all__ = ["FlowForwardNoise", "MIVAWanPipeline", "check_flow_scheduler", "check_num_frames"]


class FlowForwardNoise:
    """`add_noise` of the flow-matching forward process, `(1 - sigma) x + sigma * noise` with `sigma = t / 1000`,
    for the research latent init's "cinemo" base (`latent_init.cinemo_base`, t = 975): diffusers' flow schedulers
    have `scale_noise` with another signature, and their sigmas depend on the step count."""

    @staticmethod
    def add_noise(original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = (timesteps.to(noise.dtype) / 1000.0).view(-1, 1, 1, 1, 1)
        return (1 - sigma) * original + sigma * noise


# WanPipeline's T5 prompt length (its `max_sequence_length` default), and the longest a Wan base reads.
WAN_PROMPT_LENGTH = 512


def default_prompt_length(tokenizer) -> int:
    """The T5 length prompts are padded to when a call gives no `max_sequence_length`: the tokenizer's
    `model_max_length` (the length the base was trained with: T5 pads with zeros that the transformer attends to
    unmasked, so the padding length is part of the conditioning; the MotionWorld Wan base's tokenizer says 32), at
    most Wan's 512 (a tokenizer without a limit reports a huge sentinel)."""
    return min(WAN_PROMPT_LENGTH, int(getattr(tokenizer, "model_max_length", WAN_PROMPT_LENGTH)))


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import load_image
        >>> from miva import MIVAWanPipeline

        >>> pipe = MIVAWanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype=torch.bfloat16).to("cuda")
        >>> pipe.load_adapters("./waterfall-wan", adapter_names="waterfall")
        >>> frames = pipe(image=load_image("waterfall.png"), num_frames=17, height=480, width=832).frames[0]
        ```
"""


def check_num_frames(num_frames: Any, temporal: int = 4) -> int:
    """`num_frames` if it is `temporal*k + 1` (Wan's VAE keeps frame 0 and packs every `temporal` frames after
    it into one latent frame); a `ValueError` naming the nearest valid counts otherwise."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be a positive int of the form {temporal}k+1 (e.g. 17, 81)")
    if (num_frames - 1) % temporal:
        lower = (num_frames - 1) // temporal * temporal + 1
        raise ValueError(f"num_frames={num_frames} is not {temporal}k+1: Wan's VAE packs {temporal} frames after the "
                         f"first into one latent frame; use {lower} or {lower + temporal}")
    return num_frames


def check_flow_scheduler(scheduler) -> None:
    """Wan predicts a flow velocity: the scheduler must be flow matching (`FlowMatchEulerDiscreteScheduler`, or
    UniPC / DPM-Solver with `use_flow_sigmas=True, prediction_type="flow_prediction"`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = scheduler.config
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or (
            config.get("use_flow_sigmas", False) and config.get("prediction_type") == "flow_prediction"):
        return
    raise ValueError(f"scheduler {type(scheduler).__name__} is not a flow-matching scheduler (Wan predicts a flow "
                     "velocity): use FlowMatchEulerDiscreteScheduler, or UniPCMultistepScheduler(use_flow_sigmas=True,"
                     " prediction_type='flow_prediction', flow_shift=...)")


class MIVAWanPipeline(WanAdapterVerbsMixin, WanPipeline):
    """`WanPipeline` that animates a given image with MIVA adapters (the official MIVA-Wan recipe: T2V base, latent
    frame 0 pinned, empty prompt and guidance 1 by default). Wan2.2's two-stage `transformer_2` is refused."""

    def __init__(self, tokenizer, text_encoder, vae, scheduler, transformer=None, transformer_2=None,
                 boundary_ratio: float | None = None, expand_timesteps: bool = False):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                         transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
                         expand_timesteps=expand_timesteps)
        if transformer is None or transformer_2 is not None or expand_timesteps:
            raise ValueError("MIVAWanPipeline runs one Wan2.1 transformer (transformer=..., no transformer_2, "
                             "expand_timesteps=False): Wan2.2's two-stage and TI2V models are not supported yet")
        install_miva_wan(transformer)

    @torch.no_grad()
    def encode_image_latents(self, image, height: int, width: int, batch_size: int) -> torch.Tensor:
        """The normalised VAE latent of `image` (one picture, or one per video): `(batch, z_dim, 1, h, w)`, the
        distribution's mode (no sampling), normalised with the VAE's `latents_mean` / `latents_std` like Wan's."""
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, batch_size):
            raise ValueError(f"image: {len(images)} images for {batch_size} videos; give one image or one per video")
        pixels = self.video_processor.preprocess(images, height=height, width=width)  # (n, 3, H, W) in [-1, 1]
        pixels = pixels.to(self._execution_device, self.vae.dtype).unsqueeze(2)
        latent = self.vae.encode(pixels).latent_dist.mode()
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latent)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latent)
        latent = (latent - mean) * inv_std
        return latent.expand(batch_size, -1, -1, -1, -1) if latent.shape[0] == 1 else latent

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(self, image=None, prompt: str | list[str] | None = "", negative_prompt=None, height: int = 480,
                 width: int = 832, num_frames: int = 17, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 num_videos_per_prompt: int = 1, generator=None, latents: torch.Tensor | None = None,
                 prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "np", return_dict: bool = True,
                 adapter_weights: list[float] | None = None, first_frame_cond_type: str = "lamp",
                 shared_noise_ratio: float = 0.0, use_dct_init: bool = False, dct_cutoff_ratio: float = 0.23,
                 dct_cutoff_shape: str = "rect", callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int | None = None, attention_kwargs: dict | None = None,
                 batch_prompt: list[str | None] | None = None, adapter_masks: dict | None = None,
                 adapter_schedules: dict | None = None):
        r"""Animate `image` (`PIL.Image`, array or tensor; or one per video) into `num_frames` (4k+1) frames.

        `prompt` defaults to the empty prompt and `guidance_scale` to 1 (the official recipe; CFG when > 1);
        `adapter_weights`: this call's weights of the active adapters; `batch_prompt`: one prompt per active
        adapter (None: the adapter's config prompt, else the main prompt), read by its CA-LoRA branch (an
        implicit-prompt adapter reads no text); under CFG every adapter's chunk is the negative prompt. The research latent init
        (`latent_init.build_initial_latents`): `first_frame_cond_type` "lamp" (noise; default) or "cinemo" (the
        image forward-noised to t = 975 on the flow path, `FlowForwardNoise`), `shared_noise_ratio`,
        `use_dct_init` / `dct_cutoff_ratio` / `dct_cutoff_shape`. `adapter_masks` / `adapter_schedules`: where and
        when each active adapter acts (docs/regions.md; frames are the video's `num_frames`, grouped onto latent
        frames as the VAE groups them). Other arguments as in `WanPipeline`.

        Examples:
        """
        # 1. Check inputs.
        if image is None:
            raise ValueError("image is required: MIVAWanPipeline animates a given image (frame 0 of the video)")
        num_frames = check_num_frames(num_frames, self.vae_scale_factor_temporal)
        check_flow_scheduler(self.scheduler)
        multiple = self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if height % multiple or width % multiple:
            raise ValueError(f"height={height}, width={width} must be multiples of {multiple} (VAE x patch size)")
        self.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                          list(callback_on_step_end_tensor_inputs))
        check_batch_prompt(self.transformer.miva_context, batch_prompt, interpolation=False)
        self._guidance_scale, self._attention_kwargs, self._interrupt = guidance_scale, attention_kwargs, False
        # A diffusers verb called directly (`transformer.set_attn_processor`, ...) may have replaced ours: put them
        # back, adapters and all (idempotent; diffusers gives no hook for it).
        install_miva_wan(self.transformer)
        device = self._execution_device
        if prompt_embeds is not None:
            batch_size = prompt_embeds.shape[0]
        else:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)

        # 2. Encode the prompt and the image (frame 0).
        max_sequence_length = max_sequence_length or default_prompt_length(self.tokenizer)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guidance_scale > 1.0,
            num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length, device=device)
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)
        if batch_prompt:
            prompt_embeds, negative_prompt_embeds = self.add_adapter_prompts(
                batch_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length)
        total = batch_size * num_videos_per_prompt
        first = self.encode_image_latents(image, height, width, total).to(torch.float32)

        # 3. Timesteps and initial latents (noise, frame 0 pinned).
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        noise = self.prepare_latents(total, self.transformer.config.in_channels, height, width, num_frames,
                                     torch.float32, device, generator, latents)
        latents = build_initial_latents(first, noise, first_frame_cond_type=first_frame_cond_type,
                                        shared_noise_ratio=shared_noise_ratio, use_dct_init=use_dct_init,
                                        dct_cutoff_ratio=dct_cutoff_ratio, dct_cutoff_shape=dct_cutoff_shape,
                                        scheduler=FlowForwardNoise())
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)

        # 4. Denoising loop: frame 0 is the image latent in every transformer input and after every step.
        with miva_call(self.transformer, adapter_weights=adapter_weights, adapter_prompts=bool(batch_prompt),
                       num_frames=num_frames, adapter_masks=adapter_masks, adapter_schedules=adapter_schedules,
                       num_steps=num_inference_steps) as call, self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                set_denoising_step(call, i)  # per-step adapter schedules
                self._current_timestep = t
                model_input = latents.to(dtype)
                timestep = t.expand(latents.shape[0])
                noise_pred = self.transformer(hidden_states=model_input, timestep=timestep,
                                              encoder_hidden_states=prompt_embeds, attention_kwargs=attention_kwargs,
                                              return_dict=False)[0]
                if guidance_scale > 1.0:
                    noise_uncond = self.transformer(hidden_states=model_input, timestep=timestep,
                                                    encoder_hidden_states=negative_prompt_embeds,
                                                    attention_kwargs=attention_kwargs, return_dict=False)[0]
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                latents = torch.cat([first.to(latents), latents[:, :, 1:]], dim=2)
                if callback_on_step_end is not None:
                    values = {"latents": latents, "prompt_embeds": prompt_embeds,
                              "negative_prompt_embeds": negative_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: values[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                progress_bar.update()
        self._current_timestep = None

        # 5. Decode.
        if output_type == "latent":
            video = latents
        else:
            video = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if return_dict else (video,)

    def add_adapter_prompts(self, batch_prompt: list[str | None], cond: torch.Tensor, uncond: torch.Tensor | None,
                            max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`cond` `(videos, T, D)` -> `(videos, T * (1 + P), D)`: the main prompt, then each active adapter's
        (entry None: its config prompt, else the main prompt); T5 pads every prompt to `max_sequence_length`, so the
        chunks have equal length. `uncond` (CFG) repeats the negative prompt in every chunk, as on the UNet
        (docs/research.md#multi-adapter)."""
        context = self.transformer.miva_context
        chunks = [cond]
        for entry, (name, _) in zip(batch_prompt, context.active):
            text = entry if entry is not None else context.configs[name].prompt
            if text is None:
                chunks.append(cond)
                continue
            embeds = self._get_t5_prompt_embeds(text, max_sequence_length=max_sequence_length,
                                                device=cond.device, dtype=cond.dtype)
            chunks.append(embeds.expand(cond.shape[0], -1, -1))
        cond = torch.cat(chunks, dim=1)
        return cond, None if uncond is None else torch.cat([uncond] * len(chunks), dim=1)

    def decode_latents(self, latents: torch.Tensor, output_type: str = "np"):
        """Un-normalise `(batch, z_dim, frames, h, w)` latents, decode with the VAE and post-process (as Wan)."""
        config = self.vae.config
        latents = latents.to(self.vae.device, self.vae.dtype)
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents)
        video = self.vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)

"""`MIVAPipeline`: image-to-video on the stock diffusers AnimateDiff stack with MIVA adapters (docs/research.md#sampling).

Sampling follows the research pipeline (docs/research.md#sampling): frame 0 is the clean VAE latent of the input image at
every step and is never stepped; the UNet sees all frames, `scheduler.step` updates frames 1..F-1 only. Initial
latents, CIL and AdaIN come from `latent_init.py`; prompt assembly from `prompts.py`; CA maps from `ca_maps.py`;
checks from `inputs.py`. The MIVA processors read this call's values from one `CallState` (`miva_call`).
"""

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..attention_processors import install_miva_processors, miva_call
from ..attention_processors.gates import set_denoising_step
from ..loaders import MIVALoaderMixin
from .ca_maps import CAMapStore, resolve_ca_map_resolutions
from .inputs import (
    SamplingOptions,
    check_call_arguments,
    check_finite_result,
    check_latents,
    check_miva_inputs,
    check_scaled_timesteps,
    preprocess_image,
)
from .latent_init import adain_last, adain_step, build_initial_latents, cil_analytic_noise_std, scale_timesteps
from .mask_stream import MaskBranchInputs, MaskStream
from .output import MIVAPipelineOutput
from .processor_swaps import ProcessorSwapsPipeline, restore_miva_processors
from .prompts import check_interpolation_inputs, encode_call_prompts

__all__ = ["MIVAPipeline", "MIVAPipelineOutput"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler, MotionAdapter
        >>> from diffusers.utils import export_to_video, load_image
        >>> from miva import MIVAPipeline

        >>> adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-3", dtype=torch.float16)
        >>> pipe = MIVAPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", motion_adapter=adapter, dtype=torch.float16
        ... ).to("cuda")
        >>> pipe.scheduler = DDIMScheduler.from_config(
        ...     pipe.scheduler.config, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
        ... )
        >>> pipe.load_adapters(["user/miva-waterfall"], adapter_names=["waterfall"])
        >>> image = load_image("waterfall.png")
        >>> out = pipe(
        ...     image=image, prompt="a waterfall, water flowing", num_frames=16, height=320, width=512,
        ...     guidance_scale=1.0, first_frame_cond_type="cinemo", use_dct_init=True, use_adain_norm="last",
        ...     generator=torch.Generator("cuda").manual_seed(42),
        ... )
        >>> export_to_video(out.frames[0], "waterfall.mp4", fps=8)
        ```
"""


class MIVAPipeline(MIVALoaderMixin, ProcessorSwapsPipeline):
    r"""Image-to-video with MIVA adapters on `UNetMotionModel` (SD1.5 UNet + AnimateDiff `MotionAdapter`).

    Takes the same components as `AnimateDiffPipeline` (a 2-D UNet is converted with the motion adapter) and installs
    the MIVA attention processors on the UNet. Keeps FreeInit, FreeNoise, diffusers LoRA (`load_lora_weights`;
    `set_adapters` / `delete_adapters` / `get_active_adapters` / `get_list_adapters` take both kinds of names), IP-Adapter,
    textual inversion, callbacks, the progress bar, `output_type` and `decode_chunk_size`.

    Two bases: `MIVALoaderMixin` first (every adapter verb, MIVA and diffusers LoRA names routed to their owner;
    saving and loading the pipeline folder's adapters), then `ProcessorSwapsPipeline` (`AnimateDiffPipeline` whose
    methods that replace attention processors put ours, with their adapters, back; after `fuse_qkv_projections` our
    layers keep using unfused projections).

    Copies work: `copy.deepcopy(pipe)` or `from_pipe(pipe, unet=copy.deepcopy(pipe.unet))` carry the UNet's MIVA
    context, processors and adapters; the copy generates what the original does and is independent of it.

    `MIVAPipeline.from_pipe(animatediff_pipe)` shares every component with the original, as diffusers' `from_pipe`
    does, the UNet included: the MIVA processors are installed on that shared UNet, so MIVA adapters loaded into
    the new pipeline also change what the original pipeline generates (with none active, the original's output is
    unchanged). To keep the original untouched, pass a copy: `from_pipe(animatediff_pipe,
    unet=copy.deepcopy(animatediff_pipe.unet))`. `MIVAPipeline.from_pipe(sd_pipe, motion_adapter=adapter)` builds
    a new `UNetMotionModel` from the SD UNet (as `AnimateDiffPipeline` does), so the SD pipeline is never affected.
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(  # the type hints are what `from_pipe` matches components by (evaluated: no future annotations)
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel | UNetMotionModel,
        motion_adapter: MotionAdapter,
        scheduler: SchedulerMixin,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
    ):
        components = (vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor, image_encoder)
        super().__init__(*components)
        if self.unet is not None:  # optional, as in diffusers (e.g. a text-only pipeline for `encode_prompt`)
            install_miva_processors(self.unet)

    # -------------------------------------------------------------------------------------------------- image
    def preprocess_image(self, image, height: int, width: int) -> torch.Tensor:
        """`image` -> `(N, 3, height, width)` in [-1, 1], scaled to cover and center-cropped (`inputs.preprocess_image`)."""
        return preprocess_image(image, height, width)

    def prepare_image_latents(self, pixels: torch.Tensor, generator, device) -> torch.Tensor:
        """`(N, 3, H, W)` in [-1, 1] -> frame-0 latents `(N, C, 1, H/8, W/8)`: a sample of the VAE posterior (drawn from
        `generator`, or `generator[i]` per image for a list) times `vae.config.scaling_factor`."""
        pixels = pixels.to(device=device, dtype=self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator[: len(pixels)] if isinstance(generator, list) else generator)
        return (latents * self.vae.config.scaling_factor).unsqueeze(2)

    # ----------------------------------------------------------------------------------------------- sampling
    def prepare_initial_latents(self, options: SamplingOptions, *, image_latents, noise, first_timestep: int):
        """`z_T` `(B, C, F, h, w)` from the frame-0 latents `(B, C, 1, h, w)` and the noise (`latent_init`); with
        `cil_analytic` the noise is first scaled by CIL's analytic std at `first_timestep`."""
        if options.cil_analytic:
            noise = noise * cil_analytic_noise_std(self.scheduler.alphas_cumprod, first_timestep)
        return build_initial_latents(
            image_latents,
            noise,
            first_frame_cond_type=options.first_frame_cond_type,
            shared_noise_ratio=options.shared_noise_ratio,
            use_dct_init=options.use_dct_init,
            dct_cutoff_ratio=options.dct_cutoff_ratio,
            dct_cutoff_shape=options.dct_cutoff_shape,
            scheduler=self.scheduler,
        )

    def _pin_first_frame(self, latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
        """Frame 0 := the clean image latent, `(B, C, F, h, w)`."""
        return torch.cat([image_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)

    def _denoise(
        self, latents, *, image_latents, timesteps, text, uncond, cond_kwargs, step_kwargs, adain, callback, inputs,
        masks=None,
    ):
        """One pass of the denoising loop over `timesteps` (already CIL-scaled): the UNet sees every frame (frame 0
        clean), the scheduler steps frames 1..F-1, frame 0 is put back; AdaIN "on" and the step-end callback
        (`callback(self, i, t, {name: tensor for name in inputs})`) follow. Returns `(latents, text)`."""
        self._num_timesteps = len(timesteps)
        cfg = self.do_classifier_free_guidance
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                set_denoising_step(self.unet.miva_context.call_state(), i)  # per-step adapter schedules
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = self._pin_first_frame(
                    self.scheduler.scale_model_input(model_input, t), image_latents.repeat(2 if cfg else 1, 1, 1, 1, 1)
                )
                def run(sample, embeds, t=t):
                    return self.unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=cond_kwargs,
                                     cross_attention_kwargs=self.cross_attention_kwargs).sample

                # The mask branch's streams join this forward at their steps (`mask_stream.MaskStream`).
                noise_pred = run(model_input, text) if masks is None else masks.denoise(run, model_input, text, i, t, cfg)
                if cfg:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                stepped = self.scheduler.step(noise_pred[:, :, 1:], t, latents[:, :, 1:], **step_kwargs)
                latents = torch.cat([image_latents.to(latents.dtype), stepped.prev_sample], dim=2)
                if adain == "on":
                    latents = adain_step(latents, i)
                if callback is not None:
                    values = {"latents": latents, "prompt_embeds": text, "negative_prompt_embeds": uncond}
                    outputs = callback(self, i, t, {k: values[k] for k in inputs})
                    latents = self._pin_first_frame(outputs.pop("latents", latents), image_latents)
                    text = outputs.pop("prompt_embeds", text)
                progress_bar.update()
        return latents, text

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        prompt: str | list[str] | None = None,
        num_frames: int = 16,
        height: int = 320,
        width: int = 512,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        decode_chunk_size: int = 16,
        use_adain_norm: str = "off",
        shared_noise_ratio: float = 0.0,
        first_frame_cond_type: str = "lamp",
        use_dct_init: bool = False,
        dct_cutoff_ratio: float = 0.23,
        dct_cutoff_shape: str = "rect",
        cil_ratio: float = 1.0,
        cil_analytic: bool = False,
        batch_prompt: list[str | None] | None = None,
        adapter_weights: list[float] | None = None,
        adapter_masks: dict[str, Any] | None = None,
        adapter_schedules: dict[str, Any] | None = None,
        word_to_replace: str | list[str] | None = None,
        text_emb_dir: str | None = None,
        ca_map_resolutions: str | list[str] | None = None,
        mask_branch: MaskBranchInputs | dict | None = None,
    ) -> MIVAPipelineOutput | tuple:
        r"""Animate `image`.

        Args:
            image: PIL image, numpy `(H, W, 3)` (uint8, or float in [0, 1]), torch `(3, H, W)` float in [0, 1] (a
                tensor with negative values is read as [-1, 1]), a batch of arrays/tensors, or a list. Scaled to
                cover `width` x `height` and center-cropped; VAE-encoded (a posterior sample from `generator`) into
                the frame-0 latent. One image per prompt, or one for all prompts.
            prompt / negative_prompt / prompt_embeds / negative_prompt_embeds / clip_skip: as in
                `AnimateDiffPipeline`; `prompt=None` without embeddings means the empty prompt.
            num_frames, height, width, num_inference_steps, guidance_scale: research defaults 16, 320, 512, 50;
                CFG applies when `guidance_scale > 1`.
            generator: draws the VAE sample first, then the noise.
            latents: initial noise `(B * num_videos_per_prompt, C, F, H/8, W/8)`; frame 0 is replaced.
            use_adain_norm: "off", "on" (LAMP, after every step) or "last" (after the loop).
            shared_noise_ratio: r in `n_f <- r n_0 + (1 - r) n_f` for f >= 1.
            first_frame_cond_type: "lamp" (pure noise on frames 1..F-1) or "cinemo" (the image latent diffused
                to t = 975); `use_dct_init` (cinemo only) keeps the cinemo base's low spatial frequencies
                (`dct_cutoff_ratio`, `dct_cutoff_shape` "rect" / "tri").
            cil_ratio: CIL; the UNet and `scheduler.step` get `round(t * cil_ratio)`, and DDIM still steps by its
                own spacing (`prev_t = t - 1000 // num_inference_steps`), as in the research code. DDIM only.
            cil_analytic: draw the initial noise with CIL's analytic std (Eq. 5) at the first scaled timestep.
            batch_prompt: one prompt per active adapter (None = the adapter's config prompt, else the main
                prompt); each adapter's cross-attention reads its own prompt.
            adapter_weights: weights of the active adapters for this call only.
            adapter_masks / adapter_schedules: where and when each active adapter acts (docs/regions.md): a mask
                `(H, W)` or `(F, H, W)` in [0, 1] (PIL: luminance); a schedule per frame (F values or a callable) or
                `{"frames": ..., "steps": ...}` (steps: one factor per denoising step).
            word_to_replace: word(s) whose learned token (added with `load_textual_inversion`, named `<word>` or
                `word`) replaces the word's first token in the prompts. text_emb_dir: precomputed embeddings.
            ca_map_resolutions: None, "all", or a list of "low" / "middle" / "high": return mean cross-attention
                maps in `output.ca_maps` (see `miva.pipelines.ca_maps`; `save_ca_maps` draws them).
            mask_branch: a `MaskBranchInputs` (or its fields): the frame-0 masks of mask-branch adapters; their
                predicted mask videos come back in `output.masks` (docs/mask_branch.md).
            output_type: "pil", "np", "pt" or "latent". callback_on_step_end: called after every step with the
                tensors named in `callback_on_step_end_tensor_inputs` ("latents", "prompt_embeds",
                "negative_prompt_embeds"); returned "latents" replace the current ones (frame 0 stays pinned).

        Examples:

        Returns:
            `MIVAPipelineOutput`, or `output.to_tuple()` (frames, plus ca_maps when requested) if not return_dict.
        """
        for name in ("unet", "vae", "scheduler"):
            if getattr(self, name, None) is None:
                raise ValueError(
                    f"{name}=None: this MIVAPipeline was built without a {name}; it can encode prompts "
                    f"(encode_prompt) but not animate. Build it with a {name}"
                )
        restore_miva_processors(self.unet)  # undoes processor swaps made on the UNet behind the pipeline's back
        options = SamplingOptions(
            use_adain_norm=use_adain_norm,
            shared_noise_ratio=shared_noise_ratio,
            first_frame_cond_type=first_frame_cond_type,
            use_dct_init=use_dct_init,
            dct_cutoff_ratio=dct_cutoff_ratio,
            dct_cutoff_shape=dct_cutoff_shape,
            cil_ratio=cil_ratio,
            cil_analytic=cil_analytic,
        )
        check_call_arguments(
            height=height, width=width, num_inference_steps=num_inference_steps,
            num_videos_per_prompt=num_videos_per_prompt, guidance_scale=guidance_scale, eta=eta,
            output_type=output_type, prompt=prompt, negative_prompt=negative_prompt, generator=generator,
            clip_skip=clip_skip, cross_attention_kwargs=cross_attention_kwargs,
            text_layers=getattr(getattr(self.text_encoder, "config", None), "num_hidden_layers", None),
        )
        check_miva_inputs(self, options, num_frames=num_frames, height=height, width=width, batch_prompt=batch_prompt,
                          adapter_weights=adapter_weights, decode_chunk_size=decode_chunk_size)
        if prompt is None and prompt_embeds is None:
            prompt = ""
        self.check_inputs(  # diffusers' own checks (positional: its signature)
            prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds, ip_adapter_image,
            ip_adapter_image_embeds, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale, self._clip_skip = guidance_scale, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False
        device = self._execution_device
        pixels = self.preprocess_image(image, height, width)
        interpolate = isinstance(prompt, dict) or any(isinstance(p, dict) for p in batch_prompt or ())
        if interpolate:
            check_interpolation_inputs(self, prompt, prompt_embeds=prompt_embeds, text_emb_dir=text_emb_dir,
                                       negative_prompt_embeds=negative_prompt_embeds, word_to_replace=word_to_replace)
        prompts = None if prompt is None else ([prompt] if isinstance(prompt, (str, dict)) else list(prompt))
        n_prompts = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        if len(pixels) != n_prompts and 1 not in (len(pixels), n_prompts):
            raise ValueError(
                f"image has {len(pixels)} images but there are {n_prompts} prompts; pass one image, "
                "one prompt, or as many of each"
            )
        batch = max(len(pixels), n_prompts)
        if prompts is not None and len(prompts) == 1:
            prompts = prompts * batch
        total = batch * num_videos_per_prompt
        ca_layers = resolve_ca_map_resolutions(self.unet, ca_map_resolutions)

        embeds, text, uncond = encode_call_prompts(
            self,
            prompts,
            batch=batch,
            num_videos_per_prompt=num_videos_per_prompt,
            num_frames=num_frames,
            interpolate=interpolate,
            device=device,
            negative_prompt=negative_prompt,
            batch_prompt=batch_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            word_to_replace=word_to_replace,
            text_emb_dir=text_emb_dir,
            clip_skip=clip_skip,
            cross_attention_kwargs=cross_attention_kwargs,
        )
        added_cond_kwargs = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            added_cond_kwargs = {
                "image_embeds": self.prepare_ip_adapter_image_embeds(
                    ip_adapter_image, ip_adapter_image_embeds, device, total, self.do_classifier_free_guidance
                )
            }

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scale_timesteps(self.scheduler.timesteps, cil_ratio)
        check_scaled_timesteps(timesteps, cil_ratio, getattr(self.scheduler.config, "num_train_timesteps", 1000))
        pixels = pixels.expand(batch, -1, -1, -1) if len(pixels) == 1 else pixels
        image_latents = self.prepare_image_latents(pixels, generator, device)
        image_latents = image_latents.repeat_interleave(num_videos_per_prompt, dim=0).to(text.dtype)
        factor = self.vae_scale_factor
        check_latents(latents, (total, self.unet.config.in_channels, num_frames, height // factor, width // factor))
        noise = self.prepare_latents(
            total, self.unet.config.in_channels, num_frames, height, width, text.dtype, device, generator, latents
        )
        latents = self.prepare_initial_latents(options, image_latents=image_latents, noise=noise,
                                               first_timestep=int(timesteps[0]))
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        store = CAMapStore(ca_layers, text_tokens=embeds.text_tokens) if ca_layers else None
        masks = None if mask_branch is None else MaskStream(
            self, mask_branch, videos=total, num_frames=num_frames, height=height, width=width,
            num_steps=len(timesteps), dtype=text.dtype, device=device, uses_ca_maps=bool(ca_layers))
        # This call's values for the MIVA processors, in one place for its duration (`miva_call`).
        with miva_call(self.unet, adapter_weights=adapter_weights, adapter_prompts=bool(batch_prompt),
                       attention_store=store, num_frames=num_frames, adapter_masks=adapter_masks,
                       adapter_schedules=adapter_schedules, num_steps=num_inference_steps,
                       mask_guidance=None if masks is None else masks.guidance):
            iterations = self._free_init_num_iters if self.free_init_enabled else 1
            for iteration in range(iterations):
                if self.free_init_enabled:
                    latents, timesteps = self._apply_free_init(
                        latents, iteration, num_inference_steps, device, latents.dtype, generator
                    )
                    latents = self._pin_first_frame(latents, image_latents)
                    timesteps = scale_timesteps(timesteps, options.cil_ratio)
                    if store is not None:
                        store.reset()  # keep the maps of the final pass
                latents, text = self._denoise(
                    latents, image_latents=image_latents, timesteps=timesteps, text=text, uncond=uncond,
                    cond_kwargs=added_cond_kwargs, step_kwargs=extra_step_kwargs, adain=options.use_adain_norm,
                    callback=callback_on_step_end, inputs=callback_on_step_end_tensor_inputs, masks=masks,
                )
        if options.use_adain_norm == "last":
            latents = adain_last(latents)
        check_finite_result(latents)

        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(
                self.decode_latents(latents, decode_chunk_size), output_type=output_type
            )
        ca_maps = None
        if store is not None:  # keep the conditional half under CFG
            ca_maps = {level: maps[-total:] for level, maps in store.maps().items()}
        self.maybe_free_model_hooks()
        output = MIVAPipelineOutput(frames=video, ca_maps=ca_maps,
                                    masks=None if masks is None else masks.mask_videos())
        return output if return_dict else output.to_tuple()

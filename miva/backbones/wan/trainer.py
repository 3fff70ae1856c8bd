"""`WanTrainer`: `miva train` on a Wan2.1 base, the shared `MIVATrainer` with the Wan pieces swapped in.

Everything else is the UNet trainer's own code: accelerate (one GPU, DDP, CPU processes), the seeded per-step
generator and data order (exact resume), checkpoints (`adapter_state.safetensors`, optimiser, LR schedule, step),
the training log, validation GIFs and the native adapter folder. What differs:

- components: `load_base` of the run's Wan base (`"tiny-wan"`, a Wan pipeline folder), a `MIVAWanPipeline`;
- the model: `install_miva_wan` + `add_wan_adapter` on `pipe.transformer`;
- what trains (`trainable_modules`, the shared part names): `i2v` = the branch's output `o` (and its own `q` with
  `i2v_train_q`; its `k`, `v` and RMS norms are frozen copies of the base's), `adaptive_weight` = `weight_module`,
  `motion_lora` = the LoRA deltas on the 3-D self-attention, `ca_lora` = those on the cross-attention,
  `implicit` = `CA2`, `CA_norm`, `CA3`;
- the objective: `wan_flow_matching_loss` (flow matching, latent frame 0 clean and out of the loss) with the
  base scheduler's `shift`, on latents from `encode_video_latents` (the posterior's mode: no draw);
- gradient checkpointing: diffusers' own on the transformer blocks (forward and backward run under one
  `miva_call`, as the shared loop does);
- the final folder gets the Wan model card.
"""

from __future__ import annotations

import torch

from ...attention_processors import get_miva_adapter_modules, set_miva_adapters
from ...training.train import MIVATrainer
from .install import add_wan_adapter, install_miva_wan
from .parts import WAN_PART_OF
from .training import encode_video_latents, wan_flow_matching_loss

__all__ = ["WAN_PART_OF", "WanTrainer", "wan_parameter_parts"]


def wan_parameter_parts(transformer, name: str, train_q: bool) -> dict[str, tuple[str | None, torch.nn.Parameter]]:
    """`{parameter name: (part or None, parameter)}` of adapter `name` on a Wan transformer (`WAN_PART_OF`; the
    branch's `q` trains with `i2v` only when `train_q`)."""
    out = {}
    for layer, module in get_miva_adapter_modules(transformer, name).items():
        for key, param in module.named_parameters():
            attribute = key.split(".", 1)[0]
            if (module.part_kind, attribute) not in WAN_PART_OF:
                raise ValueError(f"parameter {key!r} of a Wan {module.part_kind} adapter belongs to no part")
            part = WAN_PART_OF[module.part_kind, attribute]
            out[f"{layer}.adapters.{name}.{key}"] = (None if attribute == "q" and not train_q else part, param)
    return out


class WanTrainer(MIVATrainer):
    """`MIVATrainer` on a Wan2.1 base (`config.is_wan`); `components` may hold `transformer`, `vae`,
    `text_encoder`, `tokenizer`, `scheduler` instead of loading the base. `unet` is the (unwrapped) transformer."""

    def _load_components(self) -> dict:
        from ...base_registry import TINY_WAN_ID
        from ...loaders.base_models import load_base

        config = self.config
        pipe = load_base(TINY_WAN_ID if config.tiny else config.pretrained_model_path, dtype=torch.float32)
        parts = {name: getattr(pipe, name) for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
        return {**parts, "noise_scheduler": pipe.scheduler}  # the flow-matching one: no DDPM noise on Wan

    def _build_model(self, parts: dict):
        transformer = parts["transformer"]
        install_miva_wan(transformer)
        add_wan_adapter(transformer, self.config.adapter_name, self.config.adapter)
        set_miva_adapters(transformer, [self.config.adapter_name])
        self.shift = float(getattr(self.scheduler.config, "shift", 1.0))
        return transformer

    def _select_trainable(self, transformer) -> dict:
        config = self.config
        transformer.requires_grad_(False)
        chosen, found = {}, set()
        for key, (part, param) in wan_parameter_parts(transformer, config.adapter_name,
                                                      config.adapter.i2v_train_q).items():
            if part in config.parts:
                param.requires_grad_(True)
                chosen[key] = param
                found.add(part)
        missing = [p for p in config.parts if p not in found]
        if missing:
            raise ValueError(f"trainable_modules {missing} have no parameters in adapter {config.adapter_name!r} "
                             "on this Wan transformer")
        return chosen

    def _checkpoint_activations(self, transformer) -> None:
        transformer.enable_gradient_checkpointing()

    def step_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Flow-matching loss of one micro-batch: clips `(B, F, 3, H, W)` -> latents `(B, z, 1+(F-1)/4, H/8, W/8)`."""
        video = batch["pixel_values"].permute(0, 2, 1, 3, 4).to(self.vae.device)
        latents = encode_video_latents(self.vae, video).float()
        return wan_flow_matching_loss(self.unet_model, latents, self.prompt_embeds(batch["prompts"]), generator,
                                      shift=self.shift)

    def prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        """`(B, T, text_dim)` T5 states (`WanPipeline.encode_prompt`), cached per prompt; `T` is the length the
        pipeline pads to by default (`default_prompt_length`: the tokenizer's), so training sees what sampling does."""
        from ...pipelines.pipeline_miva_wan import default_prompt_length

        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                embeds = self.validation_pipeline().encode_prompt(
                    missing, do_classifier_free_guidance=False, max_sequence_length=default_prompt_length(
                        self.tokenizer), device=self.accelerator.device)[0]
            self._prompt_cache.update(zip(missing, embeds[:, None]))
        return torch.cat([self._prompt_cache[p] for p in prompts])

    def validation_pipeline(self):
        from ...pipelines.pipeline_miva_wan import MIVAWanPipeline

        return MIVAWanPipeline(transformer=self.unet, vae=self.vae,
                               text_encoder=self.text_encoder, tokenizer=self.tokenizer, scheduler=self.scheduler)

    def save_final(self):
        path = super().save_final()
        if self.accelerator.is_main_process:
            from .card import wan_model_card

            wan_model_card(self.config.adapter, self.config.adapter_name, self.config.hub_model_id).save(
                str(path / "README.md"))
        return path

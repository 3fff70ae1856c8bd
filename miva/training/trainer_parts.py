"""The pieces of the MIVA trainer that do not need accelerate: model loading, which parameters train, the learned
word (textual inversion), per-step randomness and the research objective. `train.py` wires them together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from ..attention_processors import get_miva_adapter_modules
from ..attention_processors.parts import part_of
from ..loaders.base_models import load_base
from .train_config import TrainConfig

__all__ = [
    "LearnedToken",
    "SeededShuffleSampler",
    "adapter_parameter_parts",
    "checkpoint_motion_modules",
    "encode_frames",
    "i2v_epsilon_loss",
    "load_components",
    "select_trainable",
    "step_generator",
    "to_unet_motion",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- components
def to_unet_motion(unet: nn.Module, motion_adapter: nn.Module | None) -> nn.Module:
    """A `UNetMotionModel` as is, or a 2-D SD UNet combined with `motion_adapter` (like `AnimateDiffPipeline`)."""
    from diffusers import UNet2DConditionModel, UNetMotionModel

    if isinstance(unet, UNetMotionModel):
        return unet
    if isinstance(unet, UNet2DConditionModel):
        if motion_adapter is None:
            raise ValueError("components['unet'] is a 2-D UNet2DConditionModel: a motion_adapter is required")
        return UNetMotionModel.from_unet2d(unet, motion_adapter)
    raise TypeError(f"components['unet'] must be a UNetMotionModel or UNet2DConditionModel, got {type(unet).__name__}")


def load_components(config: TrainConfig) -> dict:
    """Frozen base components: `dict(unet, vae, text_encoder, tokenizer, noise_scheduler, scheduler)`.

    `unet` is a `UNetMotionModel`; `noise_scheduler` a `DDPMScheduler` (training noise, with
    `config.noise_scheduler_kwargs` applied) and `scheduler` the `DDIMScheduler` of the validation pipeline.
    All come from `load_base`: `config.tiny` is the offline `"tiny"` base; otherwise `pretrained_model_path` is a known
    base (`"miva-world"`), an SD1.5 diffusers folder or a Hub id and `motion_module_path` a MotionAdapter folder,
    Hub id, AnimateDiff single file or known subfolder (`"miva-world/motion_adapter"`).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    from ..base_registry import TINY_ID

    if config.tiny:
        pipe = load_base(TINY_ID, image_encoder=None, feature_extractor=None)
    else:  # a known name ("miva-world"), a folder or a Hub id
        pipe = load_base(config.pretrained_model_path, config.motion_module_path, dtype=torch.float32)
    unet = to_unet_motion(pipe.unet, None)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    base_scheduler_config = pipe.scheduler.config
    noise_scheduler = DDPMScheduler.from_config(base_scheduler_config, **config.noise_scheduler_kwargs)
    scheduler = DDIMScheduler.from_config(noise_scheduler.config, clip_sample=False)
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        scheduler=scheduler,
    )


# ------------------------------------------------------------------------------------------------ what trains
def adapter_parameter_parts(unet: nn.Module, adapter_name: str) -> dict[str, tuple[str, nn.Parameter]]:
    """`{unet parameter name: (part, parameter)}` for every parameter of adapter `adapter_name`.

    Names are the UNet's own (`<layer>.processor.adapters.<name>.<part>`), parts those of `TRAINABLE_PARTS`, as
    declared in `attention_processors.parts` (the module's `part_kind` and the parameter's attribute).
    """
    out = {}
    for layer, module in get_miva_adapter_modules(unet, adapter_name).items():
        prefix = f"{layer}.adapters.{adapter_name}."
        for name, param in module.named_parameters():
            out[prefix + name] = (part_of(module.part_kind, name), param)
    return out


def select_trainable(unet: nn.Module, adapter_name: str, parts: Iterable[str]) -> dict[str, nn.Parameter]:
    """Freeze all of `unet`, then let exactly the parameters of adapter `adapter_name`'s `parts` train.

    Returns `{unet parameter name: parameter}` of what trains. A requested part with no parameter in this UNet is an
    error (it would silently train nothing).
    """
    parts = list(parts)
    unet.requires_grad_(False)
    chosen, found = {}, set()
    for name, (part, param) in adapter_parameter_parts(unet, adapter_name).items():
        if part in parts:
            param.requires_grad_(True)
            chosen[name] = param
            found.add(part)
    missing = [p for p in parts if p not in found]
    if missing:
        raise ValueError(f"trainable_modules {missing} have no parameters in adapter {adapter_name!r} on this UNet")
    return chosen


def checkpoint_motion_modules(unet: nn.Module) -> int:
    """Gradient checkpointing for the motion modules, which `enable_gradient_checkpointing()` leaves out in diffusers
    0.42 (it covers resnets and spatial transformer blocks only).

    Each `AnimateDiffTransformer3D` forward is wrapped in non-reentrant `torch.utils.checkpoint` while gradients are
    enabled (inference is unaffected). At 16x320x512 the motion modules' activations are most of what the UNet keeps
    for backward. Idempotent; returns the number of modules wrapped by this call.
    """
    import functools

    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
    from torch.utils.checkpoint import checkpoint

    def wrap(forward):
        @functools.wraps(forward)
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        return run

    count = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D) and not getattr(module, "_miva_checkpointed", False):
            module.forward = wrap(module.forward)
            module._miva_checkpointed = True
            count += 1
    return count


# ------------------------------------------------------------------------------------------- textual inversion
class LearnedToken:
    """A new word (`word_to_learn`) in the tokenizer whose input-embedding row is learned (textual inversion).

    The row starts as a copy of `initializer_token`'s. Only the input-embedding matrix of `text_encoder` requires
    grad (the encoder, final norm and position embeddings stay frozen); after every optimiser step,
    `restore_frozen_rows()` puts every other row back from a saved copy, so only the new token's row changes.
    """

    def __init__(self, tokenizer, text_encoder, word: str, initializer_token: str):
        ids = tokenizer.encode(initializer_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"initializer_token={initializer_token!r} is {len(ids)} tokens for this tokenizer; it "
                "must be exactly one token (pick a common single word)"
            )
        if tokenizer.add_tokens([word]) != 1:
            raise ValueError(f"word_to_learn={word!r} is already in the tokenizer; pick a new word (e.g. '<{word}>')")
        self.word = word
        self.token_id = tokenizer.convert_tokens_to_ids(word)
        text_encoder.resize_token_embeddings(len(tokenizer))
        embeddings = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[self.token_id] = embeddings[ids[0]]
        text_encoder.requires_grad_(False)
        embeddings.requires_grad_(True)
        self.text_encoder = text_encoder
        self.original = embeddings.detach().clone()
        self.keep = torch.ones(len(tokenizer), dtype=torch.bool)
        self.keep[self.token_id] = False

    @property
    def weight(self) -> nn.Parameter:
        return self.text_encoder.get_input_embeddings().weight

    def restore_frozen_rows(self) -> None:
        weight = self.weight
        if self.original.device != weight.device or self.original.dtype != weight.dtype:  # once, after `.to()`
            self.original = self.original.to(device=weight.device, dtype=weight.dtype)
            self.keep = self.keep.to(weight.device)
        with torch.no_grad():
            weight[self.keep] = self.original[self.keep]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`{word: (hidden,) float32}`, the research `learned_embeds.safetensors` layout."""
        return {self.word: self.weight[self.token_id].detach().float().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.word not in state:
            raise ValueError(f"learned embeddings hold {sorted(state)}, not word_to_learn={self.word!r}")
        row = state[self.word]
        if row.shape != self.weight[self.token_id].shape:
            raise ValueError(
                f"learned embedding of {self.word!r} has shape {tuple(row.shape)}, expected "
                f"{tuple(self.weight[self.token_id].shape)}"
            )
        with torch.no_grad():
            self.weight[self.token_id] = row.to(device=self.weight.device, dtype=self.weight.dtype)


def check_prompts_contain(tokenizer, prompts: Iterable[str], word: str) -> None:
    """Every training prompt must contain the learned word, or its embedding never gets a gradient from it."""
    missing = sorted({p for p in prompts if word not in p.split()})
    if missing:
        raise ValueError(
            f"word_to_learn={word!r} does not appear (as a separate word) in the prompt(s) {missing}; "
            "put it in `prompt` or in the clips' .txt sidecars"
        )


# ---------------------------------------------------------------------------------------------- data order
class SeededShuffleSampler(Sampler[int]):
    """A fresh permutation of `range(length)` per epoch, a pure function of `(seed, epoch)` (call `set_epoch`)."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        state = np.random.SeedSequence([self.seed % 2**64, 0x5348, self.epoch]).generate_state(1, np.uint64)[0]
        order = torch.Generator().manual_seed(int(state % 2**63))
        return iter(torch.randperm(self.length, generator=order).tolist())

    def __len__(self) -> int:
        return self.length


# ------------------------------------------------------------------------------------------------- objective
def step_generator(seed: int, counter: int, process_index: int, device: torch.device | str) -> torch.Generator:
    """The generator of one micro-batch: a pure function of `(seed, counter, process_index)`.

    Every random draw of a training step (VAE posterior sample, timestep, noise) comes from it, so a resumed run
    draws exactly what an uninterrupted one would, whatever else touched the global RNG meanwhile.
    """
    state = np.random.SeedSequence([int(seed) % 2**64, 0x4D495641, int(counter), int(process_index)])
    generator = torch.Generator(device=torch.device(device))
    return generator.manual_seed(int(state.generate_state(1, np.uint64)[0] % 2**63))


def encode_frames(vae: nn.Module, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`(B, F, 3, H, W)` in [-1, 1] -> latents `(B, C, F, H/8, W/8)` float32: `latent_dist.sample() * scaling`."""
    batch, frames = pixel_values.shape[:2]
    with torch.no_grad():
        x = pixel_values.reshape(batch * frames, *pixel_values.shape[2:]).to(vae.device, vae.dtype)
        latents = vae.encode(x).latent_dist.sample(generator) * vae.config.scaling_factor
    return latents.reshape(batch, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()


def i2v_epsilon_loss(
    unet: nn.Module,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    noise_scheduler,
    generator: torch.Generator,
    timestep_range: tuple[int, int] | list[int] | None = None,
) -> torch.Tensor:
    """The research objective (docs/research.md#training): epsilon-MSE on frames 1..F-1 with frame 0 kept clean.

    Args:
        unet: a `UNetMotionModel` (possibly wrapped by accelerate / DDP).
        latents: clean latents `(B, C, F, h, w)`.
        prompt_embeds: `(B, tokens, D)`; repeated per frame for the UNet (`(B*F, tokens, D)`).
        noise_scheduler: gives `add_noise` and `config.num_train_timesteps`.
        generator: the step's generator (`step_generator`); draws `t ~ U{min..max-1}` then `eps ~ N(0, I)`.
        timestep_range: `[min, max)` of t; default `[0, num_train_timesteps)`.

    Returns:
        A float32 scalar: `MSE(eps_hat[:, :, 1:], eps[:, :, 1:])`.
    """
    batch, _, frames = latents.shape[:3]
    low, high = timestep_range or (0, noise_scheduler.config.num_train_timesteps)
    device = generator.device
    timesteps = torch.randint(low, high, (batch,), generator=generator, device=device).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    noisy[:, :, 0] = latents[:, :, 0]  # the given image: frame 0 is the clean latent
    encoder_hidden_states = prompt_embeds.repeat_interleave(frames, dim=0)
    prediction = unet(noisy, timesteps, encoder_hidden_states=encoder_hidden_states).sample
    return F.mse_loss(prediction[:, :, 1:].float(), noise[:, :, 1:].float(), reduction="mean")


def encode_prompts(tokenizer, text_encoder: nn.Module, prompts: list[str], device) -> torch.Tensor:
    """`(len(prompts), model_max_length, D)`: CLIP last hidden states of the padded prompts."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    return text_encoder(ids)[0]

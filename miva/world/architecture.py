"""The MotionWorld base model's architecture: stock diffusers / transformers classes, small sizes.

64x64 RGB frames; an ``AutoencoderKL`` with three levels (``vae_scale_factor`` 4) gives 16x16x4 latents; a
three-level ``UNet2DConditionModel`` (32/64/128 channels, one layer per block) plus a matching ``MotionAdapter``
form the ``UNetMotionModel``; a two-layer CLIP text encoder (width 64) reads prompts tokenised by an in-memory
CLIP tokenizer whose vocabulary has every word of MotionWorld's prompts. About 6M parameters in all.
"""

from __future__ import annotations

import torch

from ..tiny import TINY_WORDS, research_ddim_scheduler, tiny_tokenizer
from .scenes import WORLD_WORDS

__all__ = ["FRAME_SIZE", "MAX_FRAMES", "build_components", "world_tokenizer"]

FRAME_SIZE = 64  # pixels; latents are 16x16
MAX_FRAMES = 24  # the motion adapter's motion_max_seq_length
_CHANNELS = (32, 64, 128)
_TEXT_DIM = 64


def world_tokenizer():
    """The in-memory CLIP tokenizer: MotionWorld's words and miva's tiny vocabulary are single tokens."""
    return tiny_tokenizer(list(WORLD_WORDS) + list(TINY_WORDS))


def _unet2d():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=FRAME_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * len(_CHANNELS),
        up_block_types=("CrossAttnUpBlock2D",) * len(_CHANNELS),
        cross_attention_dim=_TEXT_DIM,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def _motion_adapter():
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=_CHANNELS,
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=4,
        motion_max_seq_length=MAX_FRAMES,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=FRAME_SIZE,
    )


def _text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_DIM,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=_TEXT_DIM,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_components(seed: int = 0) -> dict:
    """Freshly initialised components (seeded; the global RNG is restored):
    ``dict(unet, motion_adapter, vae, text_encoder, tokenizer, scheduler)``; ``unet`` is 2-D."""
    tokenizer = world_tokenizer()
    modules = {}
    with torch.random.fork_rng(devices=[]):
        for name, build in {
            "unet": _unet2d,
            "motion_adapter": _motion_adapter,
            "vae": _vae,
            "text_encoder": lambda: _text_encoder(tokenizer),
        }.items():
            torch.manual_seed(seed)
            modules[name] = build()
    return {**modules, "tokenizer": tokenizer, "scheduler": research_ddim_scheduler()}

"""The MotionWorld Wan base's architecture: diffusers' own Wan2.1 classes at small sizes.

64x64 RGB frames; an ``AutoencoderKLWan`` with two spatial downsamplings and no temporal one (``scale_factor_spatial``
4, ``scale_factor_temporal`` 1) gives one 16x16x8 latent frame per video frame, like the UNet world, so frame 0 of
the video is latent frame 0 exactly; a six-block ``WanTransformer3DModel`` (width 192, patch 1x2x2: 64 tokens per
frame) reads prompts from a two-layer ``UMT5EncoderModel`` (width 64) with an in-memory T5 tokenizer whose vocabulary
has every word of MotionWorld's prompts; a ``FlowMatchEulerDiscreteScheduler`` (shift 3: small latents need less
shift than Wan's 480p). About 6M parameters in all.

Clips are encoded in ``1 + 4k`` frames (the Wan VAE encodes frame 0, then chunks of four), so the world's Wan clips
have 9 or 17 frames.

The shipped world VAE is *frame-wise* (:func:`make_vae_framewise`): its causal convolutions see the current frame
only, so each frame is encoded and decoded exactly as the VAE treats frame 0. A clip-mixing VAE smears motion: true
clips through it read their motion at 19.3 deg direction error, frame-wise at 0.5 deg (docs/motionworld.md).
"""

from __future__ import annotations

import torch

from ..tiny import TINY_WORDS
from .scenes import WORLD_WORDS

__all__ = ["FRAME_SIZE", "FRAMES", "MAX_SEQUENCE_LENGTH", "build_wan_components", "is_vae_framewise",
           "make_vae_framewise", "wan_world_tokenizer"]

FRAME_SIZE = 64
FRAMES = 9  # 1 + 4k: what the Wan VAE encodes without dropping frames
MAX_SEQUENCE_LENGTH = 32  # T5 tokens per prompt (MotionWorld prompts have at most ~12 words)
Z_DIM = 8
TEXT_DIM = 64
FLOW_SHIFT = 3.0


def wan_world_tokenizer():
    """The in-memory T5 tokenizer: MotionWorld's words and miva's tiny vocabulary are single pieces. Its
    `model_max_length` is :data:`MAX_SEQUENCE_LENGTH`, so the pipeline and the trainer pad prompts to the length the
    base was pretrained with (`pipeline_miva_wan.default_prompt_length`)."""
    from ..backbones.wan.tiny import tiny_t5_tokenizer

    return tiny_t5_tokenizer(list(WORLD_WORDS) + list(TINY_WORDS), model_max_length=MAX_SEQUENCE_LENGTH)


def _transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=6, attention_head_dim=32, in_channels=Z_DIM, out_channels=Z_DIM,
        text_dim=TEXT_DIM, freq_dim=64, ffn_dim=768, num_layers=6, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=16, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, False],
        latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM, scale_factor_temporal=1, scale_factor_spatial=4,
    )


def _text_encoder(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return UMT5EncoderModel(config)


def build_wan_components(seed: int = 0) -> dict:
    """Freshly initialised components (seeded; the global RNG is restored):
    ``dict(transformer, vae, text_encoder, tokenizer, scheduler)``, ready for ``MIVAWanPipeline(**components)``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = wan_world_tokenizer()
    modules = {}
    with torch.random.fork_rng(devices=[]):
        for name, build in {"transformer": _transformer, "vae": _vae,
                            "text_encoder": lambda: _text_encoder(tokenizer)}.items():
            torch.manual_seed(seed)
            modules[name] = build()
    return {**modules, "tokenizer": tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)}


def _temporal_convs(vae) -> list:
    """The causal 3-D convolutions of an ``AutoencoderKLWan`` that reach back in time (temporal kernel > 1)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return [m for m in vae.modules() if isinstance(m, WanCausalConv3d) and m.kernel_size[0] > 1]


@torch.no_grad()
def make_vae_framewise(vae) -> int:
    """Zero the past taps of every causal 3-D convolution of ``vae`` (in place); return how many convolutions changed.

    The Wan VAE pads a clip's past with zeros, so frame 0 never uses those taps: afterwards every frame is encoded and
    decoded the way frame 0 was before (frame 0's latents do not change), and a clip's latents are its frames'
    latents, ``(batch, z, frames, h, w)`` either way. The taps stay zero under AdamW without weight decay (zero grads
    give zero updates) but the recipe applies this after the VAE's training."""
    convs = _temporal_convs(vae)
    for conv in convs:
        conv.weight[:, :, :-1] = 0  # the kernel's last temporal index is the current frame (causal padding in front)
    return len(convs)


def is_vae_framewise(vae) -> bool:
    """Whether no causal convolution of ``vae`` reads an earlier frame (see :func:`make_vae_framewise`)."""
    return all(not conv.weight[:, :, :-1].any() for conv in _temporal_convs(vae))

"""Tiny, offline, seeded Wan2.1 components for tests and demos (diffusers' own test sizes).

Everything is built in memory: a `WanTransformer3DModel` (2 blocks, 2 heads of 12 channels, width 24), an
`AutoencoderKLWan` (16 latent channels, 4x temporal and 8x spatial compression), a small `UMT5EncoderModel` with an
in-memory T5 tokenizer (Unigram, one piece per word of `miva.tiny.TINY_WORDS`, then letters) and a
`FlowMatchEulerDiscreteScheduler`.

```python
from diffusers import WanPipeline
from miva.backbones.wan.tiny import tiny_wan_components

pipe = WanPipeline(**tiny_wan_components(seed=0))
video = pipe("waves", num_frames=9, height=16, width=16, num_inference_steps=2, max_sequence_length=16).frames
```
"""

from __future__ import annotations

import string

import torch

from ...tiny import TINY_WORDS

__all__ = ["TINY_TEXT_DIM", "tiny_t5_tokenizer", "tiny_wan_components", "tiny_wan_transformer"]

TINY_TEXT_DIM = 32  # width of the tiny text encoder's output (the transformer's `text_dim`)
_SPACE = "\u2581"  # SentencePiece's word-start marker


def tiny_t5_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS, model_max_length: int = 512):
    """A small in-memory `T5Tokenizer` (Unigram): `<pad>`=0, `</s>`=1, `<unk>`=2, `▁`, one piece `▁word` per word
    of `words`, then every lowercase letter and digit alone and after `▁` (so other words split into letters).
    `model_max_length`: the prompt length the pipeline and trainer pad to by default."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_SPACE, -2.0)]
    pieces += [(_SPACE + word.lower(), -1.0) for word in dict.fromkeys(words)]
    for char in string.ascii_lowercase + string.digits:
        pieces += [(_SPACE + char, -5.0), (char, -6.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def tiny_wan_transformer(**overrides):
    """diffusers' test-size `WanTransformer3DModel` (`overrides` replace config values), unseeded."""
    from diffusers import WanTransformer3DModel

    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                  out_channels=16, text_dim=TINY_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    config.update(overrides)
    return WanTransformer3DModel(**config)


def _tiny_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _tiny_text_encoder(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return UMT5EncoderModel(config)


def tiny_wan_components(seed: int = 0, **transformer_overrides) -> dict:
    """`dict(transformer, vae, text_encoder, tokenizer, scheduler)` for `WanPipeline(**components)` (and
    `MIVAWanPipeline`). Each module's weights are drawn after `torch.manual_seed(seed)` (the global RNG state is
    restored afterwards), so a seed gives identical state dicts; modules are in eval mode. Pass
    `max_sequence_length` of at most 512 tokens to the pipeline (16 keeps tests fast)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = tiny_t5_tokenizer()
    builders = {
        "transformer": lambda: tiny_wan_transformer(**transformer_overrides),
        "vae": _tiny_vae,
        "text_encoder": lambda: _tiny_text_encoder(tokenizer),
    }
    modules = {}
    with torch.random.fork_rng(devices=[]):
        for name, build in builders.items():
            torch.manual_seed(seed)
            modules[name] = build().eval()
    return {**modules, "tokenizer": tokenizer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0)}

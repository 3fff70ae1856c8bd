"""One Wan attention layer (`WanAttention`) described as a composer `Site` (`attention_processors/composition.py`).

The steps are those of diffusers' `WanAttnProcessor` (0.42), around the projections the composer computes with the
adapters' deltas: RMS norms on Q and K, then the split into heads, then the rotary embedding on Q and K (self-
attention); attention through diffusers' dispatcher (the backend set by `attn.set_attention_backend`, the context-
parallel config for self-attention); heads merged back; for I2V checkpoints (`attn.add_k_proj`) the image tokens'
attention, read by the same queries and never adapted, added before `to_out`. The processors call the stock
processor itself when no adapter adds anything, so that case stays diffusers' code bit for bit.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_added_kv_projections

from ...attention_processors.composition import Site

__all__ = ["TEXT_TOKENS", "rotate", "wan_site"]

TEXT_TOKENS = 512  # diffusers' Wan: the text encoder's length; an I2V context holds the image tokens before it


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on `x` (batch, tokens, heads, head_dim): each channel pair (2j, 2j+1) turned by the
    angle whose cosine/sine `cos`/`sin` (broadcastable, each value stored twice along head_dim) hold."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out.type_as(x)


def wan_site(stock, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, rotary_emb: tuple | None = None,
             query: torch.Tensor | None = None) -> Site:
    """The `Site` of `attn` for one call with the stock processor's arguments. `stock`: the layer's
    `WanAttnProcessor` (its `_attention_backend` and `_parallel_config`); `hidden_states`: (batch, tokens, dim);
    `encoder_hidden_states`: (batch, text_tokens, dim) or None (self-attention); `query`: `to_q(hidden_states)` if
    the caller has it."""
    image = None
    if attn.add_k_proj is not None:  # I2V: the image tokens come first
        n_image = encoder_hidden_states.shape[1] - TEXT_TOKENS
        image, encoder_hidden_states = encoder_hidden_states[:, :n_image], encoder_hidden_states[:, n_image:]
    parallel = stock._parallel_config if encoder_hidden_states is None else None
    heads = attn.heads

    def finish_query(q: torch.Tensor) -> torch.Tensor:
        q = attn.norm_q(q).unflatten(2, (heads, -1))
        return q if rotary_emb is None else rotate(q, *rotary_emb)

    def finish_kv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = attn.norm_k(k).unflatten(2, (heads, -1))
        return (k if rotary_emb is None else rotate(k, *rotary_emb)), v.unflatten(2, (heads, -1))

    image_kv = []  # the image keys/values, projected once per call

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
        """(batch, q_tokens, heads, head_dim) x (batch, kv_tokens, heads, head_dim) -> (batch, q_tokens, inner)."""
        out = dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                    backend=stock._attention_backend, parallel_config=parallel)
        out = out.flatten(2, 3).type_as(q)
        if image is None:
            return out
        if not image_kv:
            k_img, v_img = _get_added_kv_projections(attn, image)
            image_kv.extend((attn.norm_added_k(k_img).unflatten(2, (heads, -1)), v_img.unflatten(2, (heads, -1))))
        k_img, v_img = (t.repeat(q.shape[0] // t.shape[0], 1, 1, 1) for t in image_kv)  # batched branches
        out_img = dispatch_attention_fn(q, k_img, v_img, attn_mask=None, dropout_p=0.0, is_causal=False,
                                        backend=stock._attention_backend, parallel_config=None)
        return out + out_img.flatten(2, 3).type_as(q)

    return Site(attn, hidden_states, attend, query=query, context=encoder_hidden_states, mask=attention_mask,
                finish_query=finish_query, finish_kv=finish_kv)

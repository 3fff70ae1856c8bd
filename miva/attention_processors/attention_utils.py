"""Small tensor helpers shared by the three processors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head SDPA on token tensors.

    `query` (batch, q_tokens, channels), `key`/`value` (batch, kv_tokens, channels) -> (batch, q_tokens, channels).
    `attention_mask`, when given, is already in SDPA layout `(batch, heads, q_tokens or 1, kv_tokens)`.
    """
    batch, _, channels = query.shape
    head_dim = channels // heads
    q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
    k = key.view(key.shape[0], -1, heads, head_dim).transpose(1, 2)
    v = value.view(value.shape[0], -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


def attention_probs(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax maps averaged over heads: (batch, q_tokens, channels) x (batch, kv_tokens, channels) ->
    (batch, q_tokens, kv_tokens), in float32 (for CA-map visualisation, not the hot path)."""
    batch, _, channels = query.shape
    head_dim = channels // heads
    q = query.float().view(batch, -1, heads, head_dim).transpose(1, 2)
    k = key.float().view(key.shape[0], -1, heads, head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5
    return scores.softmax(dim=-1).mean(dim=1)


def project_out(attn, hidden_states: torch.Tensor) -> torch.Tensor:
    """`attn.to_out` (Linear + dropout), as the stock processors apply it."""
    return attn.to_out[1](attn.to_out[0](hidden_states))


def finish_output(attn, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The tail of every stock processor: optional residual connection and output rescaling."""
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def prepare_mask(attn, attention_mask: torch.Tensor | None, kv_tokens: int, batch: int) -> torch.Tensor | None:
    """Stock mask preparation: -> (batch, heads, q_tokens or 1, kv_tokens) or None."""
    if attention_mask is None:
        return None
    attention_mask = attn.prepare_attention_mask(attention_mask, kv_tokens, batch)
    return attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])


def check_supported_attention(attn, layer_name: str) -> None:
    """Our processors cover the SD1.5/AnimateDiff attention layers; refuse exotic ones clearly."""
    if getattr(attn, "spatial_norm", None) is not None or getattr(attn, "group_norm", None) is not None:
        raise ValueError(f"{layer_name}: attention with spatial_norm/group_norm is not supported by MIVA processors")
    if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
        raise ValueError(f"{layer_name}: attention with norm_q/norm_k (QK-norm) is not supported by MIVA processors")

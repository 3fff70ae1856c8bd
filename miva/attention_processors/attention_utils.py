"""Small tensor helpers shared by the three processors, and the attention backends they can run on."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

ATTENTION_BACKENDS = ("sdpa", "xformers")
# CUDA grids allow at most 65535 blocks along the batch axis of xformers' kernels; larger batches fail with
# "invalid configuration argument", so they are split into chunks of at most this many rows.
XFORMERS_MAX_BATCH = 65535


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, *,
           attention_mask: torch.Tensor | None = None, backend: str = "sdpa",
           attention_op: Callable | None = None) -> torch.Tensor:
    """Multi-head attention on token tensors.

    `query` (batch, q_tokens, channels), `key`/`value` (batch, kv_tokens, channels) -> (batch, q_tokens, channels).
    `attention_mask`, when given, is already in SDPA layout `(batch, heads, q_tokens or 1, kv_tokens)`.
    `backend="xformers"` runs `xformers.ops.memory_efficient_attention` (with `attention_op`) on CUDA tensors
    without a mask; everything else (CPU tensors, masks) runs PyTorch SDPA, which computes the same function.
    """
    if backend == "xformers" and query.is_cuda and attention_mask is None:
        return xformers_attention(query, key, value, heads, attention_op=attention_op)
    batch, _, channels = query.shape
    head_dim = channels // heads
    q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
    k = key.view(key.shape[0], -1, heads, head_dim).transpose(1, 2)
    v = value.view(value.shape[0], -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


def xformers_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, *,
                       attention_op: Callable | None = None, attention_fn: Callable | None = None,
                       max_batch: int = XFORMERS_MAX_BATCH) -> torch.Tensor:
    """`attend` through xformers: (batch, tokens, channels) tensors in its (batch, tokens, heads, head_dim) layout,
    batches above `max_batch` rows split into chunks. `attention_fn(q, k, v)` defaults to
    `xformers.ops.memory_efficient_attention(q, k, v, op=attention_op)`."""
    if attention_fn is None:
        import xformers.ops

        def attention_fn(q, k, v):
            return xformers.ops.memory_efficient_attention(q, k, v, op=attention_op)

    batch, q_tokens, channels = query.shape
    q = query.view(batch, q_tokens, heads, channels // heads)
    k = key.view(key.shape[0], key.shape[1], heads, key.shape[2] // heads)
    v = value.view(value.shape[0], value.shape[1], heads, value.shape[2] // heads)
    out = batch_chunked(attention_fn, q, k, v, max_batch=max_batch)
    return out.reshape(batch, q_tokens, -1).to(query.dtype)


def batch_chunked(fn: Callable, *tensors: torch.Tensor, max_batch: int) -> torch.Tensor:
    """`fn(*tensors)`, called on consecutive batch slices of at most `max_batch` rows and concatenated (dim 0).

    Every tensor has the same batch size (dim 0); one call when it is at most `max_batch`.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be a positive number of rows")
    batch = tensors[0].shape[0]
    if any(t.shape[0] != batch for t in tensors):
        raise ValueError(f"batch_chunked needs one batch size, got {[tuple(t.shape) for t in tensors]}")
    if batch <= max_batch:
        return fn(*tensors)
    return torch.cat([fn(*(t[start:start + max_batch] for t in tensors)) for start in range(0, batch, max_batch)])


def check_attention_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend={backend!r} is not one of {list(ATTENTION_BACKENDS)}")
    return backend


def check_xformers_usable(device: torch.device | str) -> None:
    """Raise a clear error unless xformers can run on `device` (a CUDA device, with xformers installed)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"xformers needs a CUDA device; this pipeline is on {device.type}. Move it with "
                         "pipe.to('cuda') first, or keep the default attention (PyTorch SDPA, already memory "
                         "efficient)")
    if importlib.util.find_spec("xformers") is None:
        raise ModuleNotFoundError(f"xformers is not installed: pip install xformers (a build matching torch "
                                  f"{torch.__version__})", name="xformers")


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

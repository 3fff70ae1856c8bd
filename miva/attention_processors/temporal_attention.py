"""`MIVATemporalAttnProcessor`: MotionLoRA and motion embedding on the motion modules' temporal attention."""

from __future__ import annotations

import torch
from torch import nn

from .adapter_config import MIVAAdapterConfig
from .attention_utils import attend, finish_output, prepare_mask
from .base import MIVAProcessorBase, mix_residual, needs_base
from .lora import LoRADelta


class TemporalAdapter(nn.Module):
    """One adapter's part at one temporal attention: LoRA deltas on Q/K/V/O and an optional motion embedding.

    The output delta uses standard placement (it reads the attention output, the input of W_O). The motion embedding
    is an `(max_frames, channels)` table added to the input before Q/K/V (Motion-Inversion); we start it at zero so a
    new adapter is a no-op (the research code draws N(0, 1)).
    """

    def __init__(self, attn, config: MIVAAdapterConfig, max_frames: int):
        super().__init__()
        rank, alpha = config.motion_lora_rank, config.motion_lora_scale
        self.has_lora = config.use_motion_lora
        if self.has_lora:
            self.to_q_lora = LoRADelta(attn.to_q.in_features, attn.to_q.out_features, rank, alpha)
            self.to_k_lora = LoRADelta(attn.to_k.in_features, attn.to_k.out_features, rank, alpha)
            self.to_v_lora = LoRADelta(attn.to_v.in_features, attn.to_v.out_features, rank, alpha)
            self.to_out_lora = LoRADelta(attn.to_out[0].in_features, attn.to_out[0].out_features, rank, alpha)
        self.motion_embed = nn.Parameter(torch.zeros(max_frames, attn.to_q.in_features)) if config.use_motion_embed else None

    def embed(self, hidden_states: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """(batch*pixels, frames, channels) plus the first `frames` rows of the table."""
        if self.motion_embed is None:
            return hidden_states
        if hidden_states.shape[1] > self.motion_embed.shape[0]:
            raise ValueError(f"num_frames={hidden_states.shape[1]} exceeds the motion embedding's "
                             f"{self.motion_embed.shape[0]} frames (the motion module's motion_max_seq_length)")
        table = self.motion_embed[: hidden_states.shape[1]].to(hidden_states.dtype)
        return hidden_states + (table if weight == 1.0 else table * weight)


class MIVATemporalAttnProcessor(MIVAProcessorBase):
    """Replaces the default processor on motion-module `attn1` and `attn2` (both temporal self-attention).

    Input `(batch*pixels, frames, channels)`. With no active adapter it computes exactly what diffusers'
    `AttnProcessor2_0` computes. Several adapters: `"residual"` runs one branch per adapter (batched into a single
    SDPA call) and returns `y_base + sum_i w_i (y_i - y_base)`; `"weights"` adds the w_i-scaled deltas into one
    attention.
    """

    def build_adapter(self, attn, name, config):
        if not (config.use_motion_lora or config.use_motion_embed):
            return None
        return TemporalAdapter(attn, config, self.context.max_frames)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames=None, adapter_weights=None):
        residual = hidden_states
        active = self.context.active_adapters(self.adapters, adapter_weights)
        batch = hidden_states.shape[0]
        kv_source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = prepare_mask(attn, attention_mask, kv_source.shape[1], batch)
        if not active:
            out = attend(attn.to_q(hidden_states), attn.to_k(kv_source), attn.to_v(kv_source), attn.heads, mask)
            out = attn.to_out[1](attn.to_out[0](out))
        elif self.context.parallel_mode == "weights":
            out = self._weights(attn, hidden_states, encoder_hidden_states, mask, active)
        else:
            out = self._residual(attn, hidden_states, encoder_hidden_states, mask, active)
        return finish_output(attn, out, residual)

    def _weights(self, attn, x, encoder_hidden_states, mask, active):
        for _, name, weight in active:
            x = self.adapters[name].embed(x, weight)
        kv_source = x if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(x), attn.to_k(kv_source), attn.to_v(kv_source)
        loras = [(self.adapters[name], w) for _, name, w in active if self.adapters[name].has_lora]
        for adapter, w in loras:
            q = q + w * adapter.to_q_lora(x)
            k = k + w * adapter.to_k_lora(kv_source)
            v = v + w * adapter.to_v_lora(kv_source)
        a = attend(q, k, v, attn.heads, mask)
        out = attn.to_out[0](a)
        for adapter, w in loras:
            out = out + w * adapter.to_out_lora(a)
        return attn.to_out[1](out)

    def _residual(self, attn, x, encoder_hidden_states, mask, active):
        weights = [w for _, _, w in active]
        adapters = [self.adapters[name] for _, name, _ in active]
        with_base = needs_base(weights)
        shared = None  # Q/K/V of the un-embedded input, computed once for every branch that uses it
        qs, ks, vs, inputs = [], [], [], []
        for adapter in ([None] if with_base else []) + adapters:
            xi = x if adapter is None else adapter.embed(x)
            kv_source = xi if encoder_hidden_states is None else encoder_hidden_states
            if xi is x:
                if shared is None:
                    shared = (attn.to_q(x), attn.to_k(kv_source), attn.to_v(kv_source))
                q, k, v = shared
            else:
                q, k, v = attn.to_q(xi), attn.to_k(kv_source), attn.to_v(kv_source)
            if adapter is not None and adapter.has_lora:
                q = q + adapter.to_q_lora(xi)
                k = k + adapter.to_k_lora(kv_source)
                v = v + adapter.to_v_lora(kv_source)
            qs.append(q), ks.append(k), vs.append(v), inputs.append(adapter)
        n = len(qs)
        if mask is not None and n > 1:
            mask = mask.repeat(n, 1, 1, 1)
        a = attend(torch.cat(qs), torch.cat(ks), torch.cat(vs), attn.heads, mask) if n > 1 else attend(
            qs[0], ks[0], vs[0], attn.heads, mask)
        y = attn.to_out[0](a)
        a_parts, y_parts = a.chunk(n), list(y.chunk(n))
        for i, adapter in enumerate(inputs):
            if adapter is not None and adapter.has_lora:
                y_parts[i] = y_parts[i] + adapter.to_out_lora(a_parts[i])
        base = y_parts.pop(0) if with_base else None
        return attn.to_out[1](mix_residual(y_parts, weights, base))

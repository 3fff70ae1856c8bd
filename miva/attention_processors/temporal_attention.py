"""`MIVATemporalAttnProcessor`: MotionLoRA and motion embedding on the motion modules' temporal attention."""

from __future__ import annotations

import torch
from torch import nn

from .adapter_config import MIVAAdapterConfig
from .attention_utils import finish_output, prepare_mask
from .base import MIVAProcessorBase
from .composition import merges_deltas, weighted_sum, with_base_branch
from .lora import LoRADelta, linear_with_deltas
from .lora_bank import StackedLoRA, stackable
from .parts import MOTION_EMBED_PART, MOTION_LORA_PART, TEMPORAL, has_part_at

_LORA_PARTS = ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")


class TemporalAdapter(nn.Module):
    """One adapter's part at one temporal attention: LoRA deltas on Q/K/V/O and an optional motion embedding.

    The output delta uses standard placement (it reads the attention output, the input of W_O). The motion embedding
    is an `(max_frames, channels)` table added to the input before Q/K/V (Motion-Inversion); we start it at zero so a
    new adapter is a no-op (the research code draws N(0, 1)).
    """

    part_kind = TEMPORAL

    def __init__(self, attn, config: MIVAAdapterConfig, max_frames: int):
        super().__init__()
        rank, alpha = config.motion_lora_rank, config.motion_lora_scale
        self.has_lora = MOTION_LORA_PART.enabled(config)
        if self.has_lora:
            self.to_q_lora = LoRADelta(attn.to_q.in_features, attn.to_q.out_features, rank, alpha)
            self.to_k_lora = LoRADelta(attn.to_k.in_features, attn.to_k.out_features, rank, alpha)
            self.to_v_lora = LoRADelta(attn.to_v.in_features, attn.to_v.out_features, rank, alpha)
            self.to_out_lora = LoRADelta(attn.to_out[0].in_features, attn.to_out[0].out_features, rank, alpha)
        self.motion_embed = nn.Parameter(torch.zeros(max_frames, attn.to_q.in_features)) if MOTION_EMBED_PART.enabled(config) else None

    @property
    def inert(self) -> bool:
        """Nothing left to compute (MotionLoRA fused into the base weights, no motion embedding): the adapter's
        branch is the base attention, so it changes nothing in either parallel mode."""
        return not self.has_lora and self.motion_embed is None

    def forward(self, hidden_states: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """(batch*pixels, frames, channels) plus the first `frames` rows of the table (times `weight`).

        A forward, not a plain method, so that offloading hooks on this module bring `motion_embed` in.
        """
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

    part_kind = TEMPORAL

    def build_adapter(self, attn, name, config):
        if not has_part_at(config, TEMPORAL):
            return None
        return TemporalAdapter(attn, config, self.context.max_frames)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        active = [entry for entry in self.context.active_adapters(self.adapters)
                  if not self.adapters[entry[1]].inert]
        batch = hidden_states.shape[0]
        kv_source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = prepare_mask(attn, attention_mask, kv_source.shape[1], batch)
        if not active:
            out = self.attend(attn.to_q(hidden_states), attn.to_k(kv_source), attn.to_v(kv_source), attn.heads, mask)
            out = attn.to_out[1](attn.to_out[0](out))
        elif merges_deltas(self.context.parallel_mode):
            out = self._weights(attn, hidden_states, encoder_hidden_states, mask, active)
        else:
            out = self._residual(attn, hidden_states, encoder_hidden_states, mask, active)
        return finish_output(attn, out, residual)

    def _weights(self, attn, x, encoder_hidden_states, mask, active):
        for _, name, weight in active:
            x = self.adapters[name](x, weight)
        kv_source = x if encoder_hidden_states is None else encoder_hidden_states
        loras = [(self.adapters[name], w) for _, name, w in active if self.adapters[name].has_lora]
        q = linear_with_deltas(attn.to_q, x, [(adapter.to_q_lora, w) for adapter, w in loras])
        k = linear_with_deltas(attn.to_k, kv_source, [(adapter.to_k_lora, w) for adapter, w in loras])
        v = linear_with_deltas(attn.to_v, kv_source, [(adapter.to_v_lora, w) for adapter, w in loras])
        a = self.attend(q, k, v, attn.heads, mask)
        out = linear_with_deltas(attn.to_out[0], a, [(adapter.to_out_lora, w) for adapter, w in loras])
        return attn.to_out[1](out)

    def _residual(self, attn, x, encoder_hidden_states, mask, active):
        """`y_base + sum_i w_i (y_i - y_base)`: branch i = attention with adapter i's deltas (and embedding); y_base
        (no adapter) only when the weights do not sum to 1. One SDPA call for all branches; since W_O is linear, the
        attention outputs are mixed first and projected once, `W_O (sum_j c_j a_j) + b + sum_i w_i dO_i(a_i)`
        (c = the branch weights, the base's being 1 - sum_i w_i)."""
        branches = with_base_branch([(self.adapters[name], w) for _, name, w in active], [w for _, _, w in active])
        single = len(branches) == 1
        if not single and all(adapter is None or adapter.motion_embed is None for adapter, _ in branches):
            deltas = {part: [getattr(adapter, part) if adapter is not None and adapter.has_lora else None
                             for adapter, _ in branches] for part in _LORA_PARTS}
            if all(stackable(d) for d in deltas.values()):
                return self._residual_stacked(attn, x, encoder_hidden_states, mask, branches, deltas)
        shared = None  # Q/K/V of the un-embedded input, computed once for every branch that uses it
        qs, ks, vs = [], [], []
        for adapter, _ in branches:
            xi = x if adapter is None else adapter(x)
            kv_source = xi if encoder_hidden_states is None else encoder_hidden_states
            lora = adapter is not None and adapter.has_lora
            if single and lora:  # one branch: the deltas merge into the projections at inference
                q = linear_with_deltas(attn.to_q, xi, [(adapter.to_q_lora, 1.0)])
                k = linear_with_deltas(attn.to_k, kv_source, [(adapter.to_k_lora, 1.0)])
                v = linear_with_deltas(attn.to_v, kv_source, [(adapter.to_v_lora, 1.0)])
            else:
                if xi is x:
                    if shared is None:
                        shared = (attn.to_q(x), attn.to_k(kv_source), attn.to_v(kv_source))
                    q, k, v = shared
                else:
                    q, k, v = attn.to_q(xi), attn.to_k(kv_source), attn.to_v(kv_source)
                if lora:
                    q = q + adapter.to_q_lora(xi)
                    k = k + adapter.to_k_lora(kv_source)
                    v = v + adapter.to_v_lora(kv_source)
            qs.append(q), ks.append(k), vs.append(v)
        if single:
            adapter = branches[0][0]
            a = self.attend(qs[0], ks[0], vs[0], attn.heads, mask)
            out = linear_with_deltas(attn.to_out[0], a, [(adapter.to_out_lora, 1.0)] if adapter.has_lora else [])
            return attn.to_out[1](out)
        n = len(qs)
        if mask is not None:
            mask = mask.repeat(n, 1, 1, 1)
        parts = self.attend(torch.cat(qs), torch.cat(ks), torch.cat(vs), attn.heads, mask).chunk(n)
        mixed = weighted_sum(parts, [c_j for _, c_j in branches])
        out = attn.to_out[0](mixed)  # the bias enters with weight sum_j c_j = 1
        for a_j, (adapter, w) in zip(parts, branches):
            if adapter is not None and adapter.has_lora:
                out = out + adapter.to_out_lora(a_j) * w
        return attn.to_out[1](out)

    def _residual_stacked(self, attn, x, encoder_hidden_states, mask, branches, deltas):
        """`_residual` at inference when every branch reads the same input (no motion embedding): the frozen Q/K/V
        once, each branch's deltas stacked onto them in the `(N*batch, frames, C)` layout of the one batched
        attention, the mixed output projected once and the N out deltas in one matmul (`lora_bank`)."""
        kv_source = x if encoder_hidden_states is None else encoder_hidden_states
        n = len(branches)
        q = StackedLoRA(deltas["to_q_lora"], x).add_each(attn.to_q(x), x)
        k = StackedLoRA(deltas["to_k_lora"], kv_source).add_each(attn.to_k(kv_source), kv_source)
        v = StackedLoRA(deltas["to_v_lora"], kv_source).add_each(attn.to_v(kv_source), kv_source)
        if mask is not None:
            mask = mask.repeat(n, 1, 1, 1)
        a = self.attend(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn.heads, mask)
        parts = a.view(n, *x.shape[:-1], a.shape[-1]).unbind(0)
        coefficients = [c_j for _, c_j in branches]
        out = attn.to_out[0](weighted_sum(parts, coefficients))  # the bias enters with weight sum_j c_j = 1
        out = out + StackedLoRA(deltas["to_out_lora"], a).mix(parts, coefficients)
        return attn.to_out[1](out)

"""`MIVACrossAttnProcessor`: CA-LoRA, spatiotemporal Q, Q positional encodings and the implicit prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_config import MIVAAdapterConfig
from .attention_utils import attention_probs, finish_output, prepare_mask
from .base import MIVAProcessorBase
from .composition import Branch, Site, split_prompt_chunks
from .gating import compose_gated
from .lora import LoRADelta, linear_without_bias, weights_readable
from .parts import CA_LORA_PART, CROSS, IMPLICIT_PART, check_same_query_layout, has_part_at
from .spatiotemporal_query import QueryPlan, SpatiotemporalQuery
from .split_inference import row_window


class ImplicitPrompt(nn.Module):
    """The paper's final cross-attention: `f(x) = up(GELU(LN(down(W_Q x))))`, no text used. `up` starts at zero."""

    def __init__(self, inner_dim: int, out_dim: int, rank: int = 64):
        super().__init__()
        self.down = nn.Linear(inner_dim, rank)
        self.norm = nn.LayerNorm(rank)
        self.up = nn.Linear(rank, out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """`query` = W_Q x, (batch*frames, tokens, inner_dim) -> (batch*frames, tokens, out_dim)."""
        return self.up(F.gelu(self.norm(self.down(query))))


class CrossAttnAdapter(nn.Module):
    """One adapter's part at one spatial `attn2`: LoRA deltas on K/V/O (+Q) or an implicit prompt, and how it
    builds its (spatiotemporal) queries. The out delta reads the attention output (standard placement)."""

    part_kind = CROSS

    def __init__(self, attn, config: MIVAAdapterConfig):
        super().__init__()
        self.implicit = IMPLICIT_PART.enabled(config)
        self.stq = config.spatiotemporal_key
        self.has_lora = CA_LORA_PART.enabled(config)
        self.has_q_lora = self.has_lora and config.use_q_lora
        rank, alpha = config.ca_lora_rank, config.ca_lora_scale
        if self.has_lora:
            self.to_k_lora = LoRADelta(attn.to_k.in_features, attn.to_k.out_features, rank, alpha)
            self.to_v_lora = LoRADelta(attn.to_v.in_features, attn.to_v.out_features, rank, alpha)
            self.to_out_lora = LoRADelta(attn.to_out[0].in_features, attn.to_out[0].out_features, rank, alpha)
            if self.has_q_lora:
                self.to_q_lora = LoRADelta(attn.to_q.in_features, attn.to_q.out_features, rank, alpha)
            if config.ca_out_lora_bias:  # research import: y + dO(y) = W_O a + b + dO'(a) + dO(b) (loaders/research.py)
                self.to_out_bias = nn.Parameter(torch.zeros(attn.to_out[0].out_features))
        if self.implicit:
            self.implicit_prompt = ImplicitPrompt(attn.to_q.out_features, attn.to_out[0].out_features,
                                                  config.implicit_rank)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """The out delta `dO(a)` (+ the constant `to_out_bias` of imported research adapters), (..., out).

        A forward, not a plain method, so that offloading / casting hooks on this module bring `to_out_bias` in.
        """
        delta = self.to_out_lora(a)
        bias = getattr(self, "to_out_bias", None)
        return delta if bias is None else delta + bias.to(delta.dtype)

    # The delta protocol of `lora.linear_with_deltas` (merged into W_O at inference when the weights are readable).
    def delta_weight(self) -> torch.Tensor:
        return self.to_out_lora.delta_weight()

    def delta_bias(self) -> torch.Tensor | None:
        return getattr(self, "to_out_bias", None)

    def weights_readable(self) -> bool:
        return weights_readable(self) and self.to_out_lora.weights_readable()

    def low_rank(self) -> LoRADelta:
        return self.to_out_lora


class MIVACrossAttnProcessor(MIVAProcessorBase):
    """Replaces the processor of every spatial `attn2` (text cross-attention). Input `(batch*frames, h*w, C)`.

    `encoder_hidden_states` is `(batch*frames, T*(1+P), D)`: the main prompt's T tokens, then one prompt per active
    adapter when the call's state says so (`CallState.adapter_prompts`; P = number of active adapters). With no
    active adapter this equals diffusers' `AttnProcessor2_0` exactly. `"residual"`: `y_base + sum_i w_i (y_i -
    y_base)`, the N branches batched into one SDPA call and `y_base` (frozen, main prompt, ordinary queries)
    computed only when the weights do not sum to 1. `"weights"`: w_i-scaled deltas, one softmax over the adapters' prompts.
    """

    part_kind = CROSS

    def __init__(self, context, layer_name: str = ""):
        super().__init__(context, layer_name)
        self.ip_adapter = None  # diffusers' IPAdapterAttnProcessor2_0 (its to_k_ip / to_v_ip) after load_ip_adapter

    def build_adapter(self, attn, name, config):
        return CrossAttnAdapter(attn, config) if has_part_at(config, CROSS) else None

    # ---------------------------------------------------------------------------------------------- entry point
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_states = encoder_hidden_states
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        state = self.context.call_state()
        active = self.context.active_adapters(self.adapters)
        if active and not state.adapter_prompts:  # on the shared prompt an adapter with nothing live is the base
            active = [entry for entry in active if self._live(entry[1])]
        prompts = self._split_prompts(encoder_hidden_states, state.adapter_prompts)
        # W_Q x at full resolution; the spatiotemporal-Q path projects its downsampled grid instead and needs this
        # only for an implicit prompt, the base branch or IP-Adapter.
        query = _Once(lambda: attn.to_q(hidden_states))

        if not active:
            mask = prepare_mask(attn, attention_mask, prompts[0].shape[1], hidden_states.shape[0])
            key, value = attn.to_k(prompts[0]), attn.to_v(prompts[0])
            self._store_maps(attn, query(), key)
            out = attn.to_out[0](self.attend(query(), key, value, attn.heads, mask))
        else:
            if attention_mask is not None:
                raise ValueError(f"{self.layer_name}: attention masks are not supported with active MIVA adapters")
            out = self._adapted(attn, hidden_states, query, prompts, active)
        if ip_states is not None and self.ip_adapter is not None:
            out = out + self._ip_adapter_output(attn, query(), ip_states)
        return finish_output(attn, attn.to_out[1](out), residual)

    def _split_prompts(self, text: torch.Tensor, adapter_prompts: bool) -> list[torch.Tensor]:
        """[main prompt, adapter 0's prompt, ...] each (batch*frames, T, D)."""
        return split_prompt_chunks(self.context, text, self.layer_name) if adapter_prompts else [text]

    def _live(self, name: str) -> bool:
        """Whether adapter `name` has anything left to compute here (its CA-LoRA unmerged, STQ or implicit prompt)."""
        adapter = self.adapters[name]
        return bool(self._lora(name) or adapter.implicit or adapter.stq[0])

    def _lora(self, name: str) -> dict:
        """Adapter `name`'s live CA-LoRA deltas by projection (none when merged into the base weights)."""
        adapter = self.adapters[name]
        if not adapter.has_lora or self.merged(name, CA_LORA_PART):
            return {}
        deltas = {"to_k": adapter.to_k_lora, "to_v": adapter.to_v_lora, "to_out": adapter}  # adapter: dO + to_out_bias
        return {"to_q": adapter.to_q_lora, **deltas} if adapter.has_q_lora else deltas

    def _stq(self, active) -> SpatiotemporalQuery | None:
        keys = {name: self.adapters[name].stq for _, name, _ in active}
        check_same_query_layout(keys)
        key = next(iter(keys.values()))
        return SpatiotemporalQuery(key) if key[0] else None

    # ------------------------------------------------------------------------------------------ adapter paths
    def _adapted(self, attn, x, query, prompts, active):
        ctx, state = self.context, self.context.call_state()
        stq = self._stq(active)
        frames = state.frames(self.layer_name) if stq is not None else None
        if stq is not None and row_window(state, self.layer_name, rows=x.shape[0], frames=frames) is not None:
            raise ValueError(f"{self.layer_name}: spatiotemporal Q (q_downsample) attends over all frames of a video at "
                             f"once, but FreeNoise split inference hands this layer {x.shape[0]} rows at a time; run "
                             "without enable_free_noise_split_inference() or with an adapter without q_downsample")
        size = state.spatial_size(self.layer_name) if stq else None
        if stq and size is None:
            raise RuntimeError(f"{self.layer_name}: spatiotemporal Q needs the level size; run the whole UNet so the "
                               "MIVA hooks can record it")
        plan = QueryPlan(attn, x, query, frames, stq, size)
        # One (per-video) text tensor per prompt chunk, shared by the adapters that read it (identity matters below).
        chunks = {}
        for i, _, _ in active:
            j = 1 + i if state.adapter_prompts else 0
            if j not in chunks:
                chunks[j] = plan.per_video(prompts[j])
        branches = []
        for i, name, w in active:
            adapter = self.adapters[name]
            gate = self.spatial_gate(state, name, x)  # (batch*frames, h*w, 1) on the restored output, or None
            if adapter.implicit:  # the implicit prompt reads W_Q x at full resolution, no text
                branches.append(Branch(w, output=adapter.implicit_prompt(query()), gate=gate))
            else:
                branches.append(Branch(w, self._lora(name), context=chunks[1 + i if state.adapter_prompts else 0],
                                       gate=gate))

        def base():  # frozen attention: ordinary queries, main prompt
            key, value = attn.to_k(prompts[0]), attn.to_v(prompts[0])
            return attn.to_out[0](self.attend(query(), key, value, attn.heads))

        stq_steps = {} if stq is None else dict(finish_query=plan.finish_query, finish_kv=plan.finish_kv,
                                                  restore=plan.upsample)
        site = Site(attn, plan.x_q, self._attend(attn), query=plan.q_plain, base=base,
                    observe=lambda q, k: self._store_maps(attn, q, k, plan), **stq_steps)
        guidance = state.mask_guidance  # mask-guided attention (docs/mask_branch.md): adapters gated by region
        if guidance is not None and guidance.gates(CROSS):  # the region gate multiplies the user's mask gate
            size = state.spatial_size(self.layer_name)
            for b, (_, name, _) in zip(branches, active):
                region = guidance.gate(name, size, x.shape[0], x.dtype)
                if region is not None:
                    b.gate = region if b.gate is None else b.gate * region
        return compose_gated(ctx.parallel_mode, site, branches)

    # --------------------------------------------------------------------------------------------- extras
    def _ip_adapter_output(self, attn, query, ip_states):
        """diffusers' IP-Adapter term, added before W_O there; W_O is linear, so we add `W_O (sum scale_j a_j)`."""
        total = 0.0
        ip = self.ip_adapter
        for states, scale, to_k_ip, to_v_ip in zip(ip_states, ip.scale, ip.to_k_ip, ip.to_v_ip):
            scale = scale if not isinstance(scale, (list, tuple)) else scale[0]
            if scale == 0:
                continue
            total = total + scale * self.attend(query, to_k_ip(states), to_v_ip(states), attn.heads)
        if not torch.is_tensor(total):
            return 0.0
        return linear_without_bias(attn.to_out[0], total)

    def _store_maps(self, attn, query, key, plan=None):
        """Hand the softmax maps to the call's CA-map store when it wants this layer."""
        state = self.context.call_state()
        store = state.attention_store
        if store is None or not store.wants(self.layer_name):
            return
        text_tokens = getattr(store, "text_tokens", None) or key.shape[1]
        probs = attention_probs(query, key[:, :text_tokens], attn.heads)
        if plan is None or plan.stq is None:
            size = state.spatial_size(self.layer_name)
            frames = plan.frames if plan is not None and plan.frames else state.frames(self.layer_name)
            store.add(self.layer_name, probs, num_frames=frames, size=size, spatiotemporal=False)
        else:
            store.add(self.layer_name, probs, num_frames=plan.frames, size=plan.grid, spatiotemporal=True)


class _Once:
    """A value computed on first use and kept: `_Once(fn)()` calls `fn` at most once."""

    def __init__(self, compute):
        self.compute, self.value = compute, None

    def __call__(self):
        if self.value is None:
            self.value = self.compute()
        return self.value

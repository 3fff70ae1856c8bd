"""`MIVATemporalAttnProcessor`: MotionLoRA and motion embedding on the motion modules' temporal attention."""

from __future__ import annotations

import torch
from torch import nn

from .adapter_config import MIVAAdapterConfig
from .attention_utils import finish_output, prepare_mask
from .base import MIVAProcessorBase
from .composition import PROJECTIONS, Branch, Site
from .gates import temporal_level
from .gating import compose_gated
from .lora import LoRADelta
from .parts import MOTION_EMBED_PART, MOTION_LORA_PART, TEMPORAL, has_part_at


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
        active = self.context.active_adapters(self.adapters)
        gates = self._gates(hidden_states, active)
        branches = [branch for branch in (self._branch(name, w, gates.get(name)) for _, name, w in active)
                    if branch is not None]
        batch = hidden_states.shape[0]
        kv_source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = prepare_mask(attn, attention_mask, kv_source.shape[1], batch)
        if not branches:
            out = self.attend(attn.to_q(hidden_states), attn.to_k(kv_source), attn.to_v(kv_source), attn.heads, mask)
            out = attn.to_out[0](out)
        else:
            site = Site(attn, hidden_states, self._attend(attn), context=encoder_hidden_states, mask=mask)
            out = compose_gated(self.context.parallel_mode, site, branches)
        return finish_output(attn, attn.to_out[1](out), residual)

    def _branch(self, name: str, weight: float, gate: torch.Tensor | None) -> Branch | None:
        """Adapter `name`'s branch: its live MotionLoRA deltas on Q/K/V/O (none once merged into the base weights),
        its motion embedding and its mask; None when nothing is left to compute (the branch would be the base)."""
        adapter = self.adapters[name]
        live = adapter.has_lora and not self.merged(name, MOTION_LORA_PART)
        deltas = {p: getattr(adapter, f"{p}_lora") for p in PROJECTIONS} if live else {}
        embed = adapter if adapter.motion_embed is not None else None
        if not deltas and embed is None:
            return None
        return Branch(weight, deltas, embed=embed, gate=gate)

    def _gates(self, hidden_states: torch.Tensor, active) -> dict[str, torch.Tensor]:
        """The masks of the active adapters that have one, name -> `(rows, frames, 1)` for `hidden_states`
        `(rows, frames, C)`, at the level the call recorded for this block's spatial layers; under split inference
        the rows of this chunk (found once per call: the chunks follow one another)."""
        state = self.context.call_state()
        gates = state.gates
        names = [name for _, name, _ in active if gates is not None and name in gates.fields]
        if not names:
            return {}
        timestep = state.forward.timestep
        if timestep is None:
            raise ValueError(f"{self.layer_name}: adapter_masks[{names[0]!r}] needs the batch and level size of this "
                             "layer; run the whole UNet so that the MIVA hooks record them")
        rows, frames, window_frames = hidden_states.shape[0], state.frames(self.layer_name), hidden_states.shape[1]
        size = temporal_level(state.forward.spatial_sizes, self.layer_name, rows // timestep.shape[0])
        whole = timestep.shape[0] * size[0] * size[1]
        window = state.forward.split.temporal_rows(self.layer_name, rows, whole)  # split inference's chunk
        if window is not None and window_frames != frames:
            raise ValueError(f"{self.layer_name}: adapter_masks[{names[0]!r}] cannot follow split inference's row "
                             f"chunks through FreeNoise's {window_frames}-frame windows; run without "
                             "enable_free_noise_split_inference() or without this mask")
        return {name: gates.temporal(name, frames=frames, size=size, rows=whole, window_frames=window_frames,
                                     like=hidden_states, window=window) for name in names}

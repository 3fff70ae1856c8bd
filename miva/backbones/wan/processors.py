"""MIVA's processors on Wan's attention layers, and the block that runs the cross-frame branch.

- `MIVAWanSelfAttnProcessor` (every block's `attn1`): the stock `WanAttnProcessor` unchanged, plus the adapters'
  cross-frame branches, which the block calls through `cross_frame` after its gated self-attention;
- `MIVAWanCrossAttnProcessor` (every block's `attn2`): the stock text cross-attention, replaced by the active
  adapters' implicit prompts (composition as on the UNet: `composition.py`);
- `MIVAWanTransformerBlock`: `WanTransformerBlock` with `x = x + sum_i w_i branch_i(x)` between the gated
  self-attention and the cross-attention. diffusers has no hook point there, so `install.py` gives each block this
  subclass (same parameters, same state-dict keys); without an active branch it runs the stock forward itself.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformerBlock

from ...attention_processors.base import MIVAProcessorBase
from ...attention_processors.composition import merges_deltas, mix_residual, replace_share
from .config import check_backbone
from .modules import WanCrossFrameAdapter, WanImplicitPrompt

__all__ = ["MIVAWanCrossAttnProcessor", "MIVAWanSelfAttnProcessor", "MIVAWanTransformerBlock"]


class _WanProcessorBase(MIVAProcessorBase):
    """A MIVA processor whose frozen attention is diffusers' own `WanAttnProcessor` (bit for bit)."""

    def __init__(self, context=None, layer_name: str = ""):
        super().__init__(context, layer_name)
        self.stock = WanAttnProcessor()

    def add_adapter(self, attn, name, config) -> None:
        check_backbone(config, f"adapter {name!r}")
        super().add_adapter(attn, name, config)


class MIVAWanSelfAttnProcessor(_WanProcessorBase):
    """`attn1` of a Wan block: the stock 3-D self-attention (with rotary), and the cross-frame branches."""

    def build_adapter(self, attn, name, config):
        return WanCrossFrameAdapter(attn, config, self.context.temb_channels) if config.use_i2v else None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def cross_frame(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """`sum_i w_i branch_i(x)` over the active adapters with a branch here (None: there is none).
        `hidden_states`: (batch, frames*tokens, dim), the residual stream after the gated self-attention."""
        active = self.context.active_adapters(self.adapters)
        if not active:
            return None
        state = self.context.call_state()
        frames = state.frames(None, self.layer_name)
        values = state.forward
        total = None
        for _, name, weight in active:
            branch = self.adapters[name](hidden_states, frames, timestep=values.timestep, temb=values.temb)
            branch = branch if weight == 1.0 else branch * weight
            total = branch if total is None else total + branch
        return total


class MIVAWanCrossAttnProcessor(_WanProcessorBase):
    """`attn2` of a Wan block: the stock text cross-attention, or the active adapters' implicit prompts in its
    place (`"residual"`: `sum_i w_i f_i + (1 - sum_i w_i) y_text`; `"weights"`: each takes share w_i of it)."""

    def build_adapter(self, attn, name, config):
        return WanImplicitPrompt(attn.to_q.out_features, config) if config.ca_mode == "implicit" else None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        def text():
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

        active = self.context.active_adapters(self.adapters)
        if not active:
            return text()
        q_n = attn.norm_q(attn.to_q(hidden_states))
        prompts = [(self.adapters[name](q_n), weight) for _, name, weight in active]
        if merges_deltas(self.context.parallel_mode):
            y = text()
            for f, w in prompts:
                y = replace_share(y, f, w)
            return y
        y = sum(f if w == 1.0 else f * w for f, w in prompts)
        return mix_residual(y, [w for _, w in prompts], text)


class MIVAWanTransformerBlock(WanTransformerBlock):
    """`WanTransformerBlock` with the cross-frame branch after the gated self-attention (see the module doc)."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        processor = self.attn1.processor
        if not isinstance(processor, MIVAWanSelfAttnProcessor) or not processor.context.active_adapters(
                processor.adapters):
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        # The stock forward (diffusers 0.42.1), with the branch inserted where marked.
        if temb.ndim == 4:  # (batch, seq_len, 6, dim): Wan2.2 TI2V
            chunks = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
            chunks = [c.squeeze(2) for c in chunks]
        else:  # (batch, 6, dim)
            chunks = (self.scale_shift_table + temb.float()).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = chunks

        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        branch = processor.cross_frame(hidden_states)  # MIVA: x = x + sum_i w_i branch_i(x), ungated
        if branch is not None:
            hidden_states = hidden_states + branch.type_as(hidden_states)

        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
        hidden_states = hidden_states + attn_output

        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)

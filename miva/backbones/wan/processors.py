"""MIVA's processors on Wan's attention layers, and the block that runs the cross-frame branch.

Both describe each active adapter as a `composition.Branch` and run `compose` on the layer's `Site`
(`site.wan_site`); with no branch they call diffusers' `WanAttnProcessor` itself (bit for bit the stock output).

- `MIVAWanSelfAttnProcessor` (every block's `attn1`): the 3-D self-attention with the active adapters'
  MotionLoRA deltas, plus the cross-frame branches, which the block calls through `cross_frame` after its gated
  self-attention;
- `MIVAWanCrossAttnProcessor` (every block's `attn2`): the stock text cross-attention (with CA-LoRA deltas), or
  the active adapters' implicit prompts in its place (composition as on the UNet: `composition.py`);
- `MIVAWanTransformerBlock`: `WanTransformerBlock` with `x = x + sum_i w_i branch_i(x)` between the gated
  self-attention and the cross-attention. diffusers has no hook point there, so `install.py` gives each block this
  subclass (same parameters, same state-dict keys); without an active branch it runs the stock forward itself.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformerBlock

from ...attention_processors.base import MIVAProcessorBase
from ...attention_processors.composition import Branch, split_prompt_chunks
from ...attention_processors.gating import compose_gated, gated
from .config import check_backbone
from .modules import WanCrossAttnAdapter, WanSelfAttnAdapter, lora_deltas
from .site import wan_site

__all__ = ["MIVAWanCrossAttnProcessor", "MIVAWanSelfAttnProcessor", "MIVAWanTransformerBlock"]


class _WanProcessorBase(MIVAProcessorBase):
    """A MIVA processor whose frozen attention is diffusers' own `WanAttnProcessor` (bit for bit) and whose adapted
    attention is `compose` on `wan_site` (same backend and parallel config)."""

    def __init__(self, context=None, layer_name: str = ""):
        super().__init__(context, layer_name)
        self.stock = WanAttnProcessor()

    # `attn.set_attention_backend(...)` sets the processor's `_attention_backend`: it is the stock processor's.
    @property
    def _attention_backend(self):
        return self.stock._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:
        self.stock._attention_backend = backend

    # `transformer.enable_parallelism(...)` sets each processor's `_parallel_config` (if it has one): the stock's.
    @property
    def _parallel_config(self):
        return self.stock._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, config) -> None:
        self.stock._parallel_config = config

    def add_adapter(self, attn, name, config) -> None:
        check_backbone(config, f"adapter {name!r}")
        super().add_adapter(attn, name, config)

    def lora_branch(self, name: str, weight: float, hidden_states: torch.Tensor) -> Branch | None:
        """Adapter `name`'s branch here: its live LoRA deltas and its mask (None when it has no delta left)."""
        if not self.lora_live(name):
            return None
        return Branch(weight, lora_deltas(self.adapters[name]), gate=self.token_gate(name, hidden_states))

    def token_gate(self, name: str, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Adapter `name`'s mask at this layer, `(batch, frames*h*w, 1)` on the token grid the call recorded
        (`gates.CallGates.tokens`); None: it has none."""
        state = self.context.call_state()
        gates = state.gates
        if gates is None or name not in gates.fields:
            return None
        grid = state.forward.grid
        if grid is None or grid[0] * grid[1] * grid[2] != hidden_states.shape[1]:
            raise ValueError(f"{self.layer_name}: adapter_masks[{name!r}] needs the token grid, which was not "
                             f"recorded (got {grid}); run the whole transformer so that the MIVA hooks record it")
        return gates.tokens(name, grid=grid, batch=hidden_states.shape[0], like=hidden_states)

    def run(self, attn, branches: list[Branch], hidden_states, encoder_hidden_states=None, attention_mask=None,
            rotary_emb=None, query=None) -> torch.Tensor:
        """The layer's output: the stock processor without a branch, else `compose` on the Wan `Site`."""
        if not branches:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        site = wan_site(self.stock, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, query)
        return attn.to_out[1](compose_gated(self.context.parallel_mode, site, branches))


class MIVAWanSelfAttnProcessor(_WanProcessorBase):
    """`attn1` of a Wan block: the stock 3-D self-attention (with rotary) plus MotionLoRA deltas, and the
    cross-frame branches."""

    def build_adapter(self, attn, name, config):
        if not (config.use_i2v or config.use_motion_lora):
            return None
        return WanSelfAttnAdapter(attn, config, self.context.temb_channels)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        active = self.context.active_adapters(self.adapters)
        if self._parallel_config is not None and any(self.adapters[name].has_branch for _, name, _ in active):
            raise ValueError(f"{self.layer_name}: context parallelism shards the tokens across devices, so frame 0's "
                             "keys/values are not beside every frame's queries; the cross-frame branch needs all "
                             "tokens: run MIVA Wan adapters without enable_parallelism (or without a branch)")
        branches = [b for b in (self.lora_branch(name, w, hidden_states) for _, name, w in active) if b is not None]
        return self.run(attn, branches, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def cross_frame(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """`sum_i w_i branch_i(x)` over the active adapters with a branch here (None: there is none).
        `hidden_states`: (batch, frames*tokens, dim), the residual stream after the gated self-attention."""
        active = [a for a in self.context.active_adapters(self.adapters) if self.adapters[a[1]].has_branch]
        if not active:
            return None
        state = self.context.call_state()
        frames = state.frames(self.layer_name)
        values = state.forward
        total = None
        for _, name, weight in active:
            branch = self.adapters[name].branch(hidden_states, frames, timestep=values.timestep, temb=values.temb,
                                                backend=self._attention_backend)
            branch = gated(branch if weight == 1.0 else branch * weight, self.token_gate(name, hidden_states))
            total = branch if total is None else total + branch
        return total


class MIVAWanCrossAttnProcessor(_WanProcessorBase):
    """`attn2` of a Wan block: the stock text cross-attention with CA-LoRA deltas, or the active adapters' implicit
    prompts in its place. `"residual"`: `sum_i w_i y_i + (1 - sum_i w_i) y_text` with `y_i` adapter i's implicit
    prompt or its LoRA'd attention; `"weights"`: one attention with the summed w_i-scaled deltas, of which each
    implicit prompt takes share w_i."""

    def build_adapter(self, attn, name, config):
        if not (config.ca_mode == "implicit" or config.use_ca_lora):
            return None
        return WanCrossAttnAdapter(attn, config)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        active = self.context.active_adapters(self.adapters)
        chunks = self._split_prompts(attn, encoder_hidden_states)
        query = attn.to_q(hidden_states) if any(self.adapters[name].implicit for _, name, _ in active) else None
        branches = []
        for index, name, w in active:
            adapter = self.adapters[name]
            if adapter.implicit:  # reads the frozen normalised queries, not the text (its prompt chunk is unused)
                branches.append(Branch(w, output=adapter.implicit_prompt(attn.norm_q(query)),
                                       gate=self.token_gate(name, hidden_states)))
            elif (branch := self.lora_branch(name, w, hidden_states)) is not None:
                branch.context = chunks[1 + index] if len(chunks) > 1 else None
                branches.append(branch)
        return self.run(attn, branches, hidden_states, chunks[0], attention_mask, rotary_emb, query)

    def _split_prompts(self, attn, text: torch.Tensor) -> list[torch.Tensor]:
        """[main prompt, active adapter 0's prompt, ...], each (batch, T, D), when the call passes per-adapter
        prompts (`miva_call(..., adapter_prompts=True)`: `text` (batch, T * (1 + P), D)); else [text]."""
        if not self.context.call_state().adapter_prompts:
            return [text]
        if attn.add_k_proj is not None:
            raise ValueError(f"{self.layer_name}: per-adapter prompts are not supported on Wan's I2V base (its image "
                             "tokens precede the text); use the T2V base or leave batch_prompt out")
        return split_prompt_chunks(self.context, text, self.layer_name)


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

"""What the three MIVA processors have in common: a bank of named adapters and the shared context."""

from __future__ import annotations

import torch
from torch import nn

from .adapter_config import MIVAAdapterConfig
from .attention_utils import attend
from .context import MIVAContext
from .parts import ADAPTER_PARTS
from .split_inference import row_window


class MIVAProcessorBase(nn.Module):
    """A diffusers attention processor that is also an `nn.Module` holding adapters by name.

    Being a submodule of the `Attention` it serves, its adapter weights appear in `unet.state_dict()` under
    `<layer>.processor.adapters.<name>.<part>` and follow `.to()`, dtype casts and `accelerate.prepare`.
    """

    def __init__(self, context: MIVAContext | None = None, layer_name: str = ""):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.layer_name = layer_name
        # A plain attribute (not a submodule): the context is shared and holds no parameters. Without one (diffusers'
        # IP-Adapter loader re-creates every other processor as `type(processor)()`), the processor has no adapters
        # and computes the stock attention; `install_miva_processors` puts the UNet's own processors back.
        object.__setattr__(self, "context", context if context is not None else MIVAContext())

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attention_utils.attend` on the context's backend: (batch, q_tokens, C) x (batch, kv_tokens, C)."""
        ctx = self.context
        return attend(query, key, value, heads, attention_mask=attention_mask, backend=ctx.attention_backend,
                      attention_op=ctx.attention_op)

    def _attend(self, attn):
        """`attend(q, k, v, mask)` at `attn`'s head count (the composer's `Site.attend`)."""
        return lambda query, key, value, mask=None: self.attend(query, key, value, attn.heads, mask)

    def spatial_gate(self, state, name: str, hidden_states: torch.Tensor,
                     whole_videos: bool = False) -> torch.Tensor | None:
        """Adapter `name`'s mask at this UNet spatial layer, `(batch*frames, h*w, 1)` for `hidden_states`
        (the rows of a FreeNoise split-inference chunk), from the level size the call recorded; None: it has none.
        `whole_videos`: the rows are whole videos though fewer than the forward's (the mask stream's rows cut off)."""
        gates = state.gates
        if gates is None or name not in gates.fields:
            return None
        frames = state.frames(self.layer_name)
        size = state.spatial_size(self.layer_name)
        if size is None or size[0] * size[1] != hidden_states.shape[1]:
            raise ValueError(f"{self.layer_name}: adapter_masks[{name!r}] needs this level's size, which was not "
                             f"recorded (got {size}); run the whole UNet so that the MIVA hooks record it")
        rows = hidden_states.shape[0]
        window = None if whole_videos else row_window(state, self.layer_name, rows=rows, frames=frames)
        return gates.spatial(name, frames=frames, size=size, rows=rows, window=window, like=hidden_states)

    def merged(self, name: str, part) -> bool:
        """Whether adapter `name`'s `part` (a `parts.AdapterPart`) is merged into the base weights: the one question,
        answered by the context's `fusing.FuseState` (None: nothing is fused)."""
        state = self.context.fuse_state
        return state is not None and state.merged(name, part)

    def lora_live(self, name: str) -> bool:
        """Whether adapter `name`'s module here has LoRA deltas that still run (`has_lora`, and its LoRA parts not
        `merged`): for processors that hold one kind of LoRA per module."""
        adapter = self.adapters[name]
        return getattr(adapter, "has_lora", False) and not any(
            self.merged(name, part) for part in ADAPTER_PARTS
            if part.fuse_into and any(getattr(adapter, a, None) is not None for a in part.fuse_into))

    def build_adapter(self, attn, name: str, config: MIVAAdapterConfig) -> nn.Module | None:
        """Return the module holding `config`'s part for this layer, or None when the adapter has none here."""
        raise NotImplementedError

    def add_adapter(self, attn, name: str, config: MIVAAdapterConfig) -> None:
        module = self.build_adapter(attn, name, config)
        if module is not None:
            weight = attn.to_q.weight
            self.adapters[name] = module.to(device=weight.device, dtype=weight.dtype)

    def remove_adapter(self, name: str) -> None:
        if name in self.adapters:
            del self.adapters[name]


def remove_adapter_everywhere(context: MIVAContext, name: str) -> None:
    """Remove adapter `name`'s modules from every processor sharing `context`, its config and its activation; the
    one removal primitive (`delete_miva_adapter` checks first, `loaders.adapter_state.discard_adapter` undoes a
    half-built load). No error when there is nothing to remove."""
    for processor in context.processors.values():
        processor.remove_adapter(name)
    context.configs.pop(name, None)
    context.active = [(n, w) for n, w in context.active if n != name]

"""The description of one backbone: what MIVA needs to know about a base model's network, as data.

A `Backbone` says which attention layers are self / cross / temporal attention, how their tokens are laid out,
what diffusers hands their processors, and which forward hooks record the values diffusers computes but hands to
no processor (`Recorder`: one row per hook, with why diffusers gives no other way). The MIVA processors and
`miva_call` read it from `MIVAContext.backbone`; nothing else about the network is hard-coded elsewhere.

The AnimateDiff UNet is `miva.backbones.unet.ANIMATEDIFF_UNET`. A video DiT (tokens `(batch, frames*h*w, C)`, no
temporal layers, RMS q/k norms, rotary embeddings passed to its processor) is one more `Backbone` plus the maths
that is genuinely new to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

# The values a recorder may give a call (`miva.attention_processors.context.ForwardValues.record`).
RECORDED_VALUES = ("timestep", "temb", "num_frames", "level", "grid")


@dataclass(frozen=True)
class Recorder:
    """One kind of forward hook that each call registers on the backbone while it is open (`miva_call`).

    `modules(model)` -> `[(module name, module, attention layers it serves)]`: where to hook (the layer names are
    keys of `model.attn_processors`; empty when the value is not per layer). `read(args, kwargs, output)` -> the
    value (None: nothing to record); `output` is None for a hook that runs `before` the module. `value` is one of
    `RECORDED_VALUES`; `why` says why diffusers gives no other way to learn it.
    """

    value: str
    modules: Callable[[nn.Module], list[tuple[str, nn.Module, tuple[str, ...]]]]
    read: Callable[[tuple, dict, Any], Any]
    before: bool
    why: str

    def __post_init__(self):
        if self.value not in RECORDED_VALUES:
            raise ValueError(f"Recorder.value={self.value!r} is not one of {list(RECORDED_VALUES)}")


@dataclass(frozen=True)
class Backbone:
    """What MIVA knows about one kind of base network (see the module docstring). Immutable and shared: a copy of a
    model (`copy.deepcopy`) shares its description."""

    name: str
    kind: str  # the id of its architecture in `miva.backbones.declared` (what adapters record as `backbone`)
    # Processor key (`model.attn_processors`) -> "self_attention" / "cross_attention" / "temporal_attention"
    # (`miva.attention_processors.parts`), or None for a layer MIVA leaves alone.
    layer_kind: Callable[[str], str | None]
    # Layer kind -> the token layout its processor receives, e.g. "(batch*frames, h*w, C)".
    token_layout: dict[str, str]
    # What diffusers passes each processor besides the hidden states (the DiT's rotary embeddings go here).
    processor_inputs: tuple[str, ...]
    # None, or the norm diffusers applies to queries and keys inside the attention (e.g. "rms_norm").
    qk_norm: str | None
    recorders: tuple[Recorder, ...]
    max_frames: Callable[[nn.Module], int]  # the most frames the model's frame positions cover
    temb_channels: Callable[[nn.Module], int]  # channels of the time embedding the recorders give

    def __deepcopy__(self, memo):
        return self  # functions and constants only: a copied model keeps the same description

    def hook_table(self) -> list[tuple[str, str, str]]:
        """`(value, before/after, why)` per recorder: the table that docs/architecture.md shows."""
        return [(r.value, "before" if r.before else "after", r.why) for r in self.recorders]

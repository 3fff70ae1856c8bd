"""What the MIVA processors of one UNet read: long-lived facts (`MIVAContext`) and per-call values (`CallState`).

Per-call values live in one `CallState` per call, opened by `miva_call` (the pipeline's `__call__`) and read through
`MIVAContext.call_state()`; the few values diffusers hands to no processor (frames, timestep, time embedding, level
sizes, split-inference chunks) are recorded into it by forward hooks. Nothing is attached to diffusers' modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .composition import PARALLEL_MODES  # noqa: F401  (the modes live in composition.py; kept importable here)


@dataclass
class ForwardValues:
    """What the MIVA hooks learn during each UNet forward of a call: values diffusers computes but hands to no
    processor (see `register_context_hooks`). Mutable: the hooks overwrite them on every forward."""

    num_frames: int | None = None  # frames per video, as the UNet handed it to its blocks
    timestep: torch.Tensor | None = None  # (batch,) as the UNet saw it
    temb: torch.Tensor | None = None  # (batch, temb_channels), one row per video
    spatial_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # spatial layer name -> its level (h, w)
    # FreeNoise split inference hands spatial layers chunks of the (batch*frames) rows, in order: layer name ->
    # (start, stop) of the current chunk, and the reference frames' keys/values carried from earlier chunks (by the
    # cross-frame processor, reset at each forward's first chunk). `chunk_cursor`: Transformer2DModel name ->
    # (the timestep tensor of its current forward, where its next chunk starts).
    row_windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    reference_cache: dict[str, dict] = field(default_factory=dict)
    chunk_cursor: dict[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class CallState:
    """The per-call values of one pipeline call (or training step, or bare UNet forward), in one object.

    Set for the duration of a call by `miva_call(unet, ...)` and read by the processors through
    `MIVAContext.call_state()`; nested or successive calls on one UNet each see their own. The call's own fields are
    fixed when it opens; `forward` holds what the hooks learn during each UNet forward.
    """

    adapter_weights: tuple[float, ...] | None = None  # this call's weights of the active adapters (None: theirs)
    adapter_prompts: bool = False  # encoder_hidden_states = [main prompt; one prompt per active adapter] on tokens
    attention_store: Any = None  # CA-map store with `wants(layer_name)` and `add(...)`
    forward: ForwardValues = field(default_factory=ForwardValues)

    def frames(self, explicit: int | None, layer_name: str) -> int:
        """Frames per video: `explicit` (a processor's `num_frames` argument) or the UNet's; an error when neither
        is known (never a silent 1)."""
        frames = explicit or self.forward.num_frames
        if frames is None:
            raise ValueError(f"{layer_name}: num_frames is unknown; run the whole UNet (its hooks record it), pass "
                             "cross_attention_kwargs={'num_frames': F}, or call the processor with num_frames=F")
        return frames

    def spatial_size(self, layer_name: str) -> tuple[int, int] | None:
        """`(h, w)` of the level `layer_name` ran at in the current forward (None outside a UNet forward)."""
        return self.forward.spatial_sizes.get(layer_name)


@dataclass
class MIVAContext:
    """The long-lived MIVA facts of one `UNetMotionModel` (`unet.miva_context`), shared by its processors.

    Adapter configs, which adapters are active with which weights, the composition mode, fused state and attention
    backend change only through the adapter verbs. Per-call values never live here: they are in the `CallState` on
    top of `calls` (`miva_call`), read through `call_state()`.
    """

    # Adapter bookkeeping.
    configs: dict[str, Any] = field(default_factory=dict)  # name -> MIVAAdapterConfig
    active: list[tuple[str, float]] = field(default_factory=list)  # (name, weight), in prompt-chunk order
    parallel_mode: str = "residual"
    attention_backend: str = "sdpa"  # or "xformers" (CUDA tensors; set by enable_xformers_memory_efficient_attention)
    attention_op: Any = None  # xformers' `op` argument
    enabled: bool = True
    # `unet.set_default_attn_processor()` put diffusers' processors on: keep them (adapters off) until
    # `set_miva_adapters` / `enable_miva_adapters` puts ours back.
    default_processors: bool = False
    fuse_state: Any = None  # what is merged into the base weights: a `fusing.FuseState`, None when nothing is
    # Fixed facts about the UNet.
    max_frames: int = 32
    temb_channels: int = 1280
    processors: dict[str, nn.Module] = field(default_factory=dict)  # layer name -> our processor (kept on re-install)
    hook_handles: list = field(default_factory=list)
    # Per-call state: the open calls, innermost last (`miva_call`); forwards outside any call use `idle_call`.
    calls: list[CallState] = field(default_factory=list, repr=False)
    idle_call: CallState = field(default_factory=CallState, repr=False)

    @property
    def fused(self) -> list[tuple[str, float]]:
        """`(name, weight)` of the adapters merged into the base weights (read from `fuse_state`, the one record)."""
        return [] if self.fuse_state is None else list(self.fuse_state.fused)

    def call_state(self) -> CallState:
        """The one accessor of per-call values: the innermost open call, else the state of bare forwards."""
        return self.calls[-1] if self.calls else self.idle_call

    def active_adapters(self, available: Any, weight_override: list[float] | None = None) -> list[tuple[int, str, float]]:
        """`(prompt chunk index, name, weight)` of the active adapters found in `available` (a processor's adapters).

        Fused adapters stay listed: `fuse_miva_adapters` merged their LoRA deltas into the base weights and records
        them in `fuse_state`, so the processors skip those deltas, but their unfusable parts (cross-frame branch, motion embedding,
        spatiotemporal Q, implicit prompt) still run with the fused weight.
        """
        if not self.enabled:
            return []
        if weight_override is None:
            weight_override = self.call_state().adapter_weights
        if weight_override is not None and len(weight_override) != len(self.active):
            raise ValueError(f"adapter_weights={list(weight_override)} has {len(weight_override)} entries but "
                             f"{len(self.active)} adapters are active: {[name for name, _ in self.active]}")
        if self.fused:  # the merged deltas carry the fused weights; the unfusable parts must use the same ones
            weights = weight_override if weight_override is not None else [w for _, w in self.active]
            fused_weights = dict(self.fused)
            changed = [name for (name, _), w in zip(self.active, weights)
                       if name in fused_weights and float(w) != fused_weights[name]]
            if changed or not set(fused_weights) <= {name for name, _ in self.active}:
                raise ValueError(f"adapter_weights={list(weights)} for {[name for name, _ in self.active]} changes "
                                 f"the fused adapters {self.fused}; call pipe.unfuse_adapters() first")
        chosen = []
        for index, (name, weight) in enumerate(self.active):
            if weight_override is not None:
                weight = weight_override[index]
            if name in available:
                chosen.append((index, name, float(weight)))
        return chosen


@contextmanager
def miva_call(target: Any, *, adapter_weights=None, adapter_prompts: bool = False, attention_store: Any = None,
              **forward_values: Any) -> Iterator[CallState]:
    """Open a `CallState` on `target` (a UNet with MIVA processors, its `MIVAContext`, or a processor) for the
    duration of the `with` block; the previous one is back afterwards (calls nest).

    `adapter_weights`: this call's weights of the active adapters. `forward_values` (`num_frames`, `timestep`,
    `temb`, `spatial_sizes`) pre-fill what the hooks would record, for processors run outside a UNet.
    """
    context = target if isinstance(target, MIVAContext) else getattr(target, "context", None)
    if not isinstance(context, MIVAContext):
        context = getattr(target, "miva_context", None)
    if context is None:
        raise ValueError("MIVA processors are not installed on this UNet: call install_miva_processors(unet) first")
    weights = None if adapter_weights is None else tuple(float(w) for w in adapter_weights)
    state = CallState(adapter_weights=weights, adapter_prompts=bool(adapter_prompts),
                      attention_store=attention_store, forward=ForwardValues(**forward_values))
    context.calls.append(state)
    try:
        yield state
    finally:
        context.calls.pop()


# Hooks: only for values diffusers computes but passes to no processor. Each writes into the current call's
# `forward` values (`MIVAContext.call_state()`), never onto a module.
def _timestep_hook(context: MIVAContext):
    """On `unet.time_proj`: the UNet passes the timestep to no processor (the cross-frame 'linear' weight and split
    inference need it)."""

    def hook(module, args):
        context.call_state().forward.timestep = args[0]  # (batch,): made a tensor and expanded before `time_proj`

    return hook


def _num_frames_hook(context: MIVAContext):
    """On each down/mid/up block: the UNet hands `num_frames` to its blocks but not to spatial processors (and under
    FreeNoise it is the window's frame count, which the pipeline does not know)."""

    def hook(module, args, kwargs):
        num_frames = kwargs.get("num_frames")
        if num_frames is not None:
            context.call_state().forward.num_frames = num_frames

    return hook


def _temb_hook(context: MIVAContext):
    """On `unet.time_embedding`: transformer blocks pass no `temb` to attention (the 'adaptive' weight needs it)."""

    def hook(module, args, output):
        context.call_state().forward.temb = output

    return hook


def _spatial_size_hook(name: str, layer_names: list[str], context: MIVAContext):
    """On each spatial `Transformer2DModel` (`name`): its input `(batch*frames, C, h, w)` is the only place the level
    size `(h, w)` is visible (processors get flattened tokens), and under FreeNoise split inference the only place
    that sees which rows a chunk holds. A hook here (not on the UNet) also stays right under gradient checkpointing,
    which re-runs single transformer blocks."""

    def hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        values = context.call_state().forward
        size = tuple(hidden_states.shape[-2:])  # (batch*frames, channels, h, w) -> (h, w)
        for layer in layer_names:
            values.spatial_sizes[layer] = size
        rows, timestep = hidden_states.shape[0], values.timestep
        if timestep is None or values.num_frames is None or rows == timestep.shape[0] * values.num_frames:
            return  # the whole batch at once (no split inference)
        cursor = values.chunk_cursor.get(name)
        start = 0 if cursor is None or cursor[0] is not timestep else cursor[1]  # a new forward starts at row 0
        values.chunk_cursor[name] = (timestep, start + rows)
        for layer in layer_names:
            values.row_windows[layer] = (start, start + rows)

    return hook


def register_context_hooks(unet: nn.Module, context: MIVAContext) -> None:
    """Attach the hooks that feed the current call's `forward` values (once per UNet)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    if context.hook_handles:
        return
    # No hook on the UNet itself: torch.compile does not inline the hooks of the module it compiles, so one there
    # would split a compiled UNet into two graphs. The UNet hands `num_frames` to every block by keyword and makes
    # the timestep a `(batch,)` tensor before `time_proj`; hooks there see the same values from inside the graph.
    handles = [unet.time_proj.register_forward_pre_hook(_timestep_hook(context))]
    handles.append(unet.time_embedding.register_forward_hook(_temb_hook(context)))
    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    for block in blocks:
        handles.append(block.register_forward_pre_hook(_num_frames_hook(context), with_kwargs=True))
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            layers = [f"{name}.{sub}.processor" for sub, m in module.named_modules() if isinstance(m, Attention)]
            hook = _spatial_size_hook(name, layers, context)
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    context.hook_handles = handles


def remove_context_hooks(context: MIVAContext) -> None:
    for handle in context.hook_handles:
        handle.remove()
    context.hook_handles = []

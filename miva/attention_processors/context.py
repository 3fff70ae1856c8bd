"""What the MIVA processors of one model read: long-lived facts (`MIVAContext`) and per-call values (`CallState`).

Per-call values live in one `CallState` per call, opened by `miva_call` (the pipeline's `__call__`, a training step)
and read through `MIVAContext.call_state()`, the one route into the processors. What the caller knows (adapter
weights, prompt layout, CA-map store, frame count) is fixed when the call opens; the few values diffusers computes
but hands to no processor (frames per forward, timestep, time embedding, level sizes, split-inference chunks) are
recorded into the call's `forward` values by hooks that exist only while a call is open: `miva_call` registers the
backbone's recorders (`miva.backbones`, one table with why each exists) and removes them when the call closes. A
forward run outside any call (`unet(...)`, a stock pipeline sharing the UNet) opens its own call through two
hooks on the model itself (`install_call_hooks`); its state stays readable until the next forward, for its backward. Nothing else is attached to diffusers' modules, so a deep copy
of a model carries its context and hooks with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .composition import PARALLEL_MODES, check_not_fused  # noqa: F401  (PARALLEL_MODES: kept importable here)
from .gates import CallGates
from .split_inference import SplitInference


@dataclass
class ForwardValues:
    """What the call's recorders learn during each forward: values diffusers computes but hands to no processor.
    Written only by the hooks the call registered (`ForwardValues.record`), overwritten on every forward."""

    num_frames: int | None = None  # frames per video, as the UNet handed it to its blocks
    timestep: torch.Tensor | None = None  # (batch,) as the UNet saw it
    temb: torch.Tensor | None = None  # (batch, temb_channels), one row per video
    spatial_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # spatial layer name -> its level (h, w)
    grid: tuple[int, int, int] | None = None  # a DiT's token grid (frames, h, w) after patchify (sets num_frames)
    split: SplitInference = field(default_factory=SplitInference)  # FreeNoise split inference's chunks

    def record(self, value: str, data: Any, block: str, layers: tuple[str, ...]) -> None:
        """Store what recorder `value` (`miva.backbones.base.RECORDED_VALUES`) read at module `block`."""
        if value == "timestep":  # the first thing each UNet forward computes: a new forward starts
            self.timestep = data
            self.split.new_forward()
        elif value == "temb":
            self.temb = data
        elif value == "num_frames":
            self.num_frames = data
        elif value == "grid":  # a DiT's (frames, h, w) token grid: its frames are the frame count
            self.grid = data
            self.num_frames = data[0]
        else:  # "level": (rows, (h, w)) of a spatial transformer's input
            rows, size = data
            for layer in layers:
                self.spatial_sizes[layer] = size
            known = self.timestep is not None and self.num_frames is not None
            self.split.record(block, layers, rows, self.timestep.shape[0] * self.num_frames if known else None)


@dataclass(frozen=True)
class CallState:
    """The per-call values of one pipeline call (or training step, or bare model forward), in one object.

    Opened for the duration of a call by `miva_call(model, ...)` and read by the processors through
    `MIVAContext.call_state()`; nested or successive calls on one model each see their own. The fields given to
    `miva_call` are fixed for the call; `forward` is the one mutable part, written only by the recorders this call
    registered (or pre-filled for a processor run outside a model).
    """

    adapter_weights: tuple[float, ...] | None = None  # this call's weights of the active adapters (None: theirs)
    adapter_prompts: bool = False  # encoder_hidden_states = [main prompt; one prompt per active adapter] on tokens
    attention_store: Any = None  # CA-map store with `wants(layer_name)` and `add(...)`
    num_frames: int | None = None  # frames per video, as the caller knows them (a forward's own count comes first)
    bare: bool = False  # opened by the model itself for a forward run outside any call
    gates: Any = None  # the per-adapter masks and schedules (`gates.CallGates`; None: every adapter acts everywhere)
    mask_guidance: Any = None  # the mask branch's `mask_guidance.MaskGuidance` (docs/mask_branch.md), or None
    forward: ForwardValues = field(default_factory=ForwardValues)

    def frames(self, layer_name: str) -> int:
        """Frames per video: the current forward's (recorded), else the call's; an error when neither is known
        (never a silent 1)."""
        frames = self.forward.num_frames or self.num_frames
        if frames is None:
            raise ValueError(f"{layer_name}: num_frames is unknown; run the whole UNet (its hooks record it) or open "
                             "the call with miva_call(..., num_frames=F)")
        return frames

    def spatial_size(self, layer_name: str) -> tuple[int, int] | None:
        """`(h, w)` of the level `layer_name` ran at in the current forward (None outside a UNet forward)."""
        return self.forward.spatial_sizes.get(layer_name)


@dataclass
class MIVAContext:
    """The long-lived MIVA facts of one model (`unet.miva_context`), shared by its processors.

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
    # Fixed facts about the model.
    max_frames: int = 32
    temb_channels: int = 1280
    backbone: Any = None  # its `miva.backbones.base.Backbone` description (None: a stand-alone processor's context)
    processors: dict[str, nn.Module] = field(default_factory=dict)  # layer name -> our processor (kept on re-install)
    # Per-call state: the open calls, innermost last (`miva_call`), and the hooks that record into them (registered
    # by the outermost call on the model, removed when it closes; empty outside a call).
    calls: list[CallState] = field(default_factory=list, repr=False)
    recording: bool = False  # whether the recorders are registered (their handles stay with the call that did it)
    bare_calls: list = field(default_factory=list, repr=False)  # the calls opened by bare forwards (`_open_bare_call`)
    # The last bare forward's state, read outside any call until the next forward: its backward belongs to it too
    # (gradient checkpointing re-runs blocks in backward, and diffusers gives no hook at the end of a backward).
    last_bare: CallState | None = field(default=None, repr=False)
    call_hook_handles: list = field(default_factory=list, repr=False)  # those two hooks on the model

    def __deepcopy__(self, memo):
        """A copy (of the model, `copy.deepcopy`) starts with no call open, even when made during one."""
        copied = MIVAContext.__new__(MIVAContext)
        memo[id(self)] = copied
        for name, value in vars(self).items():
            if name in _PER_CALL_FIELDS:
                value = _PER_CALL_FIELDS[name]()
            else:
                value = copy.deepcopy(value, memo)
            setattr(copied, name, value)
        return copied

    @property
    def fused(self) -> list[tuple[str, float]]:
        """`(name, weight)` of the adapters merged into the base weights (read from `fuse_state`, the one record)."""
        return [] if self.fuse_state is None else list(self.fuse_state.fused)

    def call_state(self) -> CallState:
        """The one accessor of per-call values: the innermost open call; outside any call, the last bare forward's
        (for its backward), else empty values."""
        if self.calls:
            return self.calls[-1]
        return self.last_bare if self.last_bare is not None else CallState()

    def active_adapters(self, available: Any) -> list[tuple[int, str, float]]:
        """`(prompt chunk index, name, weight)` of the active adapters found in `available` (a processor's adapters),
        with the current call's `adapter_weights` when it gives them.

        Fused adapters stay listed: `fuse_miva_adapters` merged their LoRA deltas into the base weights and records
        them in `fuse_state`, so the processors skip those deltas, but their unfusable parts (cross-frame branch, motion embedding,
        spatiotemporal Q, implicit prompt) still run with the fused weight.
        """
        if not self.enabled:
            return []
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
        gates = self.call_state().gates
        chosen = []
        for index, (name, weight) in enumerate(self.active):
            if weight_override is not None:
                weight = weight_override[index]
            if gates is not None and name in gates.names:  # a gate's constant part folds into the weight
                scale = gates.scale(name)
                if scale == 0.0:
                    continue  # gated off: exactly as if the adapter were not active
                weight = float(weight) * scale
            if name in available:
                chosen.append((index, name, float(weight)))
        return chosen


_PER_CALL_FIELDS = {"calls": list, "recording": bool, "bare_calls": list, "last_bare": lambda: None}


@contextmanager
def miva_call(target: Any, *, adapter_weights=None, adapter_prompts: bool = False, attention_store: Any = None,
              num_frames: int | None = None, adapter_masks=None, adapter_schedules=None, num_steps: int | None = None,
              mask_guidance: Any = None, _bare: bool = False, **forward_values: Any) -> Iterator[CallState]:
    """Open a `CallState` on `target` (a model with MIVA processors, its `MIVAContext`, or a processor) for the
    duration of the `with` block; the previous one is back afterwards (calls nest).

    On a model, the outermost call registers the backbone's recorders (the hooks that fill the call's `forward`
    values) and removes them when it closes. `adapter_weights`: this call's weights of the active adapters;
    `num_frames`: frames per video (a forward's recorded count comes first). `adapter_masks` / `adapter_schedules`
    (docs/regions.md): per-adapter gates, checked here (`gates.CallGates`); `num_steps`: the denoising steps a step
    schedule covers; `mask_guidance`: the mask branch's per-call values (docs/mask_branch.md). `forward_values`
    (`timestep`, `temb`, `spatial_sizes`, `grid`) pre-fill what the recorders would record, for processors run
    outside a model.
    """
    model = getattr(target, "_orig_mod", target)  # a torch.compile'd model: hooks go on the module it wraps
    context = model if isinstance(model, MIVAContext) else getattr(model, "context", None)
    if not isinstance(context, MIVAContext):
        context = getattr(model, "miva_context", None)
    if context is None:
        raise ValueError("MIVA processors are not installed on this UNet: call install_miva_processors(unet) first")
    weights = None if adapter_weights is None else tuple(float(w) for w in adapter_weights)
    gates = None
    if adapter_masks is not None or adapter_schedules is not None:
        gates = CallGates(adapter_masks, adapter_schedules, active=[name for name, _ in context.active],
                          num_frames=num_frames, num_steps=num_steps)
        check_not_fused(context, f"adapter_masks / adapter_schedules for {sorted(gates.names)}", list(gates.names))
    state = CallState(adapter_weights=weights, adapter_prompts=bool(adapter_prompts), attention_store=attention_store,
                      num_frames=num_frames, bare=_bare, gates=gates, mask_guidance=mask_guidance,
                      forward=ForwardValues(**forward_values))
    owner = getattr(model, "miva_context", None) is context  # the model itself (not a processor or the context)
    record = owner and context.backbone is not None and not context.recording
    context.calls.append(state)
    handles = []
    try:
        if record:
            handles = register_recorders(model, context)
            context.recording = True
        yield state
    finally:
        context.calls.pop()
        for handle in handles:
            handle.remove()
        if record:
            context.recording = False


def _recorder_hook(context: MIVAContext, value: str, read, block: str, layers: tuple[str, ...], before: bool):
    """One recorder's hook: read the value and store it in the current call's `forward` values."""
    if before:
        def hook(module, args, kwargs):
            data = read(args, kwargs, None)
            if data is not None:
                context.call_state().forward.record(value, data, block, layers)
    else:
        def hook(module, args, kwargs, output):
            data = read(args, kwargs, output)
            if data is not None:
                context.call_state().forward.record(value, data, block, layers)
    return hook


def register_recorders(model: nn.Module, context: MIVAContext) -> list:
    """Register every recorder of `context.backbone` on `model`; returns the handles (`miva_call` removes them)."""
    handles = []
    for recorder in context.backbone.recorders:
        for block, module, layers in recorder.modules(model):
            hook = _recorder_hook(context, recorder.value, recorder.read, block, layers, recorder.before)
            register = module.register_forward_pre_hook if recorder.before else module.register_forward_hook
            handles.append(register(hook, with_kwargs=True))
    return handles


# A forward outside any call opens its own, so that it is recorded too. These two hooks sit on the model itself and are
# pure Python (no tensors); `torch.compiler.disable` keeps dynamo from tracing into them (it would count two graph
# breaks around a compiled model's forward, tests/test_bench_compile.py). They find the context through the module
# they are called with, so a deep copy of the model opens calls on its own context.
@torch.compiler.disable
def _open_bare_call(model: nn.Module, args, kwargs) -> None:
    context = getattr(model, "miva_context", None)
    if context is None or context.recording:
        return  # a call is open and recording (or MIVA was removed)
    call = miva_call(model, _bare=True)
    context.last_bare = call.__enter__()
    context.bare_calls.append(call)


@torch.compiler.disable
def _close_bare_call(model: nn.Module, args, kwargs, output) -> None:
    context = getattr(model, "miva_context", None)
    if context is not None and context.bare_calls:
        context.bare_calls.pop().__exit__(None, None, None)


def install_call_hooks(model: nn.Module, context: MIVAContext) -> None:
    """The two hooks that open a call for a forward run outside any (once per model)."""
    if context.call_hook_handles:
        return
    context.call_hook_handles = [
        model.register_forward_pre_hook(_open_bare_call, with_kwargs=True),
        model.register_forward_hook(_close_bare_call, with_kwargs=True, always_call=True),
    ]


def remove_call_hooks(context: MIVAContext) -> None:
    for handle in context.call_hook_handles:
        handle.remove()
    context.call_hook_handles = []

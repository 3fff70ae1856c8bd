"""The state the MIVA processors of one UNet share, kept up to date by forward hooks (never by globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .composition import PARALLEL_MODES  # noqa: F401  (the modes live in composition.py; kept importable here)


@dataclass
class MIVAContext:
    """Shared by the processors of one `UNetMotionModel` (`unet.miva_context`).

    Per-call values (`num_frames`, `timestep`, `temb`) come from hooks on every UNet forward; the level size `(h, w)`
    is written by a pre-hook on each spatial `Transformer2DModel` onto its own attention modules (so it stays right
    under gradient checkpointing, which re-runs single transformer blocks). The pipeline and the loaders set the
    rest.
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
    fused: list[tuple[str, float]] = field(default_factory=list)  # (name, weight) merged into base weights
    fuse_state: Any = None  # backups and flags of `fuse_miva_adapters`, consumed by `unfuse_miva_adapters`
    # Per-call values written by hooks.
    num_frames: int | None = None
    timestep: torch.Tensor | None = None  # (batch,) as the UNet saw it
    temb: torch.Tensor | None = None  # (batch, temb_channels), one row per video
    # Set by the pipeline for one call.
    adapter_prompts: bool = False  # encoder_hidden_states = [main prompt; one prompt per active adapter] on tokens
    attention_store: Any = None  # CA-map store with `wants(layer_name)` and `add(...)`
    # FreeNoise split inference hands spatial layers chunks of the (batch*frames) rows, in order: layer name ->
    # (start, stop) of the current chunk (written by the Transformer2DModel pre-hook), and the reference frames'
    # keys/values carried from earlier chunks (by the cross-frame processor, reset at each forward's first chunk).
    row_windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    reference_cache: dict[str, dict] = field(default_factory=dict)
    # Fixed facts about the UNet.
    max_frames: int = 32
    temb_channels: int = 1280
    processors: dict[str, nn.Module] = field(default_factory=dict)  # layer name -> our processor (kept on re-install)
    hook_handles: list = field(default_factory=list)

    def active_adapters(self, available: Any, weight_override: list[float] | None = None) -> list[tuple[int, str, float]]:
        """`(prompt chunk index, name, weight)` of the active adapters found in `available` (a processor's adapters).

        Fused adapters stay listed: `fuse_miva_adapters` merged their LoRA deltas into the base weights and marks
        them so the processors skip those deltas, but their unfusable parts (cross-frame branch, motion embedding,
        spatiotemporal Q, implicit prompt) still run with the fused weight.
        """
        if not self.enabled:
            return []
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


def _timestep_hook(context: MIVAContext):
    def hook(module, args):
        context.timestep = args[0]  # (batch,): the UNet made it a tensor and expanded it before `time_proj`

    return hook


def _num_frames_hook(context: MIVAContext):
    def hook(module, args, kwargs):
        num_frames = kwargs.get("num_frames")
        if num_frames is not None:
            context.num_frames = num_frames

    return hook


def _temb_hook(context: MIVAContext):
    def hook(module, args, output):
        context.temb = output

    return hook


def _spatial_size_hook(attention_modules: list[nn.Module], context: MIVAContext):
    chunks = {"timestep": None, "next": 0}  # where the next chunk of this layer starts, within one UNet forward

    def hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        size = tuple(hidden_states.shape[-2:])  # (batch*frames, channels, h, w) -> (h, w)
        for attn in attention_modules:
            attn.miva_spatial_size = size
        rows, timestep = hidden_states.shape[0], context.timestep
        if timestep is None or context.num_frames is None or rows == timestep.shape[0] * context.num_frames:
            return  # the whole batch at once (no split inference)
        if chunks["timestep"] is not timestep:  # a new UNet forward: its chunks start at row 0
            chunks["timestep"], chunks["next"] = timestep, 0
        start = chunks["next"]
        chunks["next"] = start + rows
        for attn in attention_modules:
            name = getattr(attn.processor, "layer_name", None)
            if name is not None:
                context.row_windows[name] = (start, start + rows)

    return hook


def register_context_hooks(unet: nn.Module, context: MIVAContext) -> None:
    """Attach the hooks that feed `context` (once per UNet)."""
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
    for module in unet.modules():
        if isinstance(module, Transformer2DModel):
            attention_modules = [m for m in module.modules() if isinstance(m, Attention)]
            hook = _spatial_size_hook(attention_modules, context)
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    context.hook_handles = handles


def remove_context_hooks(context: MIVAContext) -> None:
    for handle in context.hook_handles:
        handle.remove()
    context.hook_handles = []

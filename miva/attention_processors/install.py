"""Putting the MIVA processors on a `UNetMotionModel` and managing its adapters by name."""

from __future__ import annotations

import re
import types

from torch import nn

from ..guards import check_float
from .adapter_config import MIVAAdapterConfig
from .attention_utils import check_attention_backend, check_supported_attention
from .base import MIVAProcessorBase, remove_adapter_everywhere
from .composition import check_not_fused, check_parallel_mode
from .context import MIVAContext, register_context_hooks
from .cross_attention import MIVACrossAttnProcessor
from .parts import check_same_query_layout
from .self_attention import MIVASelfAttnProcessor
from .temporal_attention import MIVATemporalAttnProcessor

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def processor_kind(layer_name: str) -> type[MIVAProcessorBase] | None:
    """Which MIVA processor serves the layer `layer_name` (a key of `unet.attn_processors`).

    Motion modules' attn1 *and* attn2 are temporal self-attention; spatial attn1 is self-attention, spatial attn2
    cross-attention. Anything else (none in SD1.5) keeps its processor.
    """
    if ".motion_modules." in layer_name or layer_name.startswith("motion_modules."):
        return MIVATemporalAttnProcessor
    if layer_name.endswith("attn1.processor"):
        return MIVASelfAttnProcessor
    if layer_name.endswith("attn2.processor"):
        return MIVACrossAttnProcessor
    return None


def _attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """`unet.attn_processors` key -> the `Attention` module it belongs to."""
    return {f"{name}.processor": module for name, module in unet.named_modules() if hasattr(module, "set_processor")}


def get_miva_context(unet: nn.Module) -> MIVAContext:
    context = getattr(unet, "miva_context", None)
    if context is None:
        raise ValueError("MIVA processors are not installed on this UNet: call install_miva_processors(unet) first")
    return context


def install_miva_processors(unet: nn.Module, parallel_mode: str | None = None,
                            attention_backend: str | None = None) -> MIVAContext:
    """Put `MIVASelfAttnProcessor`, `MIVACrossAttnProcessor` and `MIVATemporalAttnProcessor` on every matching
    layer of `unet` and return the shared `MIVAContext` (`unet.miva_context`).

    Called once per UNet (`MIVAPipeline.__init__`, or the first adapter on a bare UNet); after diffusers replaced
    processors, `miva.pipelines.processor_swaps.restore_miva_processors` calls it again. Idempotent, and safe
    after diffusers calls that replaced processors (`fuse_qkv_projections`, `load_ip_adapter`, xformers, ...): the
    processors created the first time, with their adapters, are put back. An IP-Adapter
    processor found on a cross-attention layer is kept inside ours. `attention_backend` ("sdpa" or "xformers"),
    when given, is passed to `set_miva_attention_backend`.
    """
    context = getattr(unet, "miva_context", None)
    if context is None:
        config = getattr(unet, "config", {})
        context = MIVAContext(
            max_frames=int(getattr(config, "motion_max_seq_length", None) or 32),
            temb_channels=unet.time_embedding.linear_2.out_features,
        )
        unet.miva_context = context
        # diffusers' UNetMotionModel.set_default_attn_processor refuses processors outside its own list; this UNet
        # answers with `processor_swaps.set_default_attn_processor`. An instance attribute, removed again by
        # `remove_miva_processors`.
        unet.set_default_attn_processor = types.MethodType(set_default_attn_processor, unet)
    if parallel_mode is not None:
        set_parallel_mode(unet, parallel_mode)
    if attention_backend is not None:
        set_miva_attention_backend(unet, attention_backend)
    if context.default_processors:
        register_context_hooks(unet, context)
        return context
    modules = _attention_modules(unet)
    current = unet.attn_processors
    ours = {}
    for name, processor in current.items():
        kind = processor_kind(name)
        if kind is None:
            continue
        if not isinstance(processor, MIVAProcessorBase):
            check_supported_attention(modules[name], name)
        new = context.processors.get(name)
        if new is None:
            new = processor if isinstance(processor, kind) else kind(context, layer_name=name)
            if new is not processor:  # adapters registered before this layer existed
                for adapter_name, adapter_config in context.configs.items():
                    new.add_adapter(modules[name], adapter_name, adapter_config)
        if kind is MIVACrossAttnProcessor and hasattr(processor, "to_k_ip"):
            new.ip_adapter = processor
        context.processors[name] = new
        ours[name] = new
    if any(current[name] is not proc for name, proc in ours.items()):
        unet.set_attn_processor({**current, **ours})  # diffusers wants every layer; it empties the dict it gets
    register_context_hooks(unet, context)
    return context


def enable_miva_adapters(unet: nn.Module) -> None:
    """Run the active adapters again (after `disable`, or after `set_default_attn_processor`)."""
    context = get_miva_context(unet)
    context.enabled = True
    if context.default_processors:
        context.default_processors = False
        restore_miva_processors(unet)


def restore_miva_processors(unet: nn.Module) -> MIVAContext:
    """Put the UNet's own MIVA processors (with their adapters) back on every layer where diffusers replaced them;
    a no-op when they are all there (`install_miva_processors` is idempotent). Returns `unet.miva_context`."""
    return install_miva_processors(unet)


def set_default_attn_processor(unet: nn.Module) -> None:
    """`unet.set_default_attn_processor()` on a MIVA UNet: diffusers' `AttnProcessor` on every layer, as on a stock
    UNet, and the MIVA adapters inactive (kept, weights and all) until `set_miva_adapters` or
    `enable_miva_adapters` (`pipe.set_adapters` / `pipe.enable_adapters`) put the MIVA processors back."""
    from diffusers.models.attention_processor import AttnProcessor

    context = get_miva_context(unet)
    context.enabled = False
    context.default_processors = True
    unet.set_attn_processor(AttnProcessor())


def add_miva_adapter(unet: nn.Module, name: str, config: MIVAAdapterConfig) -> None:
    """Create adapter `name`'s modules in every processor (zero-initialised: a no-op until trained or loaded).

    The adapter is not activated; use `set_miva_adapters`.
    """
    if not isinstance(config, MIVAAdapterConfig):
        raise TypeError(f"config must be a MIVAAdapterConfig, got {type(config).__name__}")
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
        raise ValueError(f"adapter name {name!r} must be a non-empty string of letters, digits, '_' or '-'")
    context = getattr(unet, "miva_context", None) or install_miva_processors(unet)
    if name in context.configs:
        raise ValueError(f"an adapter named {name!r} already exists; loaded adapters: {list(context.configs)}")
    modules = _attention_modules(unet)
    for layer_name, processor in context.processors.items():
        processor.add_adapter(modules[layer_name], name, config)
    context.configs[name] = config


def delete_miva_adapter(unet: nn.Module, name: str) -> None:
    """Remove adapter `name`'s modules everywhere (and from the active set)."""
    context = get_miva_context(unet)
    if name not in context.configs:
        raise ValueError(f"no adapter named {name!r}; loaded adapters: {list(context.configs)}")
    check_not_fused(context, "delete_adapters", [name])
    remove_adapter_everywhere(context, name)


def set_miva_adapters(unet: nn.Module, names: str | list[str], weights: float | list[float] | None = None,
                      parallel_mode: str | None = None) -> None:
    """Choose the active adapters, in order (the order of per-adapter prompts), and their weights (default 1).

    A weight may be 0; adapters not named are inactive and cost nothing.
    """
    context = get_miva_context(unet)
    if not isinstance(names, str) and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    ):
        raise TypeError(f"adapter_names={names!r:.80} must be an adapter name or a list of adapter names")
    names = [names] if isinstance(names, str) else list(names)
    if weights is None:
        weights = [1.0] * len(names)
    elif isinstance(weights, str) or not hasattr(weights, "__len__") or getattr(weights, "ndim", 1) == 0:
        weights = [check_float("weights", weights)] * len(names)  # one number for every adapter
    weights = [check_float(f"weights[{i}]", w) for i, w in enumerate(weights)]  # NaN / inf would poison every frame
    if len(weights) != len(names):
        raise ValueError(f"adapter_weights has {len(weights)} entries but {len(names)} adapters were named: {names}")
    unknown = [n for n in names if n not in context.configs]
    if unknown:
        raise ValueError(f"unknown adapter {unknown[0]!r}; loaded adapters: {list(context.configs)}")
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names must be distinct, got {names}")
    check_same_query_layout({n: context.configs[n].spatiotemporal_key for n in names
                             if context.configs[n].has_cross_attention_part})
    check_not_fused(context, "set_adapters")
    if parallel_mode is not None:
        set_parallel_mode(unet, parallel_mode)
    context.active = list(zip(names, weights))
    if context.default_processors:  # after set_default_attn_processor: choosing adapters turns them back on
        enable_miva_adapters(unet)


def set_parallel_mode(unet: nn.Module, parallel_mode: str) -> None:
    check_parallel_mode(parallel_mode)
    context = get_miva_context(unet)
    if parallel_mode != context.parallel_mode:
        check_not_fused(context, f"parallel_mode={parallel_mode!r}")
    context.parallel_mode = parallel_mode


def set_miva_attention_backend(unet: nn.Module, backend: str, attention_op=None) -> None:
    """Run the MIVA processors' attention on `backend`: "sdpa" (PyTorch, default) or "xformers"
    (`xformers.ops.memory_efficient_attention` with `attention_op`, used for CUDA tensors; PyTorch SDPA elsewhere).
    `MIVAPipeline.enable_xformers_memory_efficient_attention()` sets it after checking the device."""
    context = get_miva_context(unet)
    context.attention_backend = check_attention_backend(backend)
    context.attention_op = attention_op if backend == "xformers" else None


def get_miva_adapter_modules(unet: nn.Module, name: str) -> dict[str, nn.Module]:
    """`layer name -> adapter module` for adapter `name` (layers where it has a part)."""
    context = get_miva_context(unet)
    return {layer: proc.adapters[name] for layer, proc in context.processors.items() if name in proc.adapters}

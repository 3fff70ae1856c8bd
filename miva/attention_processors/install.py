"""Putting the MIVA processors on a model, putting them back, taking them off, and managing adapters by name.

Install (`install_miva_processors`), restore (`restore_miva_processors`, `set_default_attn_processor`'s answer)
and remove (`uninstall_miva_processors`) live here, in one module. Which layers get which processor, and which
hooks a call registers, come from the model's `miva.backbones` description.
"""

from __future__ import annotations

import contextlib
import re
import types
from collections.abc import Iterator

from torch import nn

from ..backbones.unet import ANIMATEDIFF_UNET
from ..guards import check_float
from .adapter_config import MIVAAdapterConfig
from .attention_utils import check_attention_backend, check_supported_attention
from .base import MIVAProcessorBase, remove_adapter_everywhere
from .composition import check_not_fused, check_parallel_mode
from .context import MIVAContext, install_call_hooks, remove_call_hooks
from .cross_attention import MIVACrossAttnProcessor
from .parts import CROSS, SELF, TEMPORAL, check_same_query_layout
from .self_attention import MIVASelfAttnProcessor
from .temporal_attention import MIVATemporalAttnProcessor

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
PROCESSOR_CLASSES = {SELF: MIVASelfAttnProcessor, CROSS: MIVACrossAttnProcessor, TEMPORAL: MIVATemporalAttnProcessor}


def processor_kind(layer_name: str, backbone=ANIMATEDIFF_UNET) -> type[MIVAProcessorBase] | None:
    """Which MIVA processor serves the layer `layer_name` (a key of `unet.attn_processors`), as `backbone` says
    (`Backbone.layer_kind`); None for a layer that keeps its processor."""
    kind = backbone.layer_kind(layer_name)
    return None if kind is None else PROCESSOR_CLASSES[kind]


def _attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """`unet.attn_processors` key -> the `Attention` module it belongs to."""
    return {f"{name}.processor": module for name, module in unet.named_modules() if hasattr(module, "set_processor")}


def get_miva_context(unet: nn.Module) -> MIVAContext:
    context = getattr(unet, "miva_context", None)
    if context is None:
        raise ValueError("MIVA processors are not installed on this UNet: call install_miva_processors(unet) first")
    return context


def install_miva_processors(unet: nn.Module, parallel_mode: str | None = None,
                            attention_backend: str | None = None, backbone=None) -> MIVAContext:
    """Put `MIVASelfAttnProcessor`, `MIVACrossAttnProcessor` and `MIVATemporalAttnProcessor` on every matching
    layer of `unet` and return the shared `MIVAContext` (`unet.miva_context`).

    Called once per UNet (`MIVAPipeline.__init__`, or the first adapter on a bare UNet); after diffusers replaced
    processors, `miva.pipelines.processor_swaps.restore_miva_processors` calls it again. Idempotent, and safe
    after diffusers calls that replaced processors (`fuse_qkv_projections`, `load_ip_adapter`, xformers, ...): the
    processors created the first time, with their adapters, are put back. An IP-Adapter
    processor found on a cross-attention layer is kept inside ours. `attention_backend` ("sdpa" or "xformers"),
    when given, is passed to `set_miva_attention_backend`. `backbone`: the model's `miva.backbones` description
    (default: the AnimateDiff UNet), read on the first install.
    """
    context = getattr(unet, "miva_context", None)
    if context is None:
        backbone = ANIMATEDIFF_UNET if backbone is None else backbone
        context = MIVAContext(max_frames=backbone.max_frames(unet), temb_channels=backbone.temb_channels(unet),
                              backbone=backbone)
        unet.miva_context = context
        # diffusers' UNetMotionModel.set_default_attn_processor refuses processors outside its own list; this UNet
        # answers with `processor_swaps.set_default_attn_processor`. An instance attribute, removed again by
        # `uninstall_miva_processors`.
        unet.set_default_attn_processor = types.MethodType(set_default_attn_processor, unet)
    if parallel_mode is not None:
        set_parallel_mode(unet, parallel_mode)
    if attention_backend is not None:
        set_miva_attention_backend(unet, attention_backend)
    install_call_hooks(unet, context)
    if context.default_processors:
        return context
    modules = _attention_modules(unet)
    current = unet.attn_processors
    ours = {}
    for name, processor in current.items():
        kind = processor_kind(name, context.backbone)
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
    return context


def uninstall_miva_processors(unet: nn.Module) -> None:
    """Make `unet` stock again: drop every MIVA adapter, put diffusers' `AttnProcessor2_0` (or the IP-Adapter
    processor we wrapped) back on our layers, remove the call hooks and `unet.miva_context`. Fused adapters must be
    unfused first (`unfuse_miva_adapters`; `pipe.unload_adapters()` does both)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    context = getattr(unet, "miva_context", None)
    if context is None:
        return
    check_not_fused(context, "unload_adapters")
    for name in list(context.configs):
        remove_adapter_everywhere(context, name)
    current = unet.attn_processors
    stock = {}
    for name, processor in current.items():
        if isinstance(processor, MIVAProcessorBase):
            ip_adapter = getattr(processor, "ip_adapter", None)
            stock[name] = ip_adapter if ip_adapter is not None else AttnProcessor2_0()
    if stock:
        unet.set_attn_processor({**current, **stock})
    remove_call_hooks(context)
    del unet.miva_context
    if "set_default_attn_processor" in vars(unet):  # our instance-level answer (install_miva_processors)
        del unet.set_default_attn_processor


def enable_miva_adapters(unet: nn.Module) -> None:
    """Run the active adapters again (after `disable`, or after `set_default_attn_processor`)."""
    context = get_miva_context(unet)
    context.enabled = True
    if context.default_processors:
        context.default_processors = False
        restore_miva_processors(unet)


def disable_miva_adapters(unet: nn.Module) -> None:
    """Run no adapter (they stay loaded, with their weights) until `enable_miva_adapters`."""
    get_miva_context(unet).enabled = False


@contextlib.contextmanager
def kept_adapter_settings(unet: nn.Module) -> Iterator[None]:
    """Put back which adapters are active, their weights, whether they are enabled and the composition mode when
    the block ends (validation during training runs a pipeline on the UNet being trained)."""
    context = get_miva_context(unet)
    saved = (list(context.active), context.enabled, context.parallel_mode)
    try:
        yield
    finally:
        context.active, context.enabled, context.parallel_mode = saved


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

"""Putting MIVA on a `WanTransformer3DModel`: processors on every block's `attn1` / `attn2`, the branch-running
block class; the values Wan hands to no processor are recorded by each call from the description in
`backbone.py`.

The adapter verbs of `miva.attention_processors` then work unchanged on the transformer (`add_miva_adapter`,
`set_miva_adapters`, `delete_miva_adapter`, `get_miva_adapter_modules`, `miva_call`), and so does the one state-dict
format of `miva.loaders.adapter_state` (keys `blocks.<i>.attn1.<part>` / `blocks.<i>.attn2.<part>`).
"""

from __future__ import annotations

from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

from ...attention_processors.context import MIVAContext, install_call_hooks
from ...attention_processors.install import add_miva_adapter
from ...attention_processors.parts import CROSS, SELF
from .backbone import wan_backbone
from .config import WanAdapterConfig, check_backbone
from .processors import MIVAWanCrossAttnProcessor, MIVAWanSelfAttnProcessor, MIVAWanTransformerBlock

__all__ = ["add_wan_adapter", "install_miva_wan", "is_wan_transformer"]


def is_wan_transformer(model: nn.Module) -> bool:
    from diffusers import WanTransformer3DModel

    return isinstance(model, WanTransformer3DModel)


def _register_block_class() -> None:
    """diffusers' caches (`enable_cache`: FirstBlockCache, ...) look transformer blocks up by class in a registry;
    register the branch-running subclass with `WanTransformerBlock`'s metadata (its forward returns the same)."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    TransformerBlockRegistry.register(MIVAWanTransformerBlock, TransformerBlockMetadata(
        return_hidden_states_index=0, return_encoder_hidden_states_index=None))


def install_miva_wan(transformer: nn.Module) -> MIVAContext:
    """Install MIVA on `transformer` (a `WanTransformer3DModel`) once and return its `MIVAContext`
    (`transformer.miva_context`). Idempotent: processors with their adapters are kept or put back."""
    if not is_wan_transformer(transformer):
        raise TypeError(f"install_miva_wan needs a WanTransformer3DModel, got {type(transformer).__name__}")
    context = getattr(transformer, "miva_context", None)
    if context is None:
        _register_block_class()
        backbone = wan_backbone(transformer)
        context = MIVAContext(max_frames=backbone.max_frames(transformer),
                              temb_channels=backbone.temb_channels(transformer), backbone=backbone)
        transformer.miva_context = context
        install_call_hooks(transformer, context)  # a forward outside any call opens its own (recorders and all)
    for block in transformer.blocks:
        if type(block) is WanTransformerBlock:
            block.__class__ = MIVAWanTransformerBlock  # same module, one more step in forward
    # `compile_repeated_blocks` compiles the blocks whose class *name* is in `_repeated_blocks`: name ours too.
    repeated = list(getattr(transformer, "_repeated_blocks", None) or [])
    if MIVAWanTransformerBlock.__name__ not in repeated:
        transformer._repeated_blocks = [*repeated, MIVAWanTransformerBlock.__name__]
    for layer, attn in _attention_layers(transformer, context.backbone):
        processor = context.processors.get(layer)
        if processor is None:
            processor = _PROCESSORS[context.backbone.layer_kind(layer)](context, layer_name=layer)
            for name, config in context.configs.items():
                processor.add_adapter(attn, name, config)
            context.processors[layer] = processor
        if attn.processor is not processor:
            attn.set_processor(processor)
    return context


# The MIVA processor of each layer kind the description names (`backbone.layer_kind`).
_PROCESSORS = {SELF: MIVAWanSelfAttnProcessor, CROSS: MIVAWanCrossAttnProcessor}


def _attention_layers(transformer: nn.Module, backbone) -> list[tuple[str, nn.Module]]:
    """`(processor key, attention module)` of every layer the description gives a MIVA processor."""
    return [(f"{name}.processor", module) for name, module in transformer.named_modules()
            if hasattr(module, "set_processor") and backbone.layer_kind(f"{name}.processor") is not None]


def add_wan_adapter(transformer: nn.Module, name: str, config: WanAdapterConfig) -> None:
    """`add_miva_adapter` on a Wan transformer (installing MIVA first if needed): adapter `name`'s modules in
    every block, zero-initialised (a no-op until trained or loaded), not yet active."""
    check_backbone(config, f"adapter {name!r}")
    install_miva_wan(transformer)
    add_miva_adapter(transformer, name, config)

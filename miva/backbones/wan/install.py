"""Putting MIVA on a `WanTransformer3DModel`: processors on every block's `attn1` / `attn2`, the branch-running
block class, and the hooks that record the per-call values Wan hands to no processor.

The adapter verbs of `miva.attention_processors` then work unchanged on the transformer (`add_miva_adapter`,
`set_miva_adapters`, `delete_miva_adapter`, `get_miva_adapter_modules`, `miva_call`), and so does the one state-dict
format of `miva.loaders.adapter_state` (keys `blocks.<i>.attn1.<part>` / `blocks.<i>.attn2.<part>`).
"""

from __future__ import annotations

from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

from ...attention_processors.context import MIVAContext
from ...attention_processors.install import add_miva_adapter
from .config import WanAdapterConfig, check_backbone
from .processors import MIVAWanCrossAttnProcessor, MIVAWanSelfAttnProcessor, MIVAWanTransformerBlock

__all__ = ["add_wan_adapter", "install_miva_wan", "is_wan_transformer"]


def is_wan_transformer(model: nn.Module) -> bool:
    from diffusers import WanTransformer3DModel

    return isinstance(model, WanTransformer3DModel)


def _rope_hook(context: MIVAContext, patch_frames: int):
    """On `transformer.rope`: the only module that sees the 5-D latent `(batch, C, F, H, W)`; the blocks get
    flattened tokens, so the cross-frame branch learns the latent frame count here."""

    def hook(module, args):
        context.call_state().forward.num_frames = args[0].shape[2] // patch_frames

    return hook


def _condition_hook(context: MIVAContext):
    """On `transformer.condition_embedder`: the timestep (`"linear"` weight) and the time embedding before its SiLU
    (`"adaptive"` weight) reach no block or processor in this form."""

    def hook(module, args, kwargs, output):
        values = context.call_state().forward
        values.timestep = args[0] if args else kwargs["timestep"]
        values.temb = output[0]

    return hook


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
        context = MIVAContext(max_frames=10**6, temb_channels=transformer.condition_embedder.time_proj.in_features)
        transformer.miva_context = context
        handles = [transformer.rope.register_forward_pre_hook(_rope_hook(context, transformer.config.patch_size[0]))]
        handles.append(transformer.condition_embedder.register_forward_hook(_condition_hook(context),
                                                                              with_kwargs=True))
        context.hook_handles = handles
    for index, block in enumerate(transformer.blocks):
        if type(block) is WanTransformerBlock:
            block.__class__ = MIVAWanTransformerBlock  # same module, one more step in forward
        for attn_name, kind in (("attn1", MIVAWanSelfAttnProcessor), ("attn2", MIVAWanCrossAttnProcessor)):
            layer = f"blocks.{index}.{attn_name}.processor"
            attn = getattr(block, attn_name)
            processor = context.processors.get(layer)
            if processor is None:
                processor = kind(context, layer_name=layer)
                for name, config in context.configs.items():
                    processor.add_adapter(attn, name, config)
                context.processors[layer] = processor
            if attn.processor is not processor:
                attn.set_processor(processor)
    return context


def add_wan_adapter(transformer: nn.Module, name: str, config: WanAdapterConfig) -> None:
    """`add_miva_adapter` on a Wan transformer (installing MIVA first if needed): adapter `name`'s modules in
    every block, zero-initialised (a no-op until trained or loaded), not yet active."""
    check_backbone(config, f"adapter {name!r}")
    install_miva_wan(transformer)
    add_miva_adapter(transformer, name, config)

"""The AnimateDiff `UNetMotionModel` (SD1.5 UNet + motion modules) as a `Backbone` description.

Layers: each spatial `Transformer2DModel` block has `attn1` (self-attention over one frame's pixels) and `attn2`
(cross-attention to the prompt); each motion module's `attn1` and `attn2` are both temporal self-attention.
Tokens: spatial processors get `(batch*frames, h*w, C)` (frame inner), temporal ones `(batch*h*w, frames, C)`.
"""

from __future__ import annotations

from torch import nn

from ..attention_processors.parts import CROSS, SELF, TEMPORAL
from .base import Backbone, Recorder
from .declared import UNET


def layer_kind(layer_name: str) -> str | None:
    """Which MIVA processor kind serves the layer `layer_name` (a key of `unet.attn_processors`): motion modules'
    attn1 *and* attn2 are temporal self-attention; spatial attn1 is self-attention, spatial attn2 cross-attention.
    Anything else (none in SD1.5) keeps its processor."""
    if ".motion_modules." in layer_name or layer_name.startswith("motion_modules."):
        return TEMPORAL
    if layer_name.endswith("attn1.processor"):
        return SELF
    if layer_name.endswith("attn2.processor"):
        return CROSS
    return None


def _time_proj(unet: nn.Module):
    return [("time_proj", unet.time_proj, ())]


def _time_embedding(unet: nn.Module):
    return [("time_embedding", unet.time_embedding, ())]


def _blocks(unet: nn.Module):
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    blocks += [("mid_block", unet.mid_block)] if unet.mid_block is not None else []
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    return [(name, block, ()) for name, block in blocks]


def _spatial_transformers(unet: nn.Module):
    """Each spatial `Transformer2DModel` with the attention layers inside it."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    found = []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            # A processor's own `layer_name` is its key when it was installed: FreeNoise split inference later wraps
            # the transformer (`...attentions.0.module`), which changes the module path but not the layer.
            layers = tuple(getattr(m.processor, "layer_name", None) or f"{name}.{sub}.processor"
                           for sub, m in module.named_modules() if isinstance(m, Attention))
            found.append((name, module, layers))
    return found


def _level(args, kwargs, output):
    hidden_states = args[0] if args else kwargs["hidden_states"]  # (batch*frames, C, h, w)
    return hidden_states.shape[0], tuple(hidden_states.shape[-2:])


RECORDERS = (
    Recorder("timestep", _time_proj, lambda args, kwargs, output: args[0], before=True,
             why="the UNet passes the timestep to no processor (the cross-frame 'linear' weight and split inference "
                 "need it); `time_proj` gets it as a (batch,) tensor. Its firing also marks a new UNet forward"),
    Recorder("temb", _time_embedding, lambda args, kwargs, output: output, before=False,
             why="transformer blocks pass no `temb` to attention (the 'adaptive' cross-frame weight needs it)"),
    Recorder("num_frames", _blocks, lambda args, kwargs, output: kwargs.get("num_frames"), before=True,
             why="the UNet hands `num_frames` to its blocks by keyword but not to spatial processors (and under "
                 "FreeNoise it is the window's frame count, which the pipeline does not know)"),
    Recorder("level", _spatial_transformers, _level, before=True,
             why="the `Transformer2DModel` input `(batch*frames, C, h, w)` is the only place the level size is visible "
                 "(processors get flattened tokens), and under FreeNoise split inference the only place that sees "
                 "which rows a chunk holds; it also stays right under gradient checkpointing, which re-runs single "
                 "transformer blocks"),
)

# No recorder on the UNet itself: torch.compile does not inline the hooks of the module it compiles, so a
# value-recording hook there would split a compiled UNet into two graphs.
ANIMATEDIFF_UNET = Backbone(
    name="AnimateDiff UNetMotionModel",
    kind=UNET.id,
    layer_kind=layer_kind,
    token_layout={SELF: "(batch*frames, h*w, C)", CROSS: "(batch*frames, h*w, C)", TEMPORAL: "(batch*h*w, frames, C)"},
    processor_inputs=("encoder_hidden_states", "attention_mask"),
    qk_norm=None,
    recorders=RECORDERS,
    max_frames=lambda unet: int(getattr(getattr(unet, "config", {}), "motion_max_seq_length", None) or 32),
    temb_channels=lambda unet: unet.time_embedding.linear_2.out_features,
)

"""diffusers' `WanTransformer3DModel` (Wan2.1 DiT) as a `Backbone` description.

Layers: each `WanTransformerBlock` has `attn1` (3-D self-attention over all frames' tokens, RMS q/k norms, rotary
embeddings handed to the processor) and `attn2` (text cross-attention); there are no temporal layers. Tokens are
`(batch, frames*h*w, dim)`, frame-major, after the `(1, 2, 2)` patchify.
"""

from __future__ import annotations

from torch import nn

from ...attention_processors.parts import CROSS, SELF
from ..base import Backbone, Recorder
from ..declared import WAN


def layer_kind(layer_name: str) -> str | None:
    """`blocks.<i>.attn1.processor` -> self-attention, `blocks.<i>.attn2.processor` -> cross-attention."""
    if not layer_name.startswith("blocks."):
        return None
    if layer_name.endswith("attn1.processor"):
        return SELF
    if layer_name.endswith("attn2.processor"):
        return CROSS
    return None


def _rope(model: nn.Module):
    return [("rope", model.rope, ())]


def _condition_embedder(model: nn.Module):
    return [("condition_embedder", model.condition_embedder, ())]


def _token_grid(model: nn.Module):
    pf, ph, pw = model.config.patch_size

    def read(args, kwargs, output):
        hidden_states = args[0] if args else kwargs["hidden_states"]  # (batch, C, frames, H, W)
        return hidden_states.shape[2] // pf, hidden_states.shape[3] // ph, hidden_states.shape[4] // pw

    return read


def _timestep(args, kwargs, output):
    return args[0] if args else kwargs["timestep"]  # (batch,) or (batch, tokens) for Wan2.2's per-token timesteps


def _temb(args, kwargs, output):
    return output[0]  # (batch, dim): the time embedding before the SiLU of Wan's time projection


def wan_backbone(model: nn.Module) -> Backbone:
    """The description of `model` (its patch size decides how latent frames map to token frames)."""
    return Backbone(
        name="Wan2.1 WanTransformer3DModel",
        kind=WAN.id,
        layer_kind=layer_kind,
        token_layout={SELF: "(batch, frames*h*w, dim)", CROSS: "(batch, frames*h*w, dim)"},
        processor_inputs=("encoder_hidden_states", "attention_mask", "rotary_emb"),
        qk_norm="rms_norm",
        recorders=(
            Recorder("grid", _rope, _token_grid(model), before=True,
                     why="`rope` is the only module that sees the 5-D latent (batch, C, frames, H, W); blocks and "
                         "processors get flattened tokens, and the cross-frame branch needs the frame count, adapter "
                         "masks the token grid (frames, h, w) after patchify"),
            Recorder("timestep", _condition_embedder, _timestep, before=True,
                     why="the timestep (the cross-frame 'linear' weight) reaches no block or processor as such"),
            Recorder("temb", _condition_embedder, _temb, before=False,
                     why="blocks get the projected, modulating embedding, not `temb` before its SiLU (the "
                         "'adaptive' cross-frame weight reads that)"),
        ),
        max_frames=lambda transformer: 10**6,  # rotary positions: no learned frame table limits the length
        temb_channels=lambda transformer: transformer.condition_embedder.time_proj.in_features,
    )

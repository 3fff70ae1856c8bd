"""`WanAdapterConfig`: a `MIVAAdapterConfig` for diffusers' Wan2.1 DiT (`WanTransformer3DModel`).

The shared fields keep their meaning (`use_i2v`, `sa_mode`, `sa_first_frame_scale`, `ca_mode`, `implicit_rank`, ...);
the fields below are what only the Wan version has. `backbone` records the base architecture in
`adapter_config.json`, so an adapter is never loaded onto the wrong base silently (`check_backbone`).

Not built on Wan yet, refused here with the reason: the motion embedding, spatiotemporal Q (a DiT's cross-attention already sees every frame's tokens at full resolution: the
UNet's frame-pooled query grid has no counterpart) and learned words (docs/wan.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...attention_processors.adapter_config import MIVAAdapterConfig, _check_choice
from ..declared import UNET, WAN, wrong_base_message

__all__ = ["IMPLICIT_ACTIVATIONS", "WAN_BACKBONE", "WanAdapterConfig", "check_backbone"]

WAN_BACKBONE = WAN.id
IMPLICIT_ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu", "none")
# Shared fields with no Wan implementation yet: field -> (the value that means "off", why).
_NOT_ON_WAN = {
    "use_motion_embed": (False, "a DiT has no motion modules to carry a motion embedding"),
    "ca_out_lora_bias": (False, "a research-import quirk of the UNet version; the official Wan version has none"),
    "q_downsample": (False, "spatiotemporal Q is a UNet-level query grid; Wan's cross-attention already reads "
                            "every frame's tokens (docs/wan.md)"),
    "word_to_learn": (None, "learned words are a CLIP-text feature; Wan reads T5 embeddings"),
    "use_mask_branch": (False, "the mask branch is built for the AnimateDiff UNet's attn1 (docs/mask_branch.md)"),
}


@dataclass
class WanAdapterConfig(MIVAAdapterConfig):
    """Which parts a MIVA adapter on Wan2.1 has: the cross-frame branch after each block's gated self-attention
    (`use_i2v`, `sa_mode`, `sa_first_frame_scale`) and the implicit prompt in place of the text cross-attention
    (`ca_mode="implicit"`, the official `CA_mode="simple"`; `ca_mode="lora"` with `use_ca_lora=False` is the
    official `"vanilla"`: the text cross-attention unchanged)."""

    use_motion_lora: bool = field(default=False, metadata={"help": "LoRA on Q/K/V/O of the 3-D self-attention."})
    implicit_act: str = field(default="gelu", metadata={"help": f"Implicit prompt activation: {IMPLICIT_ACTIVATIONS}."})
    implicit_norm: bool = field(default=True, metadata={"help": "LayerNorm between the implicit prompt's layers."})
    implicit_bias: bool = field(default=True, metadata={"help": "Biases on the implicit prompt's two layers."})
    research_exact_first: bool = field(
        default=False,
        metadata={"help": "sa_mode='first' as the official code computes it: frame i attends to the i-th 1/F slice "
                          "of frame 0's tokens (a bug; tokens per frame must divide by the frame count)."},
    )
    backbone: str = field(default=WAN_BACKBONE, metadata={"help": "The base architecture this adapter is for."})

    def validate(self) -> None:
        super().validate()
        _check_choice("implicit_act", self.implicit_act, IMPLICIT_ACTIVATIONS)
        for name in ("implicit_norm", "implicit_bias", "research_exact_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.backbone != WAN_BACKBONE:
            raise ValueError(f"backbone={self.backbone!r}: a WanAdapterConfig is for {WAN_BACKBONE!r}")
        if self.use_ca_lora and self.ca_mode == "implicit":
            raise ValueError("use_ca_lora=True with ca_mode='implicit': the implicit prompt replaces the text "
                             "cross-attention that CA-LoRA would adapt; choose one")
        for name, (off, why) in _NOT_ON_WAN.items():
            if getattr(self, name) != off:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported on Wan ({why}); set it to {off!r}")


def check_backbone(config: MIVAAdapterConfig, where: str) -> WanAdapterConfig:
    """`config` if it is a Wan adapter's config; otherwise one error naming both architectures."""
    if not isinstance(config, WanAdapterConfig):
        raise ValueError(wrong_base_message(where, UNET, WAN))
    return config

"""Which trainable part each parameter of a Wan adapter module belongs to (the Wan counterpart of the UNet's
`attention_processors.parts.ADAPTER_PARTS` attributes): the trainer's `trainable_modules` and the orthogonal
bases (`training.orthogonal`: the layers holding LoRA deltas) both read it."""

from __future__ import annotations

from ...attention_processors.parts import CROSS, SELF

__all__ = ["WAN_PART_OF"]

# (processor kind, first attribute of the parameter name) -> trainable part; None: frozen (the branch's copies).
WAN_PART_OF = {
    **{(SELF, a): "i2v" for a in ("o", "q")},
    **{(SELF, a): None for a in ("k", "v", "norm_q", "norm_k")},
    (SELF, "weight_module"): "adaptive_weight",
    **{(SELF, f"to_{p}_lora"): "motion_lora" for p in ("q", "k", "v", "out")},
    **{(CROSS, f"to_{p}_lora"): "ca_lora" for p in ("q", "k", "v", "out")},
    **{(CROSS, a): "implicit" for a in ("CA2", "CA_norm", "CA3")},
}

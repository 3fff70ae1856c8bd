"""Research checkpoint keys (docs/research.md#research-checkpoints): which keys are adapter state, how one maps to a native layer,
and the multi-adapter renaming. Pure string work; the tensor conversion is `research.py`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "RESEARCH_ADAPTER_MARKERS",
    "ResearchKey",
    "needed_base_key",
    "parse_research_key",
    "remap_research_keys_for_index",
]

_CA = re.compile(
    r"^(?P<layer>.+\.attn2)\.processor\.(?P<proj>to_(?:q|k|v|out))_loras?(?:\.(?P<idx>\d+))?\.(?P<w>down|up)\.weight$"
)
_MOTION = re.compile(
    r"^(?P<mm>.+\.motion_modules\.\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.attention_blocks\."
    r"(?P<k>\d+)\.(?:processor\.)?(?:processors\.(?P<idx>\d+)\.)?"
    r"(?P<part>to_(?:q|k|v|out)_lora\.(?:down|up)\.weight|motion_embed(?:\.weight)?)$"
)
_I2V = re.compile(
    r"^(?P<block>.+\.transformer_blocks\.\d+)\.i2v_adapters?(?:\.(?P<idx>\d+))?\.(?:processor\.)?"
    r"(?:processors\.(?P<idx2>\d+)\.)?(?P<part>.+)$"
)
_WEIGHT_MODULE = re.compile(r"^(?P<block>.+\.transformer_blocks\.\d+)\.attn1\.processor\.(?P<part>weight_module\..+)$")
_I2V_PARTS = (
    "to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias",
    "to_q_lora.down.weight", "to_q_lora.up.weight", "to_out_lora.down.weight", "to_out_lora.up.weight",
    "weight_module.weight", "weight_module.bias",
)  # fmt: skip
_BASE_KEY = re.compile(r"\.(?:attn2\.to_out\.0\.(?:weight|bias)|attn1\.to_[qkv]\.weight)$")
# Substrings that mark a key as adapter state (anything else is a base weight).
RESEARCH_ADAPTER_MARKERS = ("_lora", "i2v_adapter", "motion_embed", "weight_module")


@dataclass(frozen=True)
class ResearchKey:
    kind: str  # "ca", "motion", "i2v"
    layer: str  # native attention layer path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    part: str  # part within the research layer, e.g. "to_k_lora.down.weight", "to_out.0.weight", "motion_embed"
    index: int | None  # multi-adapter index, None for a single-adapter checkpoint


def needed_base_key(key: str) -> bool:
    """Whether a (research or diffusers) UNet key is a base weight the conversion reads: spatial attn2 `to_out.0`
    (CA out-LoRA) and spatial attn1 `to_q/k/v` (I2V checks)."""
    return bool(_BASE_KEY.search(key)) and "motion_modules" not in key



def parse_research_key(key: str) -> ResearchKey | None:
    """Map one research key; None for base weights; `ValueError` for adapter state we do not know."""
    if not any(marker in key for marker in RESEARCH_ADAPTER_MARKERS):
        return None
    if m := _CA.match(key):
        idx = m["idx"]
        return ResearchKey("ca", m["layer"], f"{m['proj']}_lora.{m['w']}.weight", None if idx is None else int(idx))
    if m := _MOTION.match(key):
        part = "motion_embed" if m["part"].startswith("motion_embed") else m["part"]
        layer = f"{m['mm']}.transformer_blocks.{m['t']}.attn{int(m['k']) + 1}"
        return ResearchKey("motion", layer, part, None if m["idx"] is None else int(m["idx"]))
    if (m := _I2V.match(key)) and m["part"] in _I2V_PARTS:
        idx = m["idx"] if m["idx"] is not None else m["idx2"]
        return ResearchKey("i2v", f"{m['block']}.attn1", m["part"], None if idx is None else int(idx))
    if m := _WEIGHT_MODULE.match(key):
        return ResearchKey("i2v", f"{m['block']}.attn1", m["part"], None)
    raise ValueError(
        f"unsupported research adapter key {key!r}: miva imports CA-LoRA ('...attn2.processor.to_k_lora."
        "down.weight'), MotionLoRA / motion embedding ('...attention_blocks.K.processor.to_q_lora...') and "
        "the I2V adapter ('...i2v_adapter.to_out.0.weight')"
    )


def remap_research_keys_for_index(state_dict: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The research inference's renaming of adapter checkpoint `index` in a multi-adapter model (docs/research.md#research-checkpoints):
    `i2v_adapter.` -> `i2v_adapters.{i}.`; in keys with `processor` but neither `_ip` nor `attn2` (the motion LoRAs)
    `processor.` -> `processor.processors.{i}.`; in `attn2` keys `to_k_lora.` / `to_v_lora.` / `to_out_lora.` ->
    `to_k_loras.{i}.` / ... (`to_q_lora` is not renamed)."""
    out = {}
    for key, value in state_dict.items():
        new = key.replace("i2v_adapter.", f"i2v_adapters.{index}.")
        if "processor" in new and "_ip" not in new and "attn2" not in new:
            new = new.replace("processor.", f"processor.processors.{index}.")
        if "attn2" in new:
            for proj in ("to_k", "to_v", "to_out"):
                new = new.replace(f"{proj}_lora.", f"{proj}_loras.{index}.")
        out[new] = value
    return out


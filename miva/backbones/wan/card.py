"""The model card of a MIVA adapter for Wan2.1 (`README.md` of a native Wan adapter folder)."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from ...attention_processors.adapter_config import parse_first_frame_scale
from .config import WanAdapterConfig

__all__ = ["wan_component_lines", "wan_model_card"]

BASE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def wan_component_lines(config: WanAdapterConfig) -> list[str]:
    """One "Contents" line per part the adapter has."""
    lines = []
    if config.use_i2v:
        kind, _ = parse_first_frame_scale(config.sa_first_frame_scale)
        weight = f", `sa_first_frame_scale={config.sa_first_frame_scale!r}` ({kind})" if config.sa_mode == "first_prev" \
            else ""
        exact = " (official first-mode computation)" if config.research_exact_first and config.sa_mode == "first" else ""
        lines.append(f"- cross-frame branch after each block's self-attention: `sa_mode={config.sa_mode!r}`{weight}{exact}")
    if config.use_motion_lora:
        lines.append(f"- MotionLoRA on the 3-D self-attention: rank {config.motion_lora_rank}, "
                     f"alpha {config.motion_lora_scale}")
    if config.ca_mode == "implicit":
        lines.append(f"- implicit prompt in place of the text cross-attention: rank {config.implicit_rank}, "
                     f"`{config.implicit_act}`, LayerNorm: {config.implicit_norm}")
    if config.use_ca_lora:
        lines.append(f"- CA-LoRA on the text cross-attention: rank {config.ca_lora_rank}, alpha "
                     f"{config.ca_lora_scale}, Q-LoRA: {config.use_q_lora}")
    return lines


def wan_model_card(config: WanAdapterConfig, adapter_name: str, repo_id: str | None = None) -> ModelCard:
    """A `ModelCard` describing the adapter, its parts and how to load it onto Wan2.1."""
    from ...base_registry import known_base

    source = repo_id or f"path/to/{adapter_name}"
    known = known_base(config.base_model)  # a base miva knows by name (miva-world-wan): its own snippet, no Hub id
    data = ModelCardData(library_name="diffusers", license="apache-2.0", pipeline_tag="image-to-video",
                         base_model=None if known else config.base_model or BASE,
                         tags=["miva", "wan2.1", "image-to-video", "diffusers"])
    contents = "\n".join(wan_component_lines(config)) or "- (no parts)"
    usage = _usage(config, adapter_name, source) if known is None else known.usage.format(
        where=source, name=adapter_name, prompt=config.prompt or "")
    text = f"""---
{data.to_yaml()}
---

# MIVA adapter `{adapter_name}` for Wan2.1

A **miva** image-to-video adapter for diffusers' Wan2.1 text-to-video transformer: it animates a given picture
(latent frame 0 pinned) with one learned motion.

## Contents

{contents}

## Usage

```python
{usage}
```

The adapter files are `adapter_config.json` (`backbone: {config.backbone}`) and `miva_adapter.safetensors`.
"""
    return ModelCard(text)


def _usage(config: WanAdapterConfig, adapter_name: str, source: str) -> str:
    """The snippet for a Wan2.1 base loaded with `from_pretrained` (a Hub id or a folder)."""
    return f"""import torch
from diffusers.utils import export_to_video, load_image
from miva import MIVAWanPipeline

pipe = MIVAWanPipeline.from_pretrained("{config.base_model or BASE}", dtype=torch.bfloat16).to("cuda")
pipe.load_adapters("{source}", adapter_names="{adapter_name}")
video = pipe(image=load_image("input.png"), num_frames=17, height=480, width=832).frames[0]
export_to_video(video, "output.mp4", fps=16)"""

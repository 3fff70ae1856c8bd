"""`miva convert`: a research checkpoint written as a native adapter folder (optionally test-loaded first).

Sits above `adapter_io.py` (folders, strict loading), `sources.py` (reading the checkpoint) and `research.py` (the
conversion), none of which imports it: the loaders import no module that imports them back.
"""

from __future__ import annotations

from pathlib import Path

from ..attention_processors.adapter_config import MIVAAdapterConfig
from .adapter_io import load_prepared_adapter, write_adapter_folder
from .adapter_state import discard_adapter
from .research import base_weights_from_unet, convert_research_state_dict, fill_mid_block_motion
from .sources import resolve_source

__all__ = ["convert_research_checkpoint"]


def convert_research_checkpoint(
    sources,
    out_dir,
    config: MIVAAdapterConfig | dict | None = None,
    *,
    unet=None,
    adapter_index: int | None = None,
    adapter_name: str = "adapter",
) -> Path:
    """Write a research checkpoint as a native adapter folder (what `miva convert` does); returns the folder.

    `sources`: a research split dict (`adapter_i2v_path` / `adapter_lora_path` / `ca_lora_path`), a research
    `.pt`, or a research full-UNet `.safetensors`. `unet` (a `UNetMotionModel`) gives the base weights split
    checkpoints need for the CA out-LoRA and, when given, the result is test-loaded into it (strictly, then removed).
    """
    source = resolve_source(sources, config=config)
    if source.kind != "research":
        raise ValueError(f"{source.origin} is already a native MIVA adapter; nothing to convert")
    base = {**(base_weights_from_unet(unet) if unet is not None else {}), **source.base}
    max_frames = int(getattr(unet.config, "motion_max_seq_length", 32)) if unet is not None else 32
    index = source.adapter_index if adapter_index is None else adapter_index
    cfg, native = convert_research_state_dict(
        source.tensors, base=base, config=source.config, adapter_index=index, max_frames=max_frames
    )
    if unet is not None:
        fill_mid_block_motion(unet, cfg, native)
        probe = "_miva_convert_probe"
        load_prepared_adapter(unet, probe, cfg, native)
        discard_adapter(unet, probe)
    return write_adapter_folder(out_dir, cfg, native, adapter_name=adapter_name)

"""Wan adapter files: native save / strict all-or-nothing load (the shared format of `miva.loaders`), and loading
an official MIVA-Wan checkpoint (`official.py`) onto a `WanTransformer3DModel`.

A native Wan adapter folder is written by the shared `miva.loaders.adapter_io.write_adapter_folder`
(`adapter_config.json` with `backbone: "wan2.1-dit"`, `miva_adapter.safetensors` with keys
`blocks.<i>.attn1.<part>` / `blocks.<i>.attn2.<part>`, a checksum and a model card).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...guards import read_json_object
from ...loaders.adapter_io import save_miva_adapter
from ...loaders.adapter_state import discard_adapter, load_adapter_state
from ...loaders.sources import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, _read_native_weights, read_checkpoint
from ..declared import WAN, check_recorded_backbone
from .card import wan_model_card
from .config import WanAdapterConfig
from .install import add_wan_adapter
from .official import convert_official_wan_state_dict

__all__ = ["load_official_wan_adapter", "load_wan_adapter", "read_wan_adapter", "save_wan_adapter"]


def _load_into(transformer, name: str, config: WanAdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Create adapter `name` and fill it strictly; on any error nothing of it is left behind."""
    add_wan_adapter(transformer, name, config)
    try:
        load_adapter_state(transformer, name, tensors)
    except BaseException:
        discard_adapter(transformer, name)
        raise


def load_official_wan_adapter(transformer, name: str, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                              official_config: Mapping[str, Any], *, research_exact_first: bool = False
                              ) -> WanAdapterConfig:
    """Load an official MIVA-Wan checkpoint (a path, read with `torch.load(weights_only=True)` or safetensors, or
    its tensors) with its run settings (`official_config`: the YAML as a dict, or `dit_kwargs`) as adapter `name`.
    Returns the adapter's config; the adapter is not activated (`set_miva_adapters`)."""
    tensors = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    config, native = convert_official_wan_state_dict(tensors, base=transformer, official_config=official_config,
                                                     research_exact_first=research_exact_first)
    _load_into(transformer, name, config, native)
    return config


def save_wan_adapter(transformer, name: str, folder: str | os.PathLike, *, repo_id: str | None = None,
                     **kwargs) -> Path:
    """Save adapter `name` of a Wan transformer as a native adapter folder (`save_miva_adapter`'s keywords), with
    the Wan model card (`card.py`) as its `README.md`."""
    folder = save_miva_adapter(transformer, name, folder, repo_id=repo_id, **kwargs)
    config = transformer.miva_context.configs[name]
    wan_model_card(config, name, repo_id).save(os.fspath(Path(folder) / "README.md"))
    return folder


def read_wan_adapter(folder: str | os.PathLike) -> tuple[WanAdapterConfig, dict[str, torch.Tensor]]:
    """`(config, tensors)` of a native Wan adapter folder; an adapter for another base is refused, naming both."""
    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a MIVA adapter folder: {missing} missing")
    data = read_json_object(config_path, ADAPTER_CONFIG_NAME)
    check_recorded_backbone(data, WAN, os.fspath(folder))
    config = WanAdapterConfig.from_dict(data)
    tensors, _ = _read_native_weights(weights_path)
    return config, tensors


def load_wan_adapter(transformer, folder: str | os.PathLike, name: str) -> WanAdapterConfig:
    """Load a native Wan adapter folder as adapter `name` (strict, all-or-nothing); returns its config."""
    config, tensors = read_wan_adapter(folder)
    _load_into(transformer, name, config, tensors)
    return config

"""Adapter lifecycle on a pipeline, and adapter files (native, Hub, research checkpoints)."""

from .adapter_io import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAMPLE_NAME,
    TEXT_EMBEDDING_PREFIX,
    adapter_state_dict,
    load_miva_adapter,
    push_miva_adapter_to_hub,
    save_miva_adapter,
)
from .convert import convert_research_checkpoint
from .loader_mixin import MIVALoaderMixin, remove_miva_processors
from .model_card import miva_model_card
from .research import convert_research_state_dict, remap_research_keys_for_index

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "SAMPLE_NAME",
    "TEXT_EMBEDDING_PREFIX",
    "MIVALoaderMixin",
    "adapter_state_dict",
    "convert_research_checkpoint",
    "convert_research_state_dict",
    "load_miva_adapter",
    "miva_model_card",
    "push_miva_adapter_to_hub",
    "remap_research_keys_for_index",
    "remove_miva_processors",
    "save_miva_adapter",
]

"""The three MIVA attention processors, the functions that install them and manage their adapters, and the
per-call state they read (`miva_call`, `CallState`)."""

from .adapter_config import MIVAAdapterConfig
from .context import CallState, MIVAContext, miva_call
from .cross_attention import MIVACrossAttnProcessor
from .fusing import fuse_miva_adapters, unfuse_miva_adapters
from .install import (
    add_miva_adapter,
    delete_miva_adapter,
    enable_miva_adapters,
    get_miva_adapter_modules,
    get_miva_context,
    install_miva_processors,
    set_miva_adapters,
    set_miva_attention_backend,
    set_parallel_mode,
)
from .lora import LoRADelta
from .self_attention import MIVASelfAttnProcessor
from .temporal_attention import MIVATemporalAttnProcessor

__all__ = [
    "CallState",
    "LoRADelta",
    "MIVAAdapterConfig",
    "MIVAContext",
    "MIVACrossAttnProcessor",
    "MIVASelfAttnProcessor",
    "MIVATemporalAttnProcessor",
    "add_miva_adapter",
    "delete_miva_adapter",
    "enable_miva_adapters",
    "fuse_miva_adapters",
    "get_miva_adapter_modules",
    "get_miva_context",
    "miva_call",
    "install_miva_processors",
    "set_miva_adapters",
    "set_miva_attention_backend",
    "set_parallel_mode",
    "unfuse_miva_adapters",
]

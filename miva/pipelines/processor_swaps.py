"""diffusers verbs that replace attention processors, wrapped so that the MIVA processors (and adapters) survive.

`enable_free_noise`, `load_ip_adapter`, `fuse_qkv_projections`, xformers...: each runs diffusers' own method with
stock processors on our layers where it needs them, then re-installs ours (`install_miva_processors`), keeping every
adapter. The one place that knows which diffusers calls swap processors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers.models.attention_processor import AttnProcessor2_0

from ..attention_processors import (
    MIVACrossAttnProcessor,
    MIVATemporalAttnProcessor,
    install_miva_processors,
    set_miva_attention_backend,
)
from ..attention_processors.attention_utils import check_xformers_usable
from ..attention_processors.base import MIVAProcessorBase

__all__ = ["ProcessorSwapsMixin"]


class ProcessorSwapsMixin:
    """Mixin listed before `AnimateDiffPipeline` in `MIVAPipeline`'s bases (`super()` reaches diffusers)."""

    def _with_stock_processors(self, run: Callable[[], Any], temporal_only: bool = False):
        """Run a diffusers method with stock processors on our layers (IP-Adapter processors put back where we wrap
        them), then re-install ours, keeping their adapters."""
        install_miva_processors(self.unet)
        current = self.unet.attn_processors
        swapped = {}
        for name, proc in current.items():
            if isinstance(proc, MIVAProcessorBase) and (
                not temporal_only or isinstance(proc, MIVATemporalAttnProcessor)
            ):
                ip_adapter = getattr(proc, "ip_adapter", None)
                swapped[name] = ip_adapter if ip_adapter is not None else AttnProcessor2_0()
        self.unet.set_attn_processor({**current, **swapped})
        try:
            return run()
        finally:
            after = self.unet.attn_processors
            for name, proc in self.unet.miva_context.processors.items():
                if (
                    name in swapped
                    and isinstance(proc, MIVACrossAttnProcessor)
                    and not hasattr(after.get(name), "to_k_ip")
                ):
                    proc.ip_adapter = None
            install_miva_processors(self.unet)

    def enable_free_noise(self, *args, **kwargs) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsMixin, self).enable_free_noise(*args, **kwargs), True)

    def disable_free_noise(self) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsMixin, self).disable_free_noise(), True)

    def load_ip_adapter(self, *args, **kwargs) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsMixin, self).load_ip_adapter(*args, **kwargs))

    def unload_ip_adapter(self) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsMixin, self).unload_ip_adapter())

    def set_ip_adapter_scale(self, scale) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsMixin, self).set_ip_adapter_scale(scale))

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        super().fuse_qkv_projections(unet=unet, vae=vae)
        install_miva_processors(self.unet)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """diffusers' xformers switch (VAE and any other attention), then our processors back on the UNet with their
        adapters, their attention routed through xformers. Raises `ValueError` off CUDA."""
        check_xformers_usable(self._execution_device)
        super().enable_xformers_memory_efficient_attention(attention_op)
        install_miva_processors(self.unet)
        set_miva_attention_backend(self.unet, "xformers", attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        super().disable_xformers_memory_efficient_attention()
        install_miva_processors(self.unet)
        set_miva_attention_backend(self.unet, "sdpa")

"""The one place that knows which diffusers calls replace attention processors, and puts the MIVA ones back.

The MIVA processors are installed once (`MIVAPipeline.__init__`, or the first adapter on a bare UNet) and kept, with
their adapters, in `unet.miva_context.processors`. diffusers calls that replace processors:
- pipeline verbs, wrapped here (`ProcessorSwapsPipeline`): `enable_free_noise` / `disable_free_noise` (rebuild motion
  blocks; need stock processors there), `load_ip_adapter` / `unload_ip_adapter` / `set_ip_adapter_scale` (re-create
  every processor), `fuse_qkv_projections` and the xformers switch (replace every processor), `save_pretrained`
  (saves the UNet stock);
- UNet verbs a user may call directly (`unet.set_attn_processor`, `unet._load_ip_adapter_weights`,
  `unet.fuse_qkv_projections`): diffusers gives no hook for them, so `MIVAPipeline.__call__` calls
  `restore_miva_processors` once before sampling;
- `unet.set_default_attn_processor()`: answered by `set_default_attn_processor` (diffusers' own refuses
  processors outside its list); `enable_miva_adapters` / `set_miva_adapters` put ours back.
Every put-back goes through `restore_miva_processors`. Those two UNet-level functions live in
`attention_processors/install.py` (the processors' layer needs them and must not import the pipelines' layer); they
are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import AnimateDiffPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from ..attention_processors import (
    MIVACrossAttnProcessor,
    MIVATemporalAttnProcessor,
    set_miva_attention_backend,
)
from ..attention_processors.attention_utils import check_xformers_usable
from ..attention_processors.base import MIVAProcessorBase
from ..attention_processors.install import restore_miva_processors, set_default_attn_processor

__all__ = ["ProcessorSwapsPipeline", "restore_miva_processors", "set_default_attn_processor"]


class ProcessorSwapsPipeline(AnimateDiffPipeline):
    """`AnimateDiffPipeline` whose verbs that replace attention processors keep the MIVA ones (with their adapters);
    the base of `MIVAPipeline`, behind `MIVALoaderMixin`."""

    def _with_stock_processors(self, run: Callable[[], Any], temporal_only: bool = False):
        """Run a diffusers method with stock processors on our layers (IP-Adapter processors put back where we wrap
        them), then put ours back, keeping their adapters."""
        restore_miva_processors(self.unet)  # a swap made behind our back must not leak into the one below
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
            restore_miva_processors(self.unet)

    def enable_free_noise(self, *args, **kwargs) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).enable_free_noise(*args, **kwargs), True)

    def disable_free_noise(self) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).disable_free_noise(), True)

    def load_ip_adapter(self, *args, **kwargs) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).load_ip_adapter(*args, **kwargs))

    def unload_ip_adapter(self) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).unload_ip_adapter())

    def set_ip_adapter_scale(self, scale) -> None:
        self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).set_ip_adapter_scale(scale))

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        super().fuse_qkv_projections(unet=unet, vae=vae)
        restore_miva_processors(self.unet)

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """diffusers' xformers switch (VAE and any other attention), then our processors back on the UNet with their
        adapters, their attention routed through xformers. Raises `ValueError` off CUDA."""
        check_xformers_usable(self._execution_device)
        super().enable_xformers_memory_efficient_attention(attention_op)
        restore_miva_processors(self.unet)
        set_miva_attention_backend(self.unet, "xformers", attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        super().disable_xformers_memory_efficient_attention()
        restore_miva_processors(self.unet)
        set_miva_attention_backend(self.unet, "sdpa")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained` with the UNet saved stock (`MIVALoaderMixin.save_pretrained`, before this in
        the MRO, has written the MIVA adapters beside it)."""
        return self._with_stock_processors(lambda: super(ProcessorSwapsPipeline, self).save_pretrained(
            save_directory, *args, **kwargs))

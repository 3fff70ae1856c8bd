"""`MIVALoaderMixin`: the adapter lifecycle verbs of a MIVA pipeline (diffusers/PEFT names)."""

from __future__ import annotations

from ..attention_processors import (
    MIVAAdapterConfig,
    add_miva_adapter,
    delete_miva_adapter,
    get_miva_context,
    install_miva_processors,
    set_miva_adapters,
)


class MIVALoaderMixin:
    """Mixed into `MIVAPipeline`; works on `self.unet` (a `UNetMotionModel`)."""

    @property
    def miva_context(self):
        return install_miva_processors(self.unet)

    def add_adapter(self, adapter_name: str, config: MIVAAdapterConfig | None = None, *, activate: bool = True):
        """Add a fresh, zero-initialised adapter (a no-op until trained or loaded); activate it alone by default."""
        config = config or MIVAAdapterConfig()
        install_miva_processors(self.unet)
        add_miva_adapter(self.unet, adapter_name, config)
        if activate:
            self.set_adapters([adapter_name])

    def set_adapters(self, adapter_names: str | list[str], weights: float | list[float] | None = None,
                     parallel_mode: str | None = None) -> None:
        """Choose the active adapters (in per-adapter prompt order) and their weights (default 1 each)."""
        set_miva_adapters(self.unet, adapter_names, weights, parallel_mode=parallel_mode)

    def get_active_adapters(self) -> list[str]:
        context = get_miva_context(self.unet)
        return [name for name, _ in context.active] if context.enabled else []

    def get_list_adapters(self) -> list[str]:
        return list(get_miva_context(self.unet).configs)

    def disable_adapters(self) -> None:
        get_miva_context(self.unet).enabled = False

    def enable_adapters(self) -> None:
        get_miva_context(self.unet).enabled = True

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            delete_miva_adapter(self.unet, name)

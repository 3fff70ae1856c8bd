"""Adapter verbs that `MIVAPipeline` shares with diffusers' LoRA: each name is routed to its owner.

diffusers' LoRA verbs of the same names (`set_adapters`, `get_active_adapters`, `get_list_adapters`,
`delete_adapters`) would come first in the MRO; this mixin, listed before `AnimateDiffPipeline`, sends MIVA adapter
names to `MIVALoaderMixin` and LoRA adapter names (`load_lora_weights`) to diffusers, so mixed lists work.
"""

from __future__ import annotations

from diffusers import AnimateDiffPipeline
from diffusers.utils import USE_PEFT_BACKEND

from ..loaders import MIVALoaderMixin
from ..loaders.transaction import adapter_transaction

__all__ = ["LoRACompatibleAdapterVerbs"]


class LoRACompatibleAdapterVerbs:
    """Mixin for a pipeline that is both an `AnimateDiffPipeline` and a `MIVALoaderMixin`."""

    def _lora_adapter_names(self) -> list[str]:
        if not USE_PEFT_BACKEND:  # diffusers LoRA needs PEFT; without it there are only MIVA adapters
            return []
        listed = AnimateDiffPipeline.get_list_adapters(self)
        return list(dict.fromkeys(name for names in listed.values() for name in names))

    def _split_adapter_names(self, adapter_names, verb: str) -> tuple[list[str], list[str], list[int], list[int]]:
        """`(miva names, lora names, their positions)`; unknown names raise naming both kinds."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        miva = MIVALoaderMixin.get_list_adapters(self)
        lora = self._lora_adapter_names()
        unknown = [n for n in names if n not in miva and n not in lora]
        if unknown:
            raise ValueError(f"pipe.{verb}: unknown adapter {unknown[0]!r}; MIVA adapters: {miva}, diffusers LoRA "
                             f"adapters: {lora}")
        miva_at = [i for i, n in enumerate(names) if n in miva]
        lora_at = [i for i, n in enumerate(names) if n not in miva]
        return [names[i] for i in miva_at], [names[i] for i in lora_at], miva_at, lora_at

    def set_adapters(self, adapter_names, adapter_weights=None, parallel_mode: str | None = None, *,
                     weights=None) -> None:
        """Activate adapters by name, MIVA and diffusers LoRA mixed, with one weight each (default 1;
        `adapter_weights` is diffusers' name, `weights` the MIVA one).

        MIVA names become the active MIVA adapters, in this order (the order of per-adapter prompts), with
        `parallel_mode` if given; LoRA names go to diffusers' `set_adapters` with their weights. A kind that the
        call does not name keeps its state, except that `set_adapters([])` deactivates every MIVA adapter.
        """
        if weights is not None and adapter_weights is not None:
            raise ValueError("pipe.set_adapters: give adapter_weights or weights, not both")
        weights = adapter_weights if weights is None else weights
        miva, lora, miva_at, lora_at = self._split_adapter_names(adapter_names, "set_adapters")
        count = len(miva) + len(lora)
        if isinstance(weights, (list, tuple)):
            if len(weights) != count:
                raise ValueError(f"pipe.set_adapters: adapter_weights has {len(weights)} entries for {count} adapters")
            miva_weights, lora_weights = [weights[i] for i in miva_at], [weights[i] for i in lora_at]
        else:
            miva_weights = lora_weights = weights
        # MIVA first (its checks refuse bad weights before anything changes), undone if diffusers then refuses
        with adapter_transaction(self.unet):
            if miva or not lora:
                MIVALoaderMixin.set_adapters(self, miva, miva_weights, parallel_mode=parallel_mode)
            if lora:
                AnimateDiffPipeline.set_adapters(self, lora, lora_weights)

    def get_active_adapters(self) -> list[str]:
        """The active adapters: the MIVA ones in order, then diffusers' active LoRA adapters."""
        lora = AnimateDiffPipeline.get_active_adapters(self) if self._lora_adapter_names() else []
        return MIVALoaderMixin.get_active_adapters(self) + list(lora)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """diffusers' `{component: [LoRA adapter names]}`, with the MIVA adapters under `"miva"` when any."""
        listed = dict(AnimateDiffPipeline.get_list_adapters(self)) if USE_PEFT_BACKEND else {}
        miva = MIVALoaderMixin.get_list_adapters(self)
        if miva:
            listed["miva"] = miva
        return listed

    def delete_adapters(self, adapter_names) -> None:
        """Delete adapters by name, MIVA and diffusers LoRA mixed."""
        miva, lora, _, _ = self._split_adapter_names(adapter_names, "delete_adapters")
        if miva:
            MIVALoaderMixin.delete_adapters(self, miva)
        if lora:
            AnimateDiffPipeline.delete_adapters(self, lora)

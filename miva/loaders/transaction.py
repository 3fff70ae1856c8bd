"""All-or-nothing adapter verbs: snapshot the adapter bookkeeping of a UNet, roll it back when a verb fails.

`with adapter_transaction(unet):` records which adapter modules every MIVA processor holds (references, no
copies) and the shared context's adapter fields; if the block raises, adapters it added are dropped, adapters it
removed are put back (the same modules, so their weights are bit-identical), and the context fields are restored.
What is fused is one immutable `FuseState` (`attention_processors/fusing.py`), so restoring the `fuse_state` field
restores it whole. Tensor values are not snapshotted: the verbs change them only after every check has passed
(`fuse` keeps its own bit-exact backups in its `FuseState`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..attention_processors import install_miva_processors

__all__ = ["adapter_transaction"]

# The context fields an adapter verb may change (per-call fields are scoped by the pipeline itself).
_CONTEXT_FIELDS = ("active", "parallel_mode", "enabled", "fuse_state", "attention_backend", "attention_op")


@contextlib.contextmanager
def adapter_transaction(unet: nn.Module) -> Iterator[None]:
    """Run the block all-or-nothing with respect to `unet`'s MIVA adapters (see the module docstring)."""
    context = install_miva_processors(unet)
    configs = dict(context.configs)
    fields = {name: _copy(getattr(context, name)) for name in _CONTEXT_FIELDS}
    banks = {layer: dict(processor.adapters) for layer, processor in context.processors.items()}
    try:
        yield
    except BaseException:
        for layer, processor in context.processors.items():
            before = banks.get(layer, {})
            if dict(processor.adapters) != before:
                for name in list(processor.adapters):
                    del processor.adapters[name]
                for name, module in before.items():  # same modules, same order
                    processor.adapters[name] = module
        context.configs.clear()
        context.configs.update(configs)
        for name, value in fields.items():
            setattr(context, name, value)
        raise


def _copy(value):
    return list(value) if isinstance(value, list) else value

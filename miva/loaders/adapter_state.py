"""The one adapter state-dict format, read and written by native adapter files and training checkpoints alike.

Keys are `<attention layer>.<part>`: the layer path as in `unet.attn_processors` without `.processor`, then the
parameter's path inside the adapter module (the adapter name is not part of the key), e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_lora.down.weight`. Learned words travel beside them as
`text_embeddings.<word>` in adapter files (`adapter_io.py`).

Training checkpoints written before this format was shared used the UNet's own parameter names
(`<layer>.processor.adapters.<name>.<part>`); :func:`native_adapter_keys` maps them, so they still resume.

`load_adapter_state` is the one strict loader (every key present with its shape, nothing unexpected, floating
point, finite) and `discard_adapter` the one way to remove an adapter's modules.
"""

from __future__ import annotations

import torch

from ..attention_processors import get_miva_adapter_modules, get_miva_context
from ..attention_processors.base import remove_adapter_everywhere
from ..guards import check_finite_tensor

__all__ = ["AdapterLayoutError", "adapter_state_dict", "check_adapter_state", "discard_adapter", "load_adapter_state", "native_adapter_keys"]

PROCESSOR_SUFFIX = ".processor"


class AdapterLayoutError(ValueError):
    """The tensors do not fit the UNet's adapter layout (missing or unexpected keys, other shapes): the usual sign of
    an adapter trained on another base model."""


def _layer_prefix(layer_name: str) -> str:
    return layer_name[: -len(PROCESSOR_SUFFIX)] if layer_name.endswith(PROCESSOR_SUFFIX) else layer_name


def adapter_state_dict(unet, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s tensors under native keys (`<layer>.<part>`), detached, sharing storage with the modules."""
    context = get_miva_context(unet)
    if name not in context.configs:
        raise ValueError(f"no adapter named {name!r}; loaded adapters: {list(context.configs)}")
    out = {}
    for layer, module in get_miva_adapter_modules(unet, name).items():
        prefix = _layer_prefix(layer)
        for key, tensor in module.state_dict().items():
            out[f"{prefix}.{key}"] = tensor
    return out


def native_adapter_keys(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """`tensors` with keys in the native format: `<layer>.processor.adapters.<name>.<part>` (training checkpoints
    written by miva before the formats were one) becomes `<layer>.<part>`; native keys are kept as they are."""
    marker = f"{PROCESSOR_SUFFIX}.adapters.{name}."
    return {key.replace(marker, ".", 1): tensor for key, tensor in tensors.items()}


def check_adapter_state(name: str, expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """`ValueError` naming the first missing or unexpected key, a shape that differs (both shapes), a non-float or
    non-finite tensor; `expected` is `adapter_state_dict` of the adapter to fill."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        key = missing[0]
        extra = f"; the file has {len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}" if unexpected else ""
        raise AdapterLayoutError(
            f"adapter {name!r}: missing key {key!r} (this UNet expects shape "
            f"{tuple(expected[key].shape)}); {len(missing)} missing in all{extra}"
        )
    if unexpected:
        key = unexpected[0]
        raise AdapterLayoutError(
            f"adapter {name!r}: unexpected key {key!r} of shape {tuple(tensors[key].shape)} (no such "
            f"adapter part in this UNet); {len(unexpected)} unexpected in all"
        )
    for key, target in expected.items():
        if tuple(tensors[key].shape) != tuple(target.shape):
            raise AdapterLayoutError(
                f"adapter {name!r}: key {key!r} has shape {tuple(tensors[key].shape)} in the file but "
                f"this UNet expects {tuple(target.shape)} (an adapter for a base model of another width?)"
            )
        if not tensors[key].is_floating_point():
            raise ValueError(f"adapter {name!r}: key {key!r} has dtype {tensors[key].dtype}, expected floating point")
        check_finite_tensor(f"adapter {name!r}: key {key!r}", tensors[key])


def load_adapter_state(unet, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` (native keys, or the older checkpoint keys) into the existing adapter `name`, strictly and
    exactly (cast to each parameter's device and dtype). Checked completely before anything is written."""
    expected = adapter_state_dict(unet, name)
    tensors = native_adapter_keys(tensors, name)
    check_adapter_state(name, expected, tensors)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])


def discard_adapter(unet, name: str) -> None:
    """Remove every trace of adapter `name`, even a half-built one (no error when there is none)."""
    context = getattr(unet, "miva_context", None)
    if context is not None:
        remove_adapter_everywhere(context, name)

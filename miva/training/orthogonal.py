"""Orthogonal adapters (docs/research.md#orthogonal-adapters): a seeded library of orthogonal bases, one per LoRA layer.

An adapter trained with `oa_bin_id = b` gets, in every LoRA delta (except cross-attention K/V, as in the research
code), `up := Q[:, b*r:(b+1)*r]` (frozen) and `down := 0` (trainable), where `Q` is that layer's `d x d` orthogonal
basis, `d = out_features`, `r` the rank and `b` taken modulo `d // r`. Adapters with different bins then write into
mutually orthogonal output subspaces (`U_i^T U_j = 0`), so they can be combined without interfering.

**Layer keys.** A library maps a *layer key* to its basis. Our key is the adapter-free name of a `LoRADelta`: its
module path in the UNet without `processor.adapters.<adapter name>.`, i.e. `<attention module>.<delta>`:

- `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out_lora` (spatial cross-attention; the full parameter
  is `...attn2.processor.adapters.<name>.to_out_lora.up.weight`);
- `down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q_lora` (motion-module temporal attention);
- on Wan2.1 (`WanTransformer3DModel`): `blocks.0.attn1.to_q_lora` (MotionLoRA on the 3-D self-attention) and
  `blocks.0.attn2.to_out_lora` (CA-LoRA on the text cross-attention).

Which attention layers carry LoRA deltas follows from the backbone's description (`layer_kind`) and its part table:
on the UNet the temporal and cross-attention (`attention_processors.parts`), on Wan the self- and cross-attention
(`backbones.wan.parts.WAN_PART_OF`). Cross-attention K/V are left free on every backbone.

The research library (a folder of `<key>.pt`, one `d x d` tensor each) names the same layers after its own UNet:
`...attn2.processor.to_out_lora` and
`...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora`.
`research_key_to_layer_key` maps them: drop `.processor`, drop `.temporal_transformer`, and rename
`attention_blocks.0/1` to `attn1/attn2` (diffusers' AnimateDiff conversion does the same for the motion modules).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from miva.attention_processors import LoRADelta
from miva.attention_processors.install import get_miva_context
from miva.attention_processors.parts import ADAPTER_PARTS, CROSS, LORA_DELTAS

__all__ = [
    "apply_orthogonal_bins",
    "create_bases_library",
    "layer_dims",
    "load_bases_library",
    "orthogonal_basis",
    "research_key_to_layer_key",
]

DELTA_NAMES = tuple(LORA_DELTAS)
LIBRARY_FORMAT = "miva-oa-bases"
_PROJECTIONS = LORA_DELTAS  # delta -> its projection (declared in attention_processors.parts)


# ------------------------------------------------------------------------------------------------- layer keys


def layer_key(layer_name: str, delta_name: str) -> str:
    """Our key of delta `delta_name` (e.g. "to_q_lora") at `layer_name` (a key of `unet.attn_processors`)."""
    return f"{layer_name.removesuffix('.processor')}.{delta_name}"


def research_key_to_layer_key(key: str) -> str:
    """Map a research library key to ours (keys already in our scheme are returned unchanged)."""
    return (
        key.replace(".processor.", ".")
        .replace(".temporal_transformer", "")
        .replace(".attention_blocks.0", ".attn1")
        .replace(".attention_blocks.1", ".attn2")
    )


def _lora_kinds(model: nn.Module):
    """`(backbone description, processor kinds whose adapter modules hold LoRA deltas)` of `model`."""
    from diffusers import WanTransformer3DModel

    context = getattr(model, "miva_context", None)
    if isinstance(model, WanTransformer3DModel):
        from miva.backbones.wan.backbone import wan_backbone
        from miva.backbones.wan.parts import WAN_PART_OF

        backbone = context.backbone if context is not None else wan_backbone(model)
        return backbone, {kind for kind, attribute in WAN_PART_OF if attribute in LORA_DELTAS}
    from miva.backbones.unet import ANIMATEDIFF_UNET

    backbone = context.backbone if context is not None else ANIMATEDIFF_UNET
    return backbone, {part.kind for part in ADAPTER_PARTS if set(LORA_DELTAS) <= set(part.attributes)}


def layer_dims(model: nn.Module) -> dict[str, int]:
    """`layer key -> d` (out_features) for every LoRA delta a MIVA adapter can have on `model`.

    UNet (`UNetMotionModel`): spatial cross-attention (attn2) and motion-module temporal attention carry Q/K/V/out
    deltas; spatial self-attention carries none (the cross-frame branch is not a LoRA). Wan
    (`WanTransformer3DModel`): every block's `attn1` (MotionLoRA) and `attn2` (CA-LoRA). Works with or without MIVA
    processors.
    """
    backbone, kinds = _lora_kinds(model)
    dims = {}
    for name, module in model.named_modules():
        if not hasattr(module, "set_processor") or backbone.layer_kind(f"{name}.processor") not in kinds:
            continue
        for delta_name, projection in _PROJECTIONS.items():
            linear = module.to_out[0] if projection == "to_out" else getattr(module, projection)
            linear = getattr(linear, "base_layer", linear)  # PEFT-wrapped projections
            dims[layer_key(f"{name}.processor", delta_name)] = linear.out_features
    return dims


# ------------------------------------------------------------------------------------------------- library


def _layer_seed(seed: int, key: str) -> int:
    """A per-layer seed from (seed, key): each basis depends only on its own key, not on the other layers."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def orthogonal_basis(d: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal `(d, d)` float32 matrix: the polar factor `U V^T` of a Gaussian `A = U S V^T`
    (computed in float64). Its columns are the basis vectors."""
    gaussian = torch.randn(d, d, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(gaussian)
    return (u @ vh).to(torch.float32).contiguous()


def create_bases_library(
    unet_or_layer_dims: nn.Module | Mapping[str, int], path: str | os.PathLike, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Draw one orthogonal `d x d` basis per LoRA layer and save them all in ONE safetensors file at `path`.

    `unet_or_layer_dims`: a `UNetMotionModel` or `WanTransformer3DModel` (layers found by `layer_dims`) or a mapping `layer key -> d`.
    Deterministic for a `seed` (each layer uses its own `torch.Generator`, never the global RNG). Returns
    `layer key -> (d, d)` float32 tensors.
    """
    dims = dict(unet_or_layer_dims) if isinstance(unet_or_layer_dims, Mapping) else layer_dims(unet_or_layer_dims)
    if not dims:
        raise ValueError("unet_or_layer_dims has no LoRA layers: pass a UNetMotionModel, a WanTransformer3DModel or {layer key: d}")
    for key, d in dims.items():
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(f"layer {key!r}: d={d!r} must be a positive int")
    bases = {}
    for key in sorted(dims):
        generator = torch.Generator().manual_seed(_layer_seed(seed, key))
        bases[key] = orthogonal_basis(dims[key], generator)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_file(bases, os.fspath(path), metadata={"format": LIBRARY_FORMAT, "seed": str(seed)})
    return bases


def _load_research_file(file: str) -> torch.Tensor:
    try:
        value = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{file} needs more than torch.load(weights_only=True) and is refused: {error}") from None
    if not torch.is_tensor(value) or value.ndim != 2 or value.shape[0] != value.shape[1]:
        what = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{file} must hold one square (d, d) basis tensor, found {what}")
    return value.float()


def load_bases_library(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a bases library: our safetensors file, or the research layout (a folder of `<research key>.pt`).

    Research keys are mapped to ours (`research_key_to_layer_key`). `.pt` files are read only with
    `torch.load(weights_only=True)`. Returns `layer key -> (d, d)` float32 tensors.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".pt"))
        if not files:
            raise ValueError(f"{path} holds no <layer key>.pt files (research bases layout)")
        raw = {f[: -len(".pt")]: _load_research_file(os.path.join(path, f)) for f in files}
    elif os.path.isfile(path):
        raw = load_file(path)
    else:
        raise FileNotFoundError(f"bases library {path!r} is neither a safetensors file nor a folder of .pt files")
    bases = {}
    for key, value in raw.items():
        ours = research_key_to_layer_key(key)
        if ours in bases:
            raise ValueError(f"{path}: keys {key!r} and another file both map to layer key {ours!r}")
        bases[ours] = value
    return bases


# ------------------------------------------------------------------------------------------------ applying


def apply_orthogonal_bins(
    unet: nn.Module, adapter_name: str, bases: Mapping[str, torch.Tensor], bin_id: int | None = None
) -> dict[str, int]:
    """Constrain adapter `adapter_name` to bin `bin_id` (default: its config's `oa_bin_id`).

    For every `LoRADelta` of the adapter except cross-attention K/V (research `ignore_ca_kv`): `up.weight :=
    bases[key][:, b*r:(b+1)*r]` with `b = bin_id mod (d // r)`, frozen (`requires_grad=False`); `down.weight := 0`,
    trainable. The adapter's output is unchanged at zero until `down` trains. Everything is checked before any
    weight changes. Returns `layer key -> bin used` (the bin after the modulo, per layer).
    """
    context = get_miva_context(unet)
    if adapter_name not in context.configs:
        raise ValueError(f"adapter_name={adapter_name!r} is not loaded; loaded adapters: {list(context.configs)}")
    if bin_id is None:
        bin_id = context.configs[adapter_name].oa_bin_id
        if bin_id is None:
            raise ValueError(f"bin_id=None and adapter {adapter_name!r} has oa_bin_id=None: pass a bin")
    if isinstance(bin_id, bool) or not isinstance(bin_id, int) or bin_id < 0:
        raise ValueError(f"bin_id={bin_id!r} must be a non-negative int")

    plan = []
    for layer_name, processor in context.processors.items():
        if adapter_name not in processor.adapters:
            continue
        for delta_name, lora in processor.adapters[adapter_name].named_modules():
            if not isinstance(lora, LoRADelta):
                continue
            if processor.adapters[adapter_name].part_kind == CROSS and delta_name in ("to_k_lora", "to_v_lora"):
                continue  # the text-side deltas stay free (research ignore_ca_kv=True)
            key = layer_key(layer_name, delta_name)
            if key not in bases:
                raise ValueError(
                    f"the bases library has no layer key {key!r} (needed by adapter {adapter_name!r}); "
                    "create the library for this model with create_bases_library(model, path) or `miva bases create`"
                )
            basis, d, rank = bases[key], lora.out_features, lora.rank
            if tuple(basis.shape) != (d, d):
                raise ValueError(
                    f"layer {key!r}: basis shape {tuple(basis.shape)} does not match the LoRA up weight "
                    f"{tuple(lora.up.weight.shape)}: expected ({d}, {d}) (d = out_features)"
                )
            if rank > d:
                raise ValueError(f"layer {key!r}: rank {rank} exceeds d={d}; no bin of {rank} columns fits")
            plan.append((key, lora, basis, (bin_id % (d // rank)) * rank))

    if not plan:
        raise ValueError(f"adapter {adapter_name!r} has no LoRA deltas for orthogonal bin {bin_id} to constrain: "
                         "orthogonal adapters need MotionLoRA (use_motion_lora) or CA-LoRA (use_ca_lora)")
    used = {}
    with torch.no_grad():
        for key, lora, basis, start in plan:
            up, down = lora.up.weight, lora.down.weight
            up.copy_(basis[:, start : start + lora.rank].to(device=up.device, dtype=up.dtype))
            down.zero_()
            used[key] = start // lora.rank
    for _, lora, _, _ in plan:
        lora.up.weight.requires_grad_(False)
        lora.down.weight.requires_grad_(True)
    return used

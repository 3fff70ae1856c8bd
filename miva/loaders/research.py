"""Exact import of research checkpoints (docs/research.md#research-checkpoints) as native MIVA adapters.

Key mapping, research `UNet3DConditionModel` -> our native file keys (diffusers `UNetMotionModel` layer names).
The block prefixes are identical: AnimateDiff builds its 3-D UNet from SD1.5's config, so `down_blocks.0-3`,
`mid_block` and `up_blocks.0-3` keep SD's order and indices in both (up block i is the same resolution in both;
`up_blocks.0` has no attentions; up blocks 1-3 have `attentions.0-2`; every down/up block has `motion_modules.j`,
one per resnet; the research v3 mid block has no motion module, and a `mid_block.motion_modules.0` key would map by
the same rule to diffusers' optional mid-block motion module). Inside a motion module, research
`temporal_transformer.transformer_blocks.t.attention_blocks.K` is diffusers `transformer_blocks.t.attn{K+1}` (the
rule of diffusers' own AnimateDiff converter):

| research key | native key |
|---|---|
| `B.attentions.j.transformer_blocks.t.attn2.processor.to_k_lora.down.weight` | `B.attentions.j.transformer_blocks.t.attn2.to_k_lora.down.weight` |
| `B.motion_modules.j.temporal_transformer.transformer_blocks.0.attention_blocks.K.processor.to_q_lora.up.weight` | `B.motion_modules.j.transformer_blocks.0.attn{K+1}.to_q_lora.up.weight` |
| `... .attention_blocks.K.processor.motion_embed.weight` `(16, C)` | `... .attn{K+1}.motion_embed` `(max_frames, C)`, zero rows added |
| `B.attentions.j.transformer_blocks.t.i2v_adapter.to_out.0.weight` / `.bias` | `B.attentions.j.transformer_blocks.t.attn1.to_out.weight` / `.bias` |
| `... .i2v_adapter.to_q.weight` | `... .attn1.to_q.weight` (only when it differs from attn1's: `i2v_train_q`) |

Multi-adapter research state dicts (what the research inference builds from N checkpoints, docs/research.md#research-checkpoints) carry
an index: `i2v_adapters.{i}.`, `processor.processors.{i}.` (motion) and `to_k_loras.{i}.` / `to_v_loras.{i}.` /
`to_out_loras.{i}.` (cross-attention; `to_q_lora` is never renamed). :func:`remap_research_keys_for_index`
applies that renaming; the importer accepts both forms and picks one adapter with `adapter_index`.

Semantics converted exactly:

- CA out-LoRA is applied after W_O in the research code, `y' = y + s up(down(y))` with `y = W_O a + b`. That is
  `W_O a + b + s up((down W_O) a) + s up(down(b))`: our standard placement with `down' = down @ W_O` plus the
  constant `to_out_bias = s up(down(b))` (config `ca_out_lora_bias=True`). Without out-LoRA keys (`remove_WO`)
  the out delta is zero.
- The I2V branch's optional Q-/out-LoRAs fold into its dense `to_q` / `to_out` (out-LoRA after W_O:
  `W' = (I + D) W`, `b' = (I + D) b`). Its K/V are attn1's (checked against the base when it is known).
- Spatiotemporal Q and positional encodings: every imported adapter gets `pe_style="research"`, with or without
  `ca_pe_mode`: the research query grid (nearest `F.interpolate` to `(H // r, W // r)` and back, docs/research.md#spatiotemporal-query;
  miva's standard grid is `ceil(H / r)` and differs when r does not divide the latent size) and the docs/research.md#positional-encodings
  quirks (additive rotary, positive-exponent sinusoid, token-major K/V tiling, bug B1).

Not reproduced (documented deviations): the frozen random `attn_temp` bias of `unet_use_temporal_attention`
(a base-model artefact, docs/research.md#base-model), the sequential out-LoRA order of multi-adapter `"weights"` mode and the
research multi-adapter bugs (B2, CFG swap); imported adapters run with our multi-adapter semantics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import torch

from ..attention_processors.adapter_config import MIVAAdapterConfig
from ..attention_processors.parts import LORA_DELTAS, MOTION_EMBED_PART, MOTION_LORA_PART
from .research_keys import ResearchKey, needed_base_key, parse_research_key, remap_research_keys_for_index

__all__ = [
    "ResearchKey",
    "base_weights_from_unet",
    "convert_research_state_dict",
    "fill_mid_block_motion",
    "needed_base_key",
    "parse_research_key",
    "remap_research_keys_for_index",
]

logger = logging.getLogger(__name__)


def base_weights_from_unet(unet) -> dict[str, torch.Tensor]:
    """The base weights :func:`convert_research_state_dict` may need, from a diffusers `UNetMotionModel`."""
    return {k: v for k, v in unet.state_dict().items() if needed_base_key(k) and ".processor." not in k}


# ------------------------------------------------------------------------------------------------- conversion


def _select(entries: list[tuple[str, ResearchKey, torch.Tensor]], adapter_index: int | None):
    indices = sorted({p.index for _, p, _ in entries if p.index is not None})
    if not indices:
        if adapter_index not in (None, 0):
            raise ValueError(f"adapter_index={adapter_index} but the checkpoint holds a single adapter (use 0 or None)")
        return entries
    if adapter_index is None:
        if len(indices) > 1:
            raise ValueError(f"the checkpoint holds {len(indices)} adapters (indices {indices}); pass adapter_index")
        adapter_index = indices[0]
    if adapter_index not in indices:
        raise ValueError(f"adapter_index={adapter_index} is not in the checkpoint; it holds adapters {indices}")
    chosen = []
    for key, parsed, value in entries:
        if parsed.index == adapter_index:
            chosen.append((key, parsed, value))
        elif parsed.index is None:
            if parsed.kind == "ca" and parsed.part.startswith("to_q_lora"):
                chosen.append((key, parsed, value))  # never renamed by the research loader: shared by every index
            else:
                raise ValueError(f"key {key!r} has no adapter index in a multi-adapter checkpoint (indices {indices})")
    return chosen


def _base(base: Mapping[str, torch.Tensor], key: str, needed_for: str) -> torch.Tensor:
    if key not in base:
        raise ValueError(
            f"{needed_for} needs the base weight {key!r}: pass the UNet (or a research full-UNet "
            "checkpoint, which holds it)"
        )
    return base[key]


def _check_shape(key: str, tensor: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{key}: checkpoint shape {tuple(tensor.shape)} does not fit {what} shape {tuple(expected)} "
            "(an adapter trained for a base model of another width?)"
        )


def _check_research_parts(groups: dict[str, dict[str, dict[str, torch.Tensor]]]) -> None:
    """Every research tensor is a finite float tensor of the rank its role needs, LoRA `down`/`up` come in pairs that
    chain (`up (out, r) @ down (r, in)`), and the I2V output LoRA fits the branch's `to_out`; `ValueError` naming the
    key otherwise (instead of an `IndexError` or a matmul error deep inside the conversion)."""
    from ..guards import check_finite_tensor

    for kind, layers in groups.items():
        for layer, parts in layers.items():
            for part, tensor in parts.items():
                key = f"{layer} {kind} {part}"
                if not torch.is_tensor(tensor) or not tensor.is_floating_point():
                    raise ValueError(f"research key {key}: dtype {getattr(tensor, 'dtype', type(tensor).__name__)}, "
                                     "expected a floating-point tensor")
                ndim = 1 if part.endswith("bias") else 2
                if tensor.ndim != ndim or 0 in tensor.shape:
                    raise ValueError(f"research key {key}: shape {tuple(tensor.shape)}, expected a non-empty "
                                     f"{ndim}-d tensor")
                check_finite_tensor(f"research key {key}", tensor)
            for proj in {p.split("_lora.")[0] for p in parts if "_lora." in p}:
                down, up = parts.get(f"{proj}_lora.down.weight"), parts.get(f"{proj}_lora.up.weight")
                if down is None or up is None:
                    have, lacks = ("up", "down") if down is None else ("down", "up")
                    raise ValueError(f"research key {layer} {kind} {proj}_lora: has {have}.weight but lacks "
                                     f"{lacks}.weight (a LoRA needs both)")
                if up.shape[1] != down.shape[0]:
                    raise ValueError(f"research key {layer} {kind} {proj}_lora: up {tuple(up.shape)} and down "
                                     f"{tuple(down.shape)} do not chain (up's columns must equal down's rows, the rank)")
            if kind == "i2v" and "to_out_lora.down.weight" in parts and "to_out.0.weight" in parts:
                out_rows = parts["to_out.0.weight"].shape[0]
                lora = (parts["to_out_lora.up.weight"].shape[0], parts["to_out_lora.down.weight"].shape[1])
                if lora != (out_rows, out_rows):
                    raise ValueError(f"research key {layer} i2v to_out_lora: delta {lora} does not fit to_out.0 "
                                     f"with {out_rows} outputs (expected ({out_rows}, {out_rows}))")
            if kind == "i2v" and "to_out.0.bias" in parts and "to_out.0.weight" in parts:
                if parts["to_out.0.bias"].shape[0] != parts["to_out.0.weight"].shape[0]:
                    raise ValueError(f"research key {layer} i2v to_out.0.bias: shape "
                                     f"{tuple(parts['to_out.0.bias'].shape)} does not match to_out.0.weight "
                                     f"{tuple(parts['to_out.0.weight'].shape)}")


def _single_rank(groups: dict[str, dict[str, torch.Tensor]], what: str) -> int:
    ranks = {}
    for layer, parts in groups.items():
        for part, t in parts.items():
            if part.endswith("_lora.down.weight"):
                ranks.setdefault(t.shape[0], f"{layer}.{part} {tuple(t.shape)}")
    if len(ranks) > 1:
        raise ValueError(f"{what} LoRAs of different ranks in one adapter: {sorted(ranks.values())}")
    return next(iter(ranks))


def _lora_scale(alpha: float | None, rank: int) -> float:
    return 1.0 if alpha is None else alpha / rank


def _convert_ca(groups, cfg: MIVAAdapterConfig, base, native) -> dict:
    rank = _single_rank(groups, "cross-attention")
    s = _lora_scale(cfg.ca_lora_scale, rank)
    with_out = [layer for layer, parts in groups.items() if "to_out_lora.down.weight" in parts]
    with_q = [layer for layer, parts in groups.items() if "to_q_lora.down.weight" in parts]
    for present, name in ((with_out, "to_out_lora"), (with_q, "to_q_lora")):
        if present and len(present) != len(groups):
            missing = sorted(set(groups) - set(present))[0]
            raise ValueError(f"{missing}: research CA-LoRA layer lacks {name} while other layers have it")
    for layer, parts in groups.items():
        for proj in ("to_k_lora", "to_v_lora") + (("to_q_lora",) if with_q else ()):
            for w in ("down", "up"):
                part = f"{proj}.{w}.weight"
                if part not in parts:
                    raise ValueError(f"research CA-LoRA layer {layer} lacks {part}")
                native[f"{layer}.{part}"] = parts[part]
        inner = parts["to_k_lora.up.weight"].shape[0]
        if not with_out:  # remove_WO: the research model had no out delta
            native[f"{layer}.to_out_lora.down.weight"] = parts["to_k_lora.down.weight"].new_zeros(rank, inner)
            native[f"{layer}.to_out_lora.up.weight"] = parts["to_k_lora.down.weight"].new_zeros(inner, rank)
            continue
        down, up = parts["to_out_lora.down.weight"], parts["to_out_lora.up.weight"]
        w_o = _base(base, f"{layer}.to_out.0.weight", f"CA out-LoRA conversion of {layer}")
        b_o = _base(base, f"{layer}.to_out.0.bias", f"CA out-LoRA conversion of {layer}")
        _check_shape(f"{layer}.processor.to_out_lora.down.weight", down, (rank, w_o.shape[0]), "the base W_O output")
        d64, w64, b64 = down.double(), w_o.double(), b_o.double()
        native[f"{layer}.to_out_lora.down.weight"] = (d64 @ w64).to(down.dtype)  # down' = down @ W_O
        native[f"{layer}.to_out_lora.up.weight"] = up
        native[f"{layer}.to_out_bias"] = (s * (up.double() @ (d64 @ b64))).to(up.dtype)  # s up(down(b_O))
    return {
        "use_ca_lora": True,
        "ca_mode": "lora",
        "ca_lora_rank": rank,
        "use_q_lora": bool(with_q),
        "ca_out_lora_bias": bool(with_out),
    }


def _convert_motion(groups, max_frames: int, native) -> dict:
    lora = {layer: parts for layer, parts in groups.items() if any(p.endswith("_lora.down.weight") for p in parts)}
    updates = {"use_motion_lora": bool(lora), "use_motion_embed": False}
    if lora:
        updates["motion_lora_rank"] = _single_rank(lora, "motion")
    for layer, parts in groups.items():
        for part, tensor in parts.items():
            if part != "motion_embed":
                native[f"{layer}.{part}"] = tensor
                continue
            updates["use_motion_embed"] = True
            if tensor.ndim != 2 or tensor.shape[0] > max_frames:
                raise ValueError(
                    f"{layer} motion_embed: checkpoint shape {tuple(tensor.shape)} does not fit "
                    f"(at most {max_frames} frames, channels)"
                )
            padded = tensor.new_zeros(max_frames, tensor.shape[1])
            padded[: tensor.shape[0]] = tensor  # the research table has video_length rows; later frames get zero
            native[f"{layer}.motion_embed"] = padded
    return updates


def _fold_lora(parts, proj: str, scale: float) -> torch.Tensor | None:
    """Dense `s up @ down` of an I2V LoRA, or None."""
    down, up = parts.get(f"{proj}_lora.down.weight"), parts.get(f"{proj}_lora.up.weight")
    if down is None and up is None:
        return None
    if down is None or up is None:
        raise ValueError(f"I2V {proj}_lora needs both down and up weights")
    return scale * (up.double() @ down.double())


def _convert_i2v(groups, base, native, i2v_lora_scale: float | None) -> dict:
    train_q = {}
    for layer, parts in groups.items():
        for part in ("to_out.0.weight", "to_out.0.bias"):
            if part not in parts:
                raise ValueError(f"research I2V adapter at {layer} lacks i2v_adapter.{part}")
        w_out, b_out = parts["to_out.0.weight"], parts["to_out.0.bias"]
        rank = next((parts[p].shape[0] for p in ("to_out_lora.down.weight", "to_q_lora.down.weight") if p in parts), 1)
        d_out = _fold_lora(parts, "to_out", _lora_scale(i2v_lora_scale, rank))
        if d_out is not None:  # after W_O: (I + D)(W a + b)
            w_out = (w_out.double() + d_out @ w_out.double()).to(w_out.dtype)
            b_out = (b_out.double() + d_out @ b_out.double()).to(b_out.dtype)
        native[f"{layer}.to_out.weight"], native[f"{layer}.to_out.bias"] = w_out, b_out
        for part in ("weight_module.weight", "weight_module.bias"):
            if part in parts:
                native[f"{layer}.{part}"] = parts[part]
        for proj in ("to_k", "to_v"):
            if f"{proj}.weight" in parts and f"{layer}.{proj}.weight" in base:
                mine, ref = parts[f"{proj}.weight"], base[f"{layer}.{proj}.weight"]
                _check_shape(f"{layer}.i2v_adapter.{proj}.weight", mine, ref.shape, f"this UNet's {layer}.{proj}")
                if not torch.allclose(mine.float(), ref.float(), rtol=1e-3, atol=1e-5):
                    raise ValueError(
                        f"{layer}: the I2V adapter's {proj}.weight differs from this base's attn1 "
                        f"{proj}.weight (max |diff| {(mine.float() - ref.float()).abs().max():.3g}); "
                        "the checkpoint was trained on another base model"
                    )
        q = parts.get("to_q.weight")
        q = base.get(f"{layer}.to_q.weight") if q is None else q
        d_q = _fold_lora(parts, "to_q", _lora_scale(i2v_lora_scale, rank))
        if q is None and d_q is not None:
            raise ValueError(f"I2V Q-LoRA at {layer} needs the branch's to_q: pass the UNet")
        if d_q is not None:
            q = (q.double() + d_q).to(q.dtype)
        if q is not None:
            train_q[layer] = q
            ref = base.get(f"{layer}.to_q.weight")
            if ref is not None and tuple(ref.shape) != tuple(q.shape):
                _check_shape(f"{layer}.i2v_adapter.to_q.weight", q, ref.shape, f"this UNet's {layer}.to_q")
    differs = {
        layer
        for layer, q in train_q.items()
        if f"{layer}.to_q.weight" not in base or not torch.equal(q.float(), base[f"{layer}.to_q.weight"].float())
    }
    if differs:
        missing = sorted(set(groups) - set(train_q))
        if missing:
            raise ValueError(f"I2V adapter at {missing[0]} has no to_q (and the base is unknown) while others do")
        for layer, q in train_q.items():
            native[f"{layer}.to_q.weight"] = q
    return {"use_i2v": True, "i2v_train_q": bool(differs)}


def convert_research_state_dict(
    tensors: Mapping[str, torch.Tensor],
    *,
    base: Mapping[str, torch.Tensor] | None = None,
    config: MIVAAdapterConfig | None = None,
    adapter_index: int | None = None,
    max_frames: int = 32,
    i2v_lora_scale: float | None = 1.0,
) -> tuple[MIVAAdapterConfig, dict[str, torch.Tensor]]:
    """Convert research adapter tensors to `(config, native tensors)` (native keys as in `adapter_io`).

    Args:
        tensors: research UNet keys (split checkpoints merged, or the adapter keys of a full UNet).
        base: base weights (`needed_base_key`): the full checkpoint's own, else `base_weights_from_unet(unet)`.
            Needed for the CA out-LoRA (`W_O`, `b_O`); used to check/skip the I2V K/V/Q copies.
        config: what the tensors do not tell (LoRA alphas `ca_lora_scale` / `motion_lora_scale`, STQ, `ca_pe_mode`,
            `sa_mode`, ...; defaults when None). Components, ranks, `use_q_lora`, `i2v_train_q` come from the tensors;
            `pe_style` is always `"research"` (research STQ grid and PE formulas).
        adapter_index: which adapter of a multi-adapter state dict (indexed keys).
        max_frames: rows of our motion embedding (the UNet's `motion_max_seq_length`).
        i2v_lora_scale: network_alpha of the research I2V Q/out LoRAs (folded into the dense weights).
    """
    cfg = config or MIVAAdapterConfig()
    base = base or {}
    entries = [(k, p, v) for k, v in tensors.items() if (p := parse_research_key(k)) is not None]
    if not entries:
        raise ValueError("no research adapter keys found (expected e.g. '...attn2.processor.to_k_lora.down.weight')")
    groups: dict[str, dict[str, dict[str, torch.Tensor]]] = {"ca": {}, "motion": {}, "i2v": {}}
    for key, parsed, value in _select(entries, adapter_index):
        layer = groups[parsed.kind].setdefault(parsed.layer, {})
        if parsed.part in layer:
            raise ValueError(f"key {key!r} maps to {parsed.layer}.{parsed.part}, which another key already set")
        layer[parsed.part] = value
    _check_research_parts(groups)
    native: dict[str, torch.Tensor] = {}
    updates = {
        "use_ca_lora": False,
        "use_motion_lora": False,
        "use_motion_embed": False,
        "use_i2v": False,
        "ca_out_lora_bias": False,
    }
    if groups["ca"]:
        updates.update(_convert_ca(groups["ca"], cfg, base, native))
    if groups["motion"]:
        updates.update(_convert_motion(groups["motion"], max_frames, native))
    if groups["i2v"]:
        updates.update(_convert_i2v(groups["i2v"], base, native, i2v_lora_scale))
    updates["pe_style"] = "research"  # the research grid and PE quirks, also without a PE mode (cross_attention.py)
    return dataclasses.replace(cfg, **updates), native


def fill_mid_block_motion(unet, config: MIVAAdapterConfig, native: dict[str, torch.Tensor]) -> list[str]:
    """Zero MotionLoRA / motion-embedding entries for the UNet's mid-block motion module, which the research model
    (AnimateDiff v3 layout, docs/research.md#base-model) does not have: a zero delta there is "no adapter", as in the research model.
    Only layers with no entry at all are filled; returns their names."""
    lora, embed = MOTION_LORA_PART.enabled(config), MOTION_EMBED_PART.enabled(config)
    if not (lora or embed):
        return []
    max_frames = int(getattr(unet.config, "motion_max_seq_length", None) or 32)
    filled = []
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        if not layer.startswith("mid_block.motion_modules.") or any(k.startswith(layer + ".") for k in native):
            continue
        attn = unet.get_submodule(layer)
        if lora:
            rank = config.motion_lora_rank
            for delta, proj in LORA_DELTAS.items():
                linear = attn.to_out[0] if proj == "to_out" else getattr(attn, proj)
                native[f"{layer}.{delta}.down.weight"] = torch.zeros(rank, linear.in_features)
                native[f"{layer}.{delta}.up.weight"] = torch.zeros(linear.out_features, rank)
        if embed:
            native[f"{layer}.motion_embed"] = torch.zeros(max_frames, attn.to_q.in_features)
        filled.append(layer)
    return filled

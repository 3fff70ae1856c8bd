"""Importing checkpoints of the official MIVA Wan2.1 release into miva's native adapter format.

The official training saves a flat torch checkpoint of the trainable DiT parameters, keys relative to the DiT:

| official key | native key (miva) |
|---|---|
| `blocks.<i>.i2v_adapter.{q,k,v,o}.{weight,bias}`, `.norm_q.weight`, `.norm_k.weight` | `blocks.<i>.attn1.<same>` |
| `blocks.<i>.i2v_adapter.weight_module.linear.{weight,bias}` (`adaptive_T`) | `blocks.<i>.attn1.<same>` |
| `blocks.<i>.cross_attn.{CA2,CA3,CA_norm}.{weight,bias}` (`CA_mode="simple"`) | `blocks.<i>.attn2.<same>` |

Its settings are only in the run's YAML (`dit_kwargs`): `SA_mode`, `SA_kwargs.sa_first_frame_scale`, `CA_mode`,
`CA_kwargs.{rank, act, norm_mid, use_out, bias}`. Branch parameters the checkpoint lacks (frozen copies: `q`, `k`,
`v`, `norm_q`, `norm_k`) are rebuilt from the base's self-attention, as the official loader does; `o`, the weight
module and the implicit prompt's layers must be present. Assumptions about the official code are in docs/wan.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ...attention_processors.adapter_config import SA_MODES
from .config import IMPLICIT_ACTIVATIONS, WanAdapterConfig

__all__ = ["convert_official_wan_state_dict", "official_wan_config"]

_BRANCH_KEY = re.compile(r"^blocks\.(\d+)\.i2v_adapter\.(.+)$")
_IMPLICIT_KEY = re.compile(r"^blocks\.(\d+)\.cross_attn\.((?:CA2|CA3|CA_norm)\.(?:weight|bias))$")
_FROM_BASE = {"q": "to_q", "k": "to_k", "v": "to_v", "norm_q": "norm_q", "norm_k": "norm_k"}
_CA_MODES = {"simple": "implicit", "vanilla": "lora"}
_STRIP_PREFIXES = ("module.", "dit.", "model.")


def _section(settings: Mapping[str, Any], key: str) -> Any:
    """`settings[key]`, looked up in `settings["dit_kwargs"]` first (a whole YAML) and then at the top level."""
    dit = settings.get("dit_kwargs")
    if isinstance(dit, Mapping) and key in dit:
        return dit[key]
    return settings.get(key)


def official_wan_config(settings: Mapping[str, Any], *, research_exact_first: bool = False,
                        implicit_bias: bool | None = None) -> WanAdapterConfig:
    """The `WanAdapterConfig` of an official run: `settings` is its YAML (a dict with `dit_kwargs`) or `dit_kwargs`
    itself. `implicit_bias`: what the checkpoint says when the YAML has no `CA_kwargs.bias`."""
    if not isinstance(settings, Mapping):
        raise TypeError(f"official_config must be the run's YAML or its dit_kwargs as a dict, got "
                        f"{type(settings).__name__}")
    sa_mode = _section(settings, "SA_mode")
    if isinstance(sa_mode, str) and sa_mode.lower() in ("none", "null", ""):
        sa_mode = None
    if sa_mode is not None and sa_mode not in SA_MODES:
        raise ValueError(f"dit_kwargs.SA_mode={sa_mode!r} is not one of {list(SA_MODES)} (or null for no branch)")
    sa_kwargs = _section(settings, "SA_kwargs") or {}
    scale = sa_kwargs.get("sa_first_frame_scale", 0.5)
    ca_mode = _section(settings, "CA_mode") or "vanilla"
    if ca_mode not in _CA_MODES:
        raise ValueError(f"dit_kwargs.CA_mode={ca_mode!r} is not one of {list(_CA_MODES)}")
    ca_kwargs = dict(_section(settings, "CA_kwargs") or {})
    if ca_kwargs.get("use_out", True) is not True:
        raise ValueError(f"dit_kwargs.CA_kwargs.use_out={ca_kwargs['use_out']!r} is not supported: miva's implicit "
                         "prompt always ends in its zero-initialised output layer CA3 (use_out: true)")
    act = ca_kwargs.get("act", "gelu")
    if act not in IMPLICIT_ACTIVATIONS:
        raise ValueError(f"dit_kwargs.CA_kwargs.act={act!r} is not one of {list(IMPLICIT_ACTIVATIONS)}")
    bias = ca_kwargs.get("bias", True if implicit_bias is None else implicit_bias)
    if implicit_bias is not None and ca_mode == "simple" and bool(bias) != implicit_bias:
        raise ValueError(f"dit_kwargs.CA_kwargs.bias={bias!r} but the checkpoint "
                         f"{'has' if implicit_bias else 'has no'} CA2/CA3 biases")
    return WanAdapterConfig(
        use_i2v=sa_mode is not None, sa_mode=sa_mode or "first", sa_first_frame_scale=scale,
        ca_mode=_CA_MODES[ca_mode], implicit_rank=int(ca_kwargs.get("rank", 64)), implicit_act=act,
        implicit_norm=bool(ca_kwargs.get("norm_mid", True)), implicit_bias=bool(bias),
        research_exact_first=research_exact_first,
    )


def _strip(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in tensors.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix) and not key.startswith("blocks."):
                key = key[len(prefix):]
        out[key] = tensor
    return out


def convert_official_wan_state_dict(tensors: Mapping[str, torch.Tensor], *, base, official_config: Mapping[str, Any],
                                    research_exact_first: bool = False) -> tuple[WanAdapterConfig, dict]:
    """`(WanAdapterConfig, native tensors)` of an official MIVA-Wan checkpoint (flat, keys relative to the DiT;
    a `module.` / `dit.` / `model.` prefix is dropped) and its run settings, for the `WanTransformer3DModel`
    `base` (whose self-attention supplies the frozen branch copies the checkpoint does not hold).

    `research_exact_first=True` keeps the official `first`-mode bug (frame i sees only the i-th 1/F slice of frame
    0's tokens); the default computes `first` as intended (every frame sees all of frame 0)."""
    tensors = _strip(tensors)
    has_ca_bias = any(k.endswith(("CA2.bias", "CA3.bias")) for k in tensors)
    has_ca = any(_IMPLICIT_KEY.match(k) for k in tensors)
    config = official_wan_config(official_config, research_exact_first=research_exact_first,
                                 implicit_bias=has_ca_bias if has_ca else None)
    native: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        branch, implicit = _BRANCH_KEY.match(key), _IMPLICIT_KEY.match(key)
        if branch and config.use_i2v:
            if branch[2].startswith("weight_module.") and config.sa_mode != "first_prev":
                continue  # the first-frame weight acts only in first_prev: an unused layer
            native[f"blocks.{branch[1]}.attn1.{branch[2]}"] = tensor
        elif implicit and config.ca_mode == "implicit":
            native[f"blocks.{implicit[1]}.attn2.{implicit[2]}"] = tensor
        else:
            what = ("its run has no cross-frame branch (SA_mode)" if branch else
                    "its run's CA_mode is 'vanilla'" if implicit else "miva imports only the i2v_adapter and the "
                    "implicit prompt (CA2 / CA_norm / CA3)")
            raise ValueError(f"official checkpoint key {key!r} cannot be imported: {what}")
    blocks = len(base.blocks)
    for index in range(blocks):
        if config.use_i2v:
            _complete_branch(native, index, base.blocks[index].attn1, config)
        if config.ca_mode == "implicit":
            needed = ["CA2.weight", "CA3.weight"] + (["CA2.bias", "CA3.bias"] if config.implicit_bias else [])
            needed += ["CA_norm.weight", "CA_norm.bias"] if config.implicit_norm else []
            _require(native, f"blocks.{index}.attn2", needed, "cross_attn")
    extra = [k for k in native if int(k.split(".")[1]) >= blocks]
    if extra:
        raise ValueError(f"official checkpoint key for block {extra[0].split('.')[1]} ({extra[0]!r}), but the base "
                         f"has {blocks} blocks: a checkpoint for another Wan size")
    return config, native


def _require(native, prefix: str, names: list[str], official: str) -> None:
    for name in names:
        if f"{prefix}.{name}" not in native:
            block = prefix.split(".")[1]
            raise ValueError(f"official checkpoint lacks 'blocks.{block}.{official}.{name}', needed by its run "
                             "settings (is it the checkpoint of that run?)")


def _complete_branch(native, index: int, attn, config: WanAdapterConfig) -> None:
    """Fill the frozen copies the checkpoint does not hold from the base self-attention; check the trained parts."""
    prefix = f"blocks.{index}.attn1"
    for part, base_name in _FROM_BASE.items():
        for tensor_name, tensor in getattr(attn, base_name).state_dict().items():
            native.setdefault(f"{prefix}.{part}.{tensor_name}", tensor.detach().clone())
    needed = ["o.weight", "o.bias"]
    if config.first_frame_scale_kind == "adaptive" and config.sa_mode == "first_prev":
        needed += ["weight_module.linear.weight", "weight_module.linear.bias"]
    _require(native, prefix, needed, "i2v_adapter")

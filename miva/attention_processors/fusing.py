"""Merging the active adapters' LoRA deltas into the base attention weights, and restoring them bit-exactly.

Fusing implements the `"weights"` composition (docs/research.md#multi-adapter): every projection gets
`W <- W + sum_i w_i * up_i @ down_i * alpha_i / rank_i`, so one ordinary matmul replaces the base matmul plus N
low-rank deltas. Our out delta reads the attention output (the input of `W_O`), so it merges into `to_out[0]` like
the others; the constant `to_out_bias` of imported research adapters merges into `to_out[0].bias`.

What cannot be merged keeps running in the processors with the fused weight: the cross-frame (I2V) branch, the motion
embedding, spatiotemporal Q with its positional encodings and the implicit prompt. What is merged is one record, the
context's `FuseState` (as PEFT's `merged_adapters`): the processors ask it one question, `merged(name, part)`, and
leave merged deltas out of their branches; no adapter module changes. The adapter verbs' transaction snapshots it
whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..guards import check_float
from .composition import FUSED_MODE, check_fusable_mode, check_not_fused
from .install import _attention_modules, get_miva_context
from .lora import LoRADelta
from .parts import ADAPTER_PARTS, CA_LORA_PART, IMPLICIT_PART, AdapterPart


@dataclass(frozen=True)
class FuseState:
    """What is fused into the base weights, the one record of it (`context.fuse_state`; None: nothing is).

    - `fused`: `(name, weight)` of the fused adapters, in activation order;
    - `parts`: `(adapter name, part name)` of every part whose deltas are in the base weights;
    - `backups`: bit-exact copies of every changed tensor, `(Linear, "weight" | "bias", copy)`;
    - `parallel_mode`: the mode before fusing (fused adapters compose as `FUSED_MODE`), and `active_before`: the
      active `(name, weight)` before `fuse_miva_adapters(scale=...)` scaled them; both come back on unfusing.
    """

    fused: tuple[tuple[str, float], ...] = ()
    parts: frozenset[tuple[str, str]] = frozenset()
    backups: tuple[tuple[nn.Module, str, torch.Tensor], ...] = field(default=(), repr=False)
    parallel_mode: str = FUSED_MODE
    active_before: tuple[tuple[str, float], ...] | None = None

    def merged(self, name: str, part: AdapterPart) -> bool:
        """The one question: are adapter `name`'s `part` deltas merged into the base weights?"""
        return (name, part.name) in self.parts


def _base_linear(module: nn.Module) -> nn.Linear:
    """The plain `nn.Linear` behind a projection (PEFT wraps it as `base_layer`)."""
    linear = getattr(module, "base_layer", module)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"cannot fuse into {type(module).__name__}: expected an nn.Linear projection")
    return linear


def _projection(attn: nn.Module, target: str) -> nn.Linear:
    return _base_linear(attn.to_out[0] if target == "to_out" else getattr(attn, target))


def _check_fusable(context, names: list[str]) -> None:
    """Raise `ValueError` for every composition that merged weights cannot reproduce."""
    if context.call_state().adapter_prompts:
        raise ValueError(
            "per-adapter prompts cannot be fused: each adapter's K/V delta applies to a different prompt, but a "
            "fused W_K/W_V applies every delta to every prompt. Call the pipeline without batch_prompt (one shared "
            "prompt) or run unfused"
        )
    configs = {name: context.configs[name] for name in names}
    # An adapter's own `prompt` (what `miva train` records) matters only when a call uses per-adapter prompts
    # (`batch_prompt`); that call is refused while fused (the pipeline's input check, `_split_prompts`).
    check_fusable_mode(context.parallel_mode, len(context.active))
    q_lora = [n for n, c in configs.items() if CA_LORA_PART.enabled(c) and c.use_q_lora]
    implicit = [n for n, _ in context.active if IMPLICIT_PART.enabled(context.configs[n])]
    if q_lora and implicit:
        raise ValueError(
            f"adapters {q_lora} (use_q_lora) cannot be fused while implicit-prompt adapters {implicit} are active: "
            "the implicit prompt reads W_Q x, which a fused Q delta would change"
        )


def fuse_miva_adapters(unet: nn.Module, names: str | list[str] | None = None,
                       scale: float = 1.0) -> list[tuple[str, float]]:
    """Merge the LoRA deltas of the active adapters `names` (default: all active) into the base projections.

    Each delta enters with its adapter's weight w_i ("weights" semantics), times `scale` (as diffusers'
    `fuse_lora(lora_scale=...)`: the fused adapters' weights are scaled, so their unfusable parts run with the same
    weights). The original tensors are kept as bit-exact clones on their device in the context's `FuseState`, and
    `context.parallel_mode` reads `"weights"` until `unfuse_miva_adapters` (for one adapter at weight 1 this equals
    `"residual"`). Returns the fused `(name, weight)` pairs.

    Raises `ValueError` for a second fuse, disabled or inactive adapters, per-adapter prompts, and
    `parallel_mode="residual"` with more than one active adapter.
    """
    context = get_miva_context(unet)
    check_not_fused(context, "fuse_adapters")
    scale = check_float("lora_scale", scale)
    if not context.enabled:
        raise ValueError("adapters are disabled (context.enabled=False); enable them before fusing")
    active = dict(context.active)
    if names is None:
        names = list(active)
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("there are no active adapters to fuse; call set_miva_adapters(unet, names, weights) first")
    inactive = [n for n in names if n not in active]
    if inactive:
        raise ValueError(f"names={names}: {inactive} are not active; active adapters: {list(active)}")
    _check_fusable(context, names)
    before = tuple(context.active)
    weights = {n: float(w * scale if n in names else w) for n, w in before}
    modules = _attention_modules(unet)
    # The fusable parts of each adapter (`parts.ADAPTER_PARTS`' `fuse_into`) that it has.
    parts = {(name, part.name): part for name in names for part in ADAPTER_PARTS
             if part.fuse_into and part.enabled(context.configs[name])}
    # Sum the deltas per tensor in float32 first, then add once (one rounding per weight).
    deltas: dict[tuple[int, str], tuple[nn.Linear, str, torch.Tensor]] = {}

    def accumulate(linear: nn.Linear, kind: str, delta: torch.Tensor) -> None:
        key = (id(linear), kind)
        if key in deltas:
            delta = deltas[key][2] + delta
        deltas[key] = (linear, kind, delta)

    backups = []
    with torch.no_grad():
        for layer_name, processor in context.processors.items():
            attn = modules[layer_name]
            for name in names:
                adapter = processor.adapters[name] if name in processor.adapters else None
                if adapter is None:
                    continue
                # The tensors this module holds of the adapter's fusable parts (each attribute once: MotionLoRA and
                # CA-LoRA name their deltas alike, and a backbone may carry either at any layer kind).
                targets = {a: t for (n, _), part in parts.items() if n == name for a, t in part.fuse_into.items()}
                for attribute, (target, kind) in targets.items():
                    member = getattr(adapter, attribute, None)
                    if kind == "weight" and isinstance(member, LoRADelta):
                        accumulate(_projection(attn, target), "weight", weights[name] * member.delta_weight().float())
                    elif kind == "bias" and member is not None:
                        if _projection(attn, target).bias is None:
                            raise ValueError(
                                f"{layer_name}: adapter {name!r} has an out-delta bias but to_out[0] has no "
                                "bias to fuse it into"
                            )
                        accumulate(_projection(attn, target), "bias", weights[name] * member.float())
        for linear, kind, delta in deltas.values():
            tensor = getattr(linear, kind)
            backups.append((linear, kind, tensor.detach().clone()))
            tensor.copy_((tensor.float() + delta.to(tensor.device)).to(tensor.dtype))
    context.fuse_state = FuseState(
        fused=tuple((name, weights[name]) for name in names), parts=frozenset(parts), backups=tuple(backups),
        parallel_mode=context.parallel_mode, active_before=before if scale != 1.0 else None,
    )
    context.active = list(weights.items())
    context.parallel_mode = FUSED_MODE
    return list(context.fuse_state.fused)


def unfuse_miva_adapters(unet: nn.Module) -> list[tuple[str, float]]:
    """Restore every tensor `fuse_miva_adapters` changed, bit-exactly, the weights from before its `scale` and the
    parallel mode; the deltas run unfused again.

    Returns the `(name, weight)` pairs that were fused (an empty list, and nothing done, when none are).
    """
    context = get_miva_context(unet)
    state = context.fuse_state
    if state is None:
        return []
    with torch.no_grad():
        for linear, kind, original in state.backups:
            getattr(linear, kind).copy_(original)
    context.fuse_state = None
    context.parallel_mode = state.parallel_mode
    if state.active_before is not None:
        context.active = list(state.active_before)
    return list(state.fused)

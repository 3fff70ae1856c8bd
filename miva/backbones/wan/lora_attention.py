"""Wan attention with LoRA deltas on its projections, computed by diffusers' own `WanAttnProcessor`.

The processor reads `attn.to_q`, `attn.to_k`, `attn.to_v` and `attn.to_out` and nothing else that a delta changes;
`AttentionWithDeltas` is a view of a `WanAttention` whose projections add the deltas
(`attention_processors.lora.linear_with_deltas`: merged into a temporary weight at inference, low-rank under
autograd). So the rotary embedding, RMS norms and attention dispatch stay diffusers' code, and zero deltas give the
stock output exactly. `lora_attention` combines several adapters as `composition.py` says.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...attention_processors.composition import merges_deltas, mix_residual
from ...attention_processors.lora import linear_with_deltas
from .modules import lora_deltas

__all__ = ["AttentionWithDeltas", "lora_attention"]


class AttentionWithDeltas:
    """A read-only view of `attn` (a `WanAttention`) whose `to_q` / `to_k` / `to_v` / `to_out[0]` add
    `sum_i w_i delta_i(x)`; `deltas`: projection name -> `[(delta, w)]`. Everything else is `attn`'s own."""

    def __init__(self, attn, deltas: dict[str, list[tuple]]):
        self._attn = attn
        self.fused_projections = False  # the separate projections (kept by diffusers when fused) carry the deltas
        for projection in ("to_q", "to_k", "to_v"):
            setattr(self, projection, self._projection(getattr(attn, projection), deltas.get(projection, [])))
        self.to_out = [self._projection(attn.to_out[0], deltas.get("to_out", [])), attn.to_out[1]]

    @staticmethod
    def _projection(linear, deltas) -> Callable[[torch.Tensor], torch.Tensor]:
        if not deltas:
            return linear
        return lambda x: linear_with_deltas(linear, x, deltas)

    def __getattr__(self, name):
        return getattr(self._attn, name)


def lora_attention(stock, attn, adapters: list[tuple], mode: str, *args) -> torch.Tensor:
    """`stock(attn, *args)` with the LoRA deltas of `adapters` (`[(adapter module, weight)]`, each with
    `has_lora`): `"weights"`: one attention with the w_i-scaled deltas summed into each projection; `"residual"`:
    `sum_i w_i y_i + (1 - sum_i w_i) y_base`, one attention per adapter (`composition.py`)."""

    def run(pairs) -> torch.Tensor:
        deltas: dict[str, list[tuple]] = {}
        for adapter, weight in pairs:
            for projection, delta in lora_deltas(adapter).items():
                deltas.setdefault(projection, []).append((delta, weight))
        return stock(AttentionWithDeltas(attn, deltas) if deltas else attn, *args)

    if not adapters:
        return run([])
    if merges_deltas(mode):
        return run(adapters)
    y = sum(run([(adapter, 1.0)]) * (1.0 if w == 1.0 else w) for adapter, w in adapters)
    return mix_residual(y, [w for _, w in adapters], lambda: run([]))

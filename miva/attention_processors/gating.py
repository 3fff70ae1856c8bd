"""Composition with per-token gates (adapter masks and frame schedules, docs/regions.md): `compose_gated` is
`composition.compose` when no branch has a `gate`, and otherwise confines each gated adapter to its tokens.

- `"residual"`: `y = y_base + sum_i w_i g_i (y_i - y_base)`. The ungated branches compose as before; each gated
  branch i then runs alone (`y_i`), and the frozen `y_base` once: one more attention per gated adapter, plus the base.
- `"weights"` (one attention with summed deltas): a K/V delta acts on the keys every query reads, so it cannot be
  gated per query. The ungated adapters compose as before (`y_W(U)`); each gated adapter i adds
  `g_i (y_W(U + i) - y_W(U))`: one more attention per gated adapter. Exact (equal to running each region with its
  adapters alone) when the gated adapters' masks are binary and disjoint; where soft or overlapping masks meet, the
  adapters' differences add.

A gate is `(rows, tokens, 1)` in the processor's output layout (after `Site.restore`, e.g. spatiotemporal Q's
upsampling), so it acts at the level's full resolution. The extra passes do not report attention maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .composition import Branch, Site, check_parallel_mode, compose, compose_residual, compose_weights

__all__ = ["compose_gated", "gated"]


def gated(y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """`y * gate` (None: `y`)."""
    return y if gate is None else y * gate


def compose_gated(mode: str, site: Site, branches: Sequence[Branch]) -> torch.Tensor:
    """`composition.compose`, with each branch that has a `gate` confined to its tokens (see the module doc)."""
    branches = list(branches)
    gates = [b for b in branches if b.gate is not None]
    if not gates:
        return compose(mode, site, branches)
    plain = [b for b in branches if b.gate is None]
    quiet = replace(site, observe=None)  # shares the frozen projections (`Site.frozen`) with `site`
    if check_parallel_mode(mode) == "residual":
        y = compose_residual(site, plain)
        base = y if not plain else compose_residual(quiet, [])  # no branch: the frozen output
        for b in gates:
            y_i = compose_residual(quiet, [replace(b, weight=1.0, gate=None)])
            y = y + (y_i - base) * (b.gate * b.weight)
        return y
    y = compose_weights(site, plain)
    total = y
    for b in gates:
        total = total + (compose_weights(quiet, [*plain, replace(b, gate=None)]) - y) * b.gate
    return total

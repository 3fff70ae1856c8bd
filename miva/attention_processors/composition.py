"""How the active adapters combine (`parallel_mode`, docs/research.md#multi-adapter; docs/architecture.md
"Composition and fusing"): the modes, the branch description and one composer per mode.

Processors describe what each active adapter adds at their layer as a `Branch` (which projections get which live
deltas, which tokens it attends to, its weight, an input embedding, or a precomputed output) and the layer as a
`Site` (the projections, the shared query tokens and the backbone-specific steps: positional encodings, layout
changes, the frozen base output). `compose(mode, site, branches)` runs them; the fast variants (merged deltas for one
branch, the stacked multi-adapter bank, shared queries) are chosen here, in `_attention_sum`, and nowhere else.
Nothing here knows a UNet: tokens in, tokens out. Every processor and `fusing.py` asks this module about modes; none
compares mode strings itself.

- `"residual"` (default): one branch per adapter i (its own deltas, embedding and prompt) and
  `y = y_base + sum_i w_i (y_i - y_base)`, written `sum_i w_i y_i + (1 - sum_i w_i) y_base`: the frozen base branch
  `y_base` is computed only when the weights do not sum to 1 (`needs_base`). Equal to the research `sum_i w_i y_i`
  whenever the weights sum to 1.
- `"weights"` (research): one attention with the w_i-scaled deltas summed into each projection (one softmax over
  the adapters' prompts). This is what merged weights compute, so fused adapters always compose this way
  (`FUSED_MODE`).

The spatial self-attention branches (I2V) add `sum_i w_i branch_i` to the frozen output in both modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .lora import linear_bias, linear_with_deltas
from .lora_bank import StackedLoRA, stackable

PARALLEL_MODES: tuple[str, ...] = ("residual", "weights")
DEFAULT_PARALLEL_MODE = "residual"
FUSED_MODE = "weights"  # merged weights implement the summed w_i-scaled deltas

__all__ = [
    "Branch",
    "COMPOSERS",
    "PROJECTIONS",
    "Site",
    "compose",
    "DEFAULT_PARALLEL_MODE",
    "FUSED_MODE",
    "PARALLEL_MODES",
    "check_fusable_mode",
    "check_not_fused",
    "check_parallel_mode",
    "needs_base",
    "split_prompt_chunks",
    "weighted_sum",
]


def check_parallel_mode(mode: Any) -> str:
    """`mode` if it is one of `PARALLEL_MODES`, else a `ValueError` naming it."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel_mode={mode!r} is not one of {list(PARALLEL_MODES)}")
    return mode


def check_fusable_mode(mode: str, num_active: int) -> None:
    """Merged weights compute `"weights"`; `"residual"` equals it only for a single adapter."""
    if check_parallel_mode(mode) == "residual" and num_active > 1:
        raise ValueError(
            f"parallel_mode='residual' with {num_active} active adapters cannot be fused: fusing implements "
            "'weights' (summed w_i-scaled deltas, one attention). Use pipe.set_adapters(names, weights, "
            "parallel_mode='weights') first, or run unfused"
        )


def check_not_fused(context, action: str, names: Sequence[str] | None = None) -> None:
    """The one rule about fused adapters: `action` (e.g. `"set_adapters"`) needs them unfused first; with `names`,
    only those adapters matter (e.g. the ones being deleted)."""
    fused = [(n, w) for n, w in context.fused if names is None or n in names]
    if fused:
        raise ValueError(f"{action}: adapters {fused} are fused into the base weights; call "
                         "pipe.unfuse_adapters() first")


# ------------------------------------------------------------------------------------------ the description

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")  # the keys of `Branch.deltas`



def split_prompt_chunks(context, text: torch.Tensor, layer_name: str) -> list[torch.Tensor]:
    """Per-adapter prompts (`miva_call(..., adapter_prompts=True)`): `text` `(rows, T * (1 + P), D)` -> [main prompt,
    active adapter 0's prompt, ...], each `(rows, T, D)`, P = number of active adapters. Refused while adapters are
    fused (each adapter's K/V delta applies to a different prompt)."""
    check_not_fused(context, f"{layer_name}: per-adapter prompts (each adapter's K/V delta applies to a different "
                    "prompt)")
    chunks = 1 + len(context.active)
    if text.shape[1] % chunks:
        raise ValueError(f"{layer_name}: {text.shape[1]} text tokens cannot hold the main prompt and {chunks - 1} "
                         "adapter prompts of equal length")
    return list(text.chunk(chunks, dim=1))

@dataclass
class Branch:
    """What one active adapter adds at one attention layer, as its processor describes it.

    - `weight`: the adapter's w_i for this call;
    - `deltas`: projection (`PROJECTIONS`) -> its live low-rank delta (a module with the protocol of
      `lora.linear_with_deltas`; a `"to_out"` delta also has `low_rank()`, the `LoRADelta` that stacks). Parts merged
      into the base weights (`fusing.FuseState`) are left out;
    - `context`: `(batch, kv_tokens, D)` the tokens its keys/values read (its prompt chunk); None: the site's;
    - `embed`: `embed(x, weight)` adds the adapter's input embedding to the query tokens `(batch, tokens, C)`;
    - `output`: `(batch, tokens, out)` in the processor's layout, a precomputed output that takes the branch's share
      instead of an attention (the implicit prompt); the other fields are then unused;
    - `gate`: `(batch, tokens, 1)` in the processor's output layout, the adapter's per-token mask (None: everywhere);
      composed by `gating.compose_gated`.
    """

    weight: float
    deltas: dict[str, Any] = field(default_factory=dict)
    context: torch.Tensor | None = None
    embed: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    output: torch.Tensor | None = None
    gate: torch.Tensor | None = None


@dataclass
class Site:
    """One attention layer as the composer sees it (the backbone-specific steps are the processor's).

    - `attn`: the frozen projections `to_q`, `to_k`, `to_v`, `to_out[0]` (a diffusers `Attention`);
    - `x`: `(batch, tokens, C)` the query tokens the branches share (e.g. spatiotemporal Q's grid);
    - `attend(q, k, v, mask)`: `(batch, q_tokens, inner) x (batch, kv_tokens, inner) -> (batch, q_tokens, inner)`;
    - `query`: `to_q(x)` when the processor has it already (else computed once here);
    - `context`: the tokens keys/values read by default (None: each branch's own query tokens, self-attention);
    - `mask`: the attention mask `(batch, heads, q_tokens, kv_tokens)` or None;
    - `finish_query(q)` / `finish_kv(k, v)`: positional encodings after the projections (None: none);
    - `restore(y)`: the composed output back to the processor's token layout (None: unchanged);
    - `observe(q, k)`: sees the first branch's finished queries and keys (attention maps);
    - `base()`: the frozen output `y_base` (`to_out[0]` applied) in the processor's layout, when it cannot run as one
      more branch on `x` (None: it does, batched with the adapters' branches).
    """

    attn: Any
    x: torch.Tensor
    attend: Callable[..., torch.Tensor]
    query: torch.Tensor | None = None
    context: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    finish_query: Callable[[torch.Tensor], torch.Tensor] | None = None
    finish_kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    restore: Callable[[torch.Tensor], torch.Tensor] | None = None
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    base: Callable[[], torch.Tensor] | None = None
    frozen: dict = field(default_factory=dict, repr=False)  # (projection, id(tokens)) -> (tokens, projection(tokens))

    def project(self, projection: str, tokens: torch.Tensor) -> torch.Tensor:
        """The frozen `projection` of `tokens`, once per distinct tensor in this call."""
        key = (projection, id(tokens))
        if key not in self.frozen:
            if projection == "to_q" and tokens is self.x and self.query is not None:
                self.frozen[key] = (tokens, self.query)
            else:
                self.frozen[key] = (tokens, self.linear(projection)(tokens))
        return self.frozen[key][1]

    def linear(self, projection: str):
        return self.attn.to_out[0] if projection == "to_out" else getattr(self.attn, projection)


def compose(mode: str, site: Site, branches: Sequence[Branch]) -> torch.Tensor:
    """The composed attention output (before `to_out[1]`, the dropout) of `branches` at `site` under `mode`."""
    if any(b.gate is not None for b in branches):
        raise ValueError("a gated Branch composes through gating.compose_gated")
    return COMPOSERS[check_parallel_mode(mode)](site, list(branches))


# ---------------------------------------------------------------------------------------------------- "residual"


def needs_base(weights: Sequence[float]) -> bool:
    """The frozen base branch matters only when the adapter weights do not sum to one."""
    return abs(1.0 - sum(weights)) > 1e-12


def compose_residual(site: Site, branches: list[Branch]) -> torch.Tensor:
    """`y_base + sum_i w_i (y_i - y_base)` = `sum_i w_i y_i + (1 - sum_i w_i) y_base`: one branch per adapter, the
    frozen `y_base` only when the weights do not sum to 1 (batched with the others unless the site computes it)."""
    weights = [b.weight for b in branches]
    attention = [b for b in branches if b.output is None]
    if needs_base(weights) and site.base is None:
        attention = [Branch(1.0 - sum(weights)), *attention]
    y = _restore(site, _attention_sum(site, attention)) if attention else 0.0
    for b in branches:
        if b.output is not None:
            y = y + b.weight * b.output
    return y if site.base is None else mix_residual(y, weights, site.base)


def mix_residual(y: torch.Tensor | float, weights: Sequence[float], base: Callable[[], torch.Tensor]):
    """`y = sum_i w_i y_i` -> `y + (1 - sum_i w_i) y_base`; `base()` (the frozen branch) runs only when needed."""
    if needs_base(weights):
        y = y + (1.0 - sum(weights)) * base()
    return y


def _attention_sum(site: Site, branches: list[Branch]) -> torch.Tensor:
    """`sum_j c_j (W_O a_j + b + dO_j(a_j))` over attention branches (c_j = their weights), each attending with its
    deltas. Fast variants, chosen here only: one branch merges its deltas into the projections (`linear_with_deltas`);
    branches reading the same tokens stack their deltas (`lora_bank`); branches sharing their queries attend one by
    one (no N-fold copy of them), others in one batched call. W_O is linear: the outputs are mixed, then projected once.
    """
    if len(branches) == 1:
        return _one_branch(site, branches[0])
    n = len(branches)
    inputs = [site.x if b.embed is None else b.embed(site.x, 1.0) for b in branches]
    contexts = [_context(site, b, xi) for b, xi in zip(branches, inputs)]
    stacked = all(xi is inputs[0] for xi in inputs) and all(c is contexts[0] for c in contexts) and all(
        _stacks([b.deltas.get(p) for b in branches]) for p in PROJECTIONS[:3])
    whole = {}  # projection -> the stacked (N, ...) tensor its branches' views come from
    if stacked:  # one input for all: the frozen projections once, the N deltas stacked onto them
        qs, ks, vs = (_stacked_projection(site, p, t, branches, whole)
                      for p, t in (("to_q", inputs[0]), ("to_k", contexts[0]), ("to_v", contexts[0])))
    else:
        qs = [_with_delta(site, "to_q", xi, b) for b, xi in zip(branches, inputs)]
        ks = [_with_delta(site, "to_k", c, b) for b, c in zip(branches, contexts)]
        vs = [_with_delta(site, "to_v", c, b) for b, c in zip(branches, contexts)]
    shared_query = all(q is qs[0] for q in qs)
    if site.finish_query is not None:
        qs = [site.finish_query(qs[0])] * n if shared_query else [site.finish_query(q) for q in qs]
        whole.pop("to_q", None)
    if site.finish_kv is not None:
        ks, vs = (list(t) for t in zip(*(site.finish_kv(k, v) for k, v in zip(ks, vs))))
        whole.pop("to_k", None), whole.pop("to_v", None)
    if shared_query:  # one query set: attend branch by branch
        parts = [site.attend(qs[0], k, v, site.mask) for k, v in zip(ks, vs)]
    else:  # one SDPA call over the concatenated branches (stacked ones are already laid out so)
        q, k, v = (whole[p].flatten(0, 1) if p in whole else torch.cat(t)
                   for p, t in (("to_q", qs), ("to_k", ks), ("to_v", vs)))
        mask = None if site.mask is None else site.mask.repeat(n, *([1] * (site.mask.dim() - 1)))
        parts = site.attend(q, k, v, mask).chunk(n)
    if site.observe is not None:
        site.observe(qs[0], ks[0])
    weights = [b.weight for b in branches]
    to_out = site.linear("to_out")
    y = to_out(weighted_sum(parts, weights))
    if abs(sum(weights) - 1.0) > 1e-12:  # the bias enters with weight sum_j c_j
        bias = linear_bias(to_out, parts[0])
        if bias is not None:
            y = y + bias * (sum(weights) - 1.0)
    outs = [b.deltas.get("to_out") for b in branches]
    low_rank = [None if d is None else d.low_rank() for d in outs]
    if stackable(low_rank):  # the N out deltas in one matmul, their constant terms added
        y = y + StackedLoRA(low_rank, parts[0]).mix(parts, weights)
        for d, w in zip(outs, weights):
            bias = None if d is None else d.delta_bias()
            if bias is not None:
                y = y + bias.to(y.dtype) * w
        return y
    for d, a, w in zip(outs, parts, weights):
        if d is not None:
            y = y + d(a) * w
    return y


def _one_branch(site: Site, b: Branch) -> torch.Tensor:
    """One branch: its deltas merge into the projections at inference (`linear_with_deltas`)."""
    xi = site.x if b.embed is None else b.embed(site.x, 1.0)
    context = _context(site, b, xi)
    q = _finish_query(site, _merged(site, "to_q", xi, [b], 1.0))
    k, v = _finish_kv(site, _merged(site, "to_k", context, [b], 1.0), _merged(site, "to_v", context, [b], 1.0))
    a = site.attend(q, k, v, site.mask)
    if site.observe is not None:
        site.observe(q, k)
    y = _merged(site, "to_out", a, [b], 1.0)
    return y if b.weight == 1.0 else y * b.weight


# ----------------------------------------------------------------------------------------------------- "weights"


def compose_weights(site: Site, branches: list[Branch]) -> torch.Tensor:
    """The research composition: one attention with the w_i-scaled deltas summed into each projection (and the
    w_i-scaled embeddings into the input); with several prompt chunks one softmax over all their tokens. An output
    branch replaces share w_i of the result, `y (1 - w_i) + f_i w_i`. What merged weights compute (`FUSED_MODE`)."""
    attention = [b for b in branches if b.output is None]
    if attention or site.base is None:
        y = _restore(site, _merged_attention(site, attention))
    else:
        y = site.base()
    for b in branches:
        if b.output is not None:
            y = replace_share(y, b.output, b.weight)
    return y


def replace_share(y: torch.Tensor, f: torch.Tensor, w: float) -> torch.Tensor:
    """`"weights"`: an output `f` that replaces the attention (implicit prompt) takes share w of it, `y (1 - w) + f w`:
    exactly f at w = 1 (no trace of the text left)."""
    return y * (1.0 - w) + f * w


def _merged_attention(site: Site, branches: list[Branch]) -> torch.Tensor:
    x = site.x
    for b in branches:
        if b.embed is not None:
            x = b.embed(x, b.weight)
    q = _finish_query(site, _merged(site, "to_q", x, branches))
    keys, values = [], []
    sources = branches or [None]  # no branch: the frozen attention on the site's tokens
    contexts = {id(c): c for c in (_context(site, b, x) for b in sources)}
    for context in contexts.values():  # one K/V block per distinct context, with the deltas of its readers
        readers = [b for b in branches if _context(site, b, x) is context]
        keys.append(_merged(site, "to_k", context, readers))
        values.append(_merged(site, "to_v", context, readers))
    k, v = _finish_kv(site, *((t[0] if len(t) == 1 else torch.cat(t, dim=1)) for t in (keys, values)))
    a = site.attend(q, k, v, site.mask)
    if site.observe is not None:
        site.observe(q, k)
    return _merged(site, "to_out", a, branches)


COMPOSERS: dict[str, Callable[[Site, list[Branch]], torch.Tensor]] = {
    "residual": compose_residual,
    "weights": compose_weights,
}


# ------------------------------------------------------------------------------------------------------ helpers


def weighted_sum(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """`sum_j parts_j * weights_j` (same shapes)."""
    return sum(part * w for part, w in zip(parts, weights))


def _context(site: Site, b: Branch | None, own: torch.Tensor) -> torch.Tensor:
    if b is not None and b.context is not None:
        return b.context
    return own if site.context is None else site.context


def _merged(site: Site, projection: str, tokens: torch.Tensor, branches: Sequence[Branch],
            weight: float | None = None) -> torch.Tensor:
    """`projection(tokens) + sum_b w_b delta_b(tokens)` (w_b = `weight` or each branch's); frozen-only: shared."""
    deltas = [(b.deltas[projection], b.weight if weight is None else weight)
              for b in branches if projection in b.deltas]
    if not deltas and projection != "to_out":
        return site.project(projection, tokens)
    return linear_with_deltas(site.linear(projection), tokens, deltas)


def _with_delta(site: Site, projection: str, tokens: torch.Tensor, b: Branch) -> torch.Tensor:
    """The shared frozen projection plus this branch's own delta (unmerged: the frozen part is shared)."""
    base = site.project(projection, tokens)
    delta = b.deltas.get(projection)
    return base if delta is None else base + delta(tokens)


def _stacks(deltas: list) -> bool:
    return all(d is None for d in deltas) or stackable(deltas)


def _stacked_projection(site: Site, projection: str, tokens: torch.Tensor, branches: list[Branch],
                        whole: dict) -> list:
    """Every branch's `projection(tokens) + delta_i(tokens)` from one stacked bank: views of one `(N, ...)` tensor,
    kept in `whole[projection]` (the same frozen tensor N times when no branch has a delta here)."""
    base = site.project(projection, tokens)
    deltas = [b.deltas.get(projection) for b in branches]
    if all(d is None for d in deltas):
        return [base] * len(branches)
    whole[projection] = StackedLoRA(deltas, tokens).add_each(base, tokens)
    return list(whole[projection].unbind(0))


def _finish_query(site: Site, q: torch.Tensor) -> torch.Tensor:
    return q if site.finish_query is None else site.finish_query(q)


def _finish_kv(site: Site, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (k, v) if site.finish_kv is None else site.finish_kv(k, v)


def _restore(site: Site, y: torch.Tensor) -> torch.Tensor:
    return y if site.restore is None else site.restore(y)

"""Test helper: everything a failed call must leave unchanged, captured before and compared after.

`take_snapshot(pipe)` records, bit for bit, every UNet tensor (base weights and adapter weights, which live in the
processors), every text-encoder tensor, the tokenizer's vocabulary, each adapter's config, which adapters are
active with which weights (and mode, enabled, fused), and which processor serves each attention layer.
`expect_clean_failure(pipe, call)` runs `call`, requires exactly one `ValueError` / `TypeError` /
`FileNotFoundError`, and asserts the snapshot is unchanged.
"""

from __future__ import annotations

import dataclasses

import torch


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes (so NaN == NaN and -0.0 != 0.0: bit-identical means the same bytes)."""
    t = tensor.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).clone() if t.numel() else t.clone()


def take_snapshot(pipe) -> dict:
    unet = pipe.unet
    context = getattr(unet, "miva_context", None)
    snap = {
        "unet": {k: (str(v.dtype), tuple(v.shape), _bits(v)) for k, v in unet.state_dict().items()},
        "processors": {k: type(v).__name__ for k, v in unet.attn_processors.items()},
        "adapters": None,
    }
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None:
        snap["text_encoder"] = {k: (tuple(v.shape), _bits(v)) for k, v in text_encoder.state_dict().items()}
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None:
        snap["vocab"] = dict(tokenizer.get_vocab())
    if context is not None:
        snap["adapters"] = {
            "configs": {name: dataclasses.asdict(config) for name, config in context.configs.items()},
            "active": list(context.active),
            "parallel_mode": context.parallel_mode,
            "enabled": context.enabled,
            "fused": list(context.fused),
            "open_calls": len(context.calls),  # a failed call must close its call state (`miva_call`)
            "banks": {layer: list(proc.adapters) for layer, proc in context.processors.items()},
        }
    return snap


def assert_same_snapshot(before: dict, after: dict) -> None:
    """Fail with the first difference (a tensor name, a config field, the active list, ...)."""
    assert before.keys() == after.keys(), f"snapshot parts differ: {before.keys()} vs {after.keys()}"
    for part in ("unet", "text_encoder"):
        if part not in before:
            continue
        a, b = before[part], after[part]
        assert a.keys() == b.keys(), f"{part}: tensors added/removed: {sorted(set(a) ^ set(b))[:5]}"
        for key in a:
            (*meta_a, bits_a), (*meta_b, bits_b) = a[key], b[key]
            assert meta_a == meta_b and torch.equal(bits_a, bits_b), f"{part}: tensor {key!r} changed"
    for part in ("processors", "vocab", "adapters"):
        if part in before:
            assert before[part] == after[part], f"{part} changed: {before[part]!r:.300} -> {after[part]!r:.300}"


def expect_clean_failure(pipe, call, errors=(ValueError, TypeError, FileNotFoundError)) -> BaseException:
    """Run `call()`; it must raise one of `errors` and change nothing in `pipe`. Returns the exception."""
    before = take_snapshot(pipe)
    try:
        call()
    except errors as e:
        error = e
    else:
        raise AssertionError(f"expected one of {[e.__name__ for e in errors]}, but the call succeeded")
    assert_same_snapshot(before, take_snapshot(pipe))
    return error

"""Several MIVA adapters at once: "residual" / "weights" composition, per-adapter prompts, guidance and fusing.

References are written here from the `Attention` weights (plain matmuls and a float64 softmax), never by calling
the processors, so they check the processors rather than restate them.
"""

import pytest
import torch

from miva.attention_processors import (
    LoRADelta,
    MIVAAdapterConfig,
    add_miva_adapter,
    delete_miva_adapter,
    fuse_miva_adapters,
    get_miva_adapter_modules,
    get_miva_context,
    install_miva_processors,
    miva_call,
    parts,
    set_miva_adapters,
    set_parallel_mode,
    unfuse_miva_adapters,
)
from miva.tiny import tiny_unet_motion

FRAMES, BATCH, SIZE, TOKENS, TEXT_DIM = 4, 2, 4, 77, 32
ATOL = 1e-5

STQ = dict(q_downsample=True, q_downsample_ratio=2, ca_pe_mode="rope_3d")
CONFIGS = {
    "a": dict(sa_mode="first", motion_lora_rank=4, use_motion_embed=True, ca_lora_rank=4, use_q_lora=True),
    "b": dict(sa_mode="prev", i2v_train_q=True, motion_lora_rank=8, ca_lora_rank=8),
    "c": dict(sa_mode="first", motion_lora_rank=4, use_motion_embed=True, ca_lora_rank=4),
    "s1": dict(use_i2v=False, motion_lora_rank=4, use_q_lora=True, **STQ),
    "s2": dict(use_i2v=False, use_motion_lora=False, **STQ),
    "pa": dict(use_i2v=False, use_motion_lora=False, prompt="waves"),
    "pb": dict(use_i2v=False, use_motion_lora=False, prompt="clouds"),
}


def randomize(unet, name, seed, std=0.3):
    """Give every parameter of adapter `name` seeded random values (a fresh adapter is a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in get_miva_adapter_modules(unet, name).values():
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


@pytest.fixture(scope="module")
def unet():
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    for seed, (name, kwargs) in enumerate(CONFIGS.items()):
        add_miva_adapter(unet, name, MIVAAdapterConfig(use_ca_lora=True, **kwargs))
        randomize(unet, name, seed + 1)
    return unet


@pytest.fixture(autouse=True)
def reset(unet):
    yield
    unfuse_miva_adapters(unet)
    set_miva_adapters(unet, [], parallel_mode="residual")
    CALL.clear()


# What a pipeline call would put in its call state (`miva_call`) for the layer calls of `run`: `adapter_prompts`,
# `adapter_weights`, and the level sizes the UNet's hooks would record (`spatial_sizes`).
CALL = {}


def use(unet, names, weights, mode="residual", prompts=False):
    set_miva_adapters(unet, names, weights, parallel_mode=mode)
    CALL["adapter_prompts"] = prompts


def layer(unet, kind):
    block = unet.down_blocks[1]
    if kind == "temporal":
        return block.motion_modules[0].transformer_blocks[0].attn1
    return getattr(block.attentions[0].transformer_blocks[0], "attn2" if kind == "cross" else "attn1")


# ----------------------------------------------------------------------------------------- reference maths


def linear(module, x):
    out = x @ module.weight.T
    return out if module.bias is None else out + module.bias


def delta(lora: LoRADelta, x, alpha=1.0):
    """`up(down(x)) alpha / rank`, alpha = 1 (the config default every adapter here uses), rank from `down`'s shape
    (not the delta's own `scale`, so a wrong alpha/rank inside a processor shows)."""
    return (x @ lora.down.weight.T @ lora.up.weight.T) * (alpha / lora.down.weight.shape[0])


def softmax_attention(attn, q, k, v):
    """Multi-head attention with an explicit float64 softmax: (n, q_tokens, C) x (n, kv_tokens, C)."""
    n, heads = q.shape[0], attn.heads

    def split(t):
        return t.double().reshape(n, t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    probs = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).reshape(n, -1, heads * q.shape[-1]).float()


def ref_cross_base(attn, x, text):
    a = softmax_attention(attn, linear(attn.to_q, x), linear(attn.to_k, text), linear(attn.to_v, text))
    return linear(attn.to_out[0], a)


def ref_cross_weights(attn, adapters, weights, x, texts):
    """Summed w-scaled deltas, one softmax over the adapters' prompts concatenated on tokens (one adapter at [1]:
    the adapter alone on its own prompt)."""
    q = linear(attn.to_q, x)
    for adapter, w in zip(adapters, weights):
        if adapter.has_q_lora:
            q = q + w * delta(adapter.to_q_lora, x)
    k = torch.cat([linear(attn.to_k, t) + w * delta(ad.to_k_lora, t) for ad, w, t in zip(adapters, weights, texts)], 1)
    v = torch.cat([linear(attn.to_v, t) + w * delta(ad.to_v_lora, t) for ad, w, t in zip(adapters, weights, texts)], 1)
    a = softmax_attention(attn, q, k, v)
    return linear(attn.to_out[0], a) + sum(w * delta(ad.to_out_lora, a) for ad, w in zip(adapters, weights))


def ref_self(attn, adapters, weights, x):
    """Frozen self-attention + sum_i w_i to_out_i(cross-frame attention of branch i) (both parallel modes)."""
    q, k, v = linear(attn.to_q, x), linear(attn.to_k, x), linear(attn.to_v, x)
    out = linear(attn.to_out[0], softmax_attention(attn, q, k, v))
    batch = x.shape[0] // FRAMES
    for adapter, w in zip(adapters, weights):
        qi = q if adapter.to_q is None else linear(adapter.to_q, x)
        rows = []
        for b in range(batch):
            for f in range(FRAMES):
                src = b * FRAMES + (0 if adapter.sa_mode == "first" else max(f - 1, 0))
                rows.append(softmax_attention(attn, qi[b * FRAMES + f][None], k[src][None], v[src][None]))
        out = out + w * linear(adapter.to_out, torch.cat(rows))
    return out


def ref_temporal_weights(attn, adapters, weights, x):
    """Embeddings and Q/K/V/out deltas scaled by w_i, one attention (one adapter at [1]: the adapter alone)."""
    for adapter, w in zip(adapters, weights):
        if adapter.motion_embed is not None:
            x = x + w * adapter.motion_embed[: x.shape[1]]
    q, k, v = linear(attn.to_q, x), linear(attn.to_k, x), linear(attn.to_v, x)
    for adapter, w in zip(adapters, weights):
        q, k, v = (
            q + w * delta(adapter.to_q_lora, x),
            k + w * delta(adapter.to_k_lora, x),
            v + w * delta(adapter.to_v_lora, x),
        )
    a = softmax_attention(attn, q, k, v)
    return linear(attn.to_out[0], a) + sum(w * delta(ad.to_out_lora, a) for ad, w in zip(adapters, weights))


# ------------------------------------------------------------------------------------------------ inputs


def inputs(kind, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "temporal":
        return torch.randn(BATCH * SIZE * SIZE, FRAMES, 64, generator=generator)
    return torch.randn(BATCH * FRAMES, SIZE * SIZE, 64, generator=generator)


def prompts(count, seed=1):
    """`count` prompt embeddings, each (batch*frames, TOKENS, TEXT_DIM), one per video repeated per frame."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(BATCH, TOKENS, TEXT_DIM, generator=generator).repeat_interleave(FRAMES, 0) for _ in range(count)
    ]


@torch.no_grad()
def run(attn, x, text=None):
    with miva_call(attn.processor.context, **CALL, num_frames=FRAMES):
        return attn(x, text) if text is not None else attn(x)


@torch.no_grad()
def run_with_weights(attn, x, text, weights):
    with miva_call(attn.processor.context, **dict(CALL, adapter_weights=weights), num_frames=FRAMES):
        return attn(x, text)


@torch.no_grad()
def run_kind(unet, kind, x, names, weights, mode, texts=None):
    """Layer output; for cross-attention `texts` = [main, adapter prompts...] (per-adapter prompts)."""
    attn = layer(unet, kind)
    if kind != "cross":
        use(unet, names, weights, mode)
        return run(attn, x)
    use(unet, names, weights, mode, prompts=True)
    return run(attn, x, torch.cat(texts[: 1 + len(names)], dim=1))


# ------------------------------------------------------------------------------------- single / zero weight


@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("kind", ["cross", "self", "temporal"])
def test_one_adapter_at_weight_one_is_the_adapter_alone(unet, kind, mode):
    attn, x = layer(unet, kind), inputs(kind)
    main, own = prompts(2)
    a = attn.processor.adapters["a"]
    with torch.no_grad():
        expected = {
            "cross": lambda: ref_cross_weights(attn, [a], [1.0], x, [own]),
            "self": lambda: ref_self(attn, [a], [1.0], x),
            "temporal": lambda: ref_temporal_weights(attn, [a], [1.0], x),
        }[kind]()
        base = {
            "cross": lambda: ref_cross_base(attn, x, main),
            "self": lambda: ref_self(attn, [], [], x),
            "temporal": lambda: ref_temporal_weights(attn, [], [], x),
        }[kind]()
    out = run_kind(unet, kind, x, ["a"], [1.0], mode, [main, own])
    assert (expected - base).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("kind", ["cross", "self", "temporal"])
def test_weight_zero_equals_the_base(unet, kind, mode):
    """Weight 0 is the frozen model. (Cross-attention "weights" attends to the adapters' prompts, so here every
    adapter reads the main prompt: no per-adapter prompts.)"""
    attn, x = layer(unet, kind), inputs(kind)
    text = prompts(1)[0] if kind == "cross" else None
    use(unet, [], [])
    base = run(attn, x, text)
    use(unet, ["a", "b"], [0.0, 0.0], mode)
    torch.testing.assert_close(run(attn, x, text), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["cross", "self", "temporal"])
def test_residual_half_half_is_the_research_average(unet, kind):
    """[0.5, 0.5] in "residual" = 0.5 y_1 + 0.5 y_2, y_i = the processor's output with adapter i alone."""
    x = inputs(kind)
    main, p1, p2 = prompts(3)
    y1 = run_kind(unet, kind, x, ["a"], [1.0], "residual", [main, p1])
    y2 = run_kind(unet, kind, x, ["b"], [1.0], "residual", [main, p2])
    both = run_kind(unet, kind, x, ["a", "b"], [0.5, 0.5], "residual", [main, p1, p2])
    assert (y1 - y2).abs().max() > 1e-2
    torch.testing.assert_close(both, 0.5 * y1 + 0.5 * y2, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------ batched residual vs reference loop


@pytest.mark.parametrize("kind", ["cross", "self", "temporal"])
def test_batched_residual_equals_a_loop_over_adapters(unet, kind):
    """Three adapters, weights not summing to one (so y_base enters): y_base + sum_i w_i (y_i - y_base)."""
    attn, x = layer(unet, kind), inputs(kind, seed=3)
    names, weights = ["a", "b", "c"], [0.7, -0.4, 0.5]
    texts = prompts(4, seed=4)
    adapters = [attn.processor.adapters[n] for n in names]
    with torch.no_grad():
        if kind == "cross":
            base = ref_cross_base(attn, x, texts[0])
            branches = [ref_cross_weights(attn, [ad], [1.0], x, [t]) for ad, t in zip(adapters, texts[1:])]
        elif kind == "temporal":
            base = ref_temporal_weights(attn, [], [], x)
            branches = [ref_temporal_weights(attn, [ad], [1.0], x) for ad in adapters]
        else:
            base = ref_self(attn, [], [], x)
            branches = [ref_self(attn, [ad], [1.0], x) for ad in adapters]
    expected = base + sum(w * (y - base) for w, y in zip(weights, branches))
    out = run_kind(unet, kind, x, names, weights, "residual", texts)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------- "weights" reference


@pytest.mark.parametrize("kind", ["cross", "self", "temporal"])
def test_weights_mode_equals_summed_scaled_deltas(unet, kind):
    attn, x = layer(unet, kind), inputs(kind, seed=5)
    names, weights = ["a", "b"], [0.7, 0.4]
    texts = prompts(3, seed=6)
    adapters = [attn.processor.adapters[n] for n in names]
    with torch.no_grad():
        expected = {
            "cross": lambda: ref_cross_weights(attn, adapters, weights, x, texts[1:]),  # 77*2 tokens, one softmax
            "self": lambda: ref_self(attn, adapters, weights, x),
            "temporal": lambda: ref_temporal_weights(attn, adapters, weights, x),
        }[kind]()
    out = run_kind(unet, kind, x, names, weights, "weights", texts)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_weights_mode_with_one_shared_prompt(unet):
    """Without per-adapter prompts every adapter's K/V delta applies to the main prompt: one 77-token block."""
    attn, x = layer(unet, "cross"), inputs("cross")
    (main,) = prompts(1)
    adapters = [attn.processor.adapters[n] for n in ("a", "b")]
    with torch.no_grad():
        q = linear(attn.to_q, x) + 0.6 * delta(adapters[0].to_q_lora, x)
        k = linear(attn.to_k, main) + sum(w * delta(ad.to_k_lora, main) for ad, w in zip(adapters, (0.6, 0.3)))
        v = linear(attn.to_v, main) + sum(w * delta(ad.to_v_lora, main) for ad, w in zip(adapters, (0.6, 0.3)))
        a = softmax_attention(attn, q, k, v)
        expected = linear(attn.to_out[0], a) + sum(w * delta(ad.to_out_lora, a) for ad, w in zip(adapters, (0.6, 0.3)))
    use(unet, ["a", "b"], [0.6, 0.3], "weights")
    torch.testing.assert_close(run(attn, x, main), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------- spatiotemporal Q adapters


def test_spatiotemporal_adapters_compose(unet):
    """STQ (r=2, rope_3d): "weights" at [1] and [1, 0] equal the adapter alone (regression: the deltas were lost
    there), and "residual" [0.5, 0.5] is the average of the single-adapter outputs."""
    attn, x = layer(unet, "cross"), inputs("cross", seed=7)
    CALL["spatial_sizes"] = {attn.processor.layer_name: (SIZE, SIZE)}  # normally recorded by the UNet's hooks
    main, p1, p2 = prompts(3, seed=8)
    y1 = run_kind(unet, "cross", x, ["s1"], [1.0], "residual", [main, p1])
    y2 = run_kind(unet, "cross", x, ["s2"], [1.0], "residual", [main, p2])
    assert (y1 - y2).abs().max() > 1e-2
    torch.testing.assert_close(run_kind(unet, "cross", x, ["s1"], [1.0], "weights", [main, p1]), y1, atol=ATOL, rtol=0)
    use(unet, ["s1"], [1.0], "residual")
    alone = run(attn, x, main)
    use(unet, ["s1", "s2"], [1.0, 0.0], "weights")
    torch.testing.assert_close(run(attn, x, main), alone, atol=ATOL, rtol=0)
    both = run_kind(unet, "cross", x, ["s1", "s2"], [0.5, 0.5], "residual", [main, p1, p2])
    torch.testing.assert_close(both, 0.5 * y1 + 0.5 * y2, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------ inactive adapters cost nothing


def test_inactive_adapter_changes_nothing_and_is_never_run(unet):
    x_cross, x_temporal = inputs("cross"), inputs("temporal")
    (text,) = prompts(1)
    use(unet, ["a"], [0.8])
    before = [run(layer(unet, "cross"), x_cross, text), run(layer(unet, "temporal"), x_temporal)]
    add_miva_adapter(
        unet, "extra", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4, use_motion_embed=True)
    )
    try:
        randomize(unet, "extra", 99)
        calls = []
        handles = [
            m.register_forward_hook(lambda *_: calls.append(1))
            for module in get_miva_adapter_modules(unet, "extra").values()
            for m in module.modules()
        ]
        use(unet, ["a"], [0.8])
        after = [run(layer(unet, "cross"), x_cross, text), run(layer(unet, "temporal"), x_temporal)]
        for handle in handles:
            handle.remove()
        assert not calls
        for b, a in zip(before, after):
            assert torch.equal(b, a)
    finally:
        set_miva_adapters(unet, [])
        delete_miva_adapter(unet, "extra")


# ----------------------------------------------------------------------------- classifier-free guidance (UNet)


def unet_text(per_video_prompts):
    """[(main, adapter_1, ...) per video] of (TOKENS, TEXT_DIM) -> (videos*frames, TOKENS*(1+N), TEXT_DIM)."""
    rows = [torch.cat(chunks, dim=0) for chunks in per_video_prompts]
    return torch.stack(rows).repeat_interleave(FRAMES_UNET, 0)


FRAMES_UNET = 8


@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("names", [["a"], ["a", "b"], ["a", "b", "c"], ["s1", "s2"]], ids=["1", "2", "3", "stq2"])
def test_guidance_conditional_half_equals_no_guidance(unet, names, batch, mode):
    """Batch [uncond; cond] (uncond = negative prompt in every adapter chunk): each half equals its own call."""
    generator = torch.Generator().manual_seed(len(names) * 10 + batch)
    n = len(names)
    cond = [[torch.randn(TOKENS, TEXT_DIM, generator=generator) for _ in range(1 + n)] for _ in range(batch)]
    negative = torch.randn(TOKENS, TEXT_DIM, generator=generator)
    uncond = [[negative] * (1 + n) for _ in range(batch)]
    sample = torch.randn(batch, 4, FRAMES_UNET, 8, 8, generator=generator)
    use(unet, names, [0.6, 0.3, 0.4][:n], mode, prompts=True)
    with torch.no_grad():
        with miva_call(unet, **CALL):
            guided = unet(torch.cat([sample, sample]), 500, unet_text(uncond + cond)).sample
            plain_cond = unet(sample, 500, unet_text(cond)).sample
            plain_uncond = unet(sample, 500, unet_text(uncond)).sample
        use(unet, [], [])
        base = unet(sample, 500, unet_text([c[:1] for c in cond])).sample
    assert (plain_cond - base).abs().max() > 1e-3  # the adapters matter
    torch.testing.assert_close(guided[batch:], plain_cond, atol=ATOL, rtol=0)
    torch.testing.assert_close(guided[:batch], plain_uncond, atol=ATOL, rtol=0)
    if batch == 2:  # a video's result does not depend on the other videos of the batch
        use(unet, names, [0.6, 0.3, 0.4][:n], mode, prompts=True)
        with torch.no_grad(), miva_call(unet, **CALL):
            single = unet(sample[1:], 500, unet_text(cond[1:])).sample
        torch.testing.assert_close(single, plain_cond[1:], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------- fusing


def unet_call(unet, seed=0, batch=1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, FRAMES_UNET, 8, 8, generator=generator)
    text = torch.randn(batch, TOKENS, TEXT_DIM, generator=generator).repeat_interleave(FRAMES_UNET, 0)
    with torch.no_grad():
        return unet(sample, 300, text).sample


def test_fuse_then_unfuse_restores_every_weight_bit_exactly(unet):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    use(unet, ["a", "b", "c"], [0.7, 0.4, -0.2], "weights")
    assert fuse_miva_adapters(unet) == [("a", 0.7), ("b", 0.4), ("c", -0.2)]
    fused_state = unet.state_dict()
    changed = [k for k in before if not torch.equal(before[k], fused_state[k])]
    assert changed and all(
        k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) for k in changed
    )
    assert any(".motion_modules." in k for k in changed) and any(".attn2." in k for k in changed)
    assert unfuse_miva_adapters(unet) == [("a", 0.7), ("b", 0.4), ("c", -0.2)]
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert unfuse_miva_adapters(unet) == []  # nothing left to unfuse


@pytest.mark.parametrize(
    "names, weights, mode",
    [
        (["a", "b"], [0.7, 0.4], "weights"),
        (["a"], [1.0], "residual"),
        (["c"], [0.6], "residual"),
        (["s1", "s2"], [0.8, 0.5], "weights"),
    ],
    ids=["two-weights", "one-residual", "one-residual-0.6", "stq"],
)
def test_fused_output_equals_unfused_weights_output(unet, names, weights, mode):
    """Merged deltas + the unfusable parts (cross-frame branch, motion embedding, STQ + PE) that keep running."""
    use(unet, names, weights, "weights")
    unfused = unet_call(unet, seed=1, batch=2)
    use(unet, [], [])
    base = unet_call(unet, seed=1, batch=2)
    use(unet, names, weights, mode)
    fuse_miva_adapters(unet)
    context = get_miva_context(unet)
    assert context.fused == list(zip(names, weights)) and context.parallel_mode == "weights"
    fused = unet_call(unet, seed=1, batch=2)
    unfuse_miva_adapters(unet)
    assert context.parallel_mode == mode and context.fused == []
    assert (unfused - base).abs().max() > 1e-3
    torch.testing.assert_close(fused, unfused, atol=ATOL, rtol=0)


def test_fusing_a_subset_keeps_the_others_unfused(unet):
    use(unet, ["a", "b"], [0.7, 0.4], "weights")
    unfused = unet_call(unet, seed=2)
    assert fuse_miva_adapters(unet, names=["b"]) == [("b", 0.4)]
    torch.testing.assert_close(unet_call(unet, seed=2), unfused, atol=ATOL, rtol=0)


def test_fused_is_one_record_asked_per_part_and_no_adapter_module_changes(unet):
    """What is fused lives in the context's `FuseState` only: it answers `merged(name, part)` for exactly the fused
    adapters' fusable parts, and no adapter module (its attributes or parameters) changes on fuse or unfuse."""
    use(unet, ["a", "b"], [0.7, 0.4], "weights")
    modules = {name: get_miva_adapter_modules(unet, name) for name in ("a", "b")}
    before = {(name, layer): (_attributes(m), {k: v.clone() for k, v in m.state_dict().items()})
              for name, bank in modules.items() for layer, m in bank.items()}
    fuse_miva_adapters(unet, names=["b"])
    state = get_miva_context(unet).fuse_state
    asked = {(name, part.name): state.merged(name, part) for name in ("a", "b") for part in parts.ADAPTER_PARTS}
    assert {key for key, merged in asked.items() if merged} == {("b", "motion_lora"), ("b", "ca_lora")}
    assert get_miva_context(unet).fused == [("b", 0.4)]
    for unfuse in (False, True):
        if unfuse:
            unfuse_miva_adapters(unet)
            assert get_miva_context(unet).fuse_state is None and get_miva_context(unet).fused == []
        for (name, layer), (attributes, tensors) in before.items():
            module = modules[name][layer]
            assert _attributes(module) == attributes
            assert all(torch.equal(module.state_dict()[k], v) for k, v in tensors.items())


def _attributes(module):
    """A module's own plain attributes (`has_lora`, `training`, ...): what a flag-flipping fuse would change."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def test_fuse_refusals(unet):
    use(unet, ["a", "b"], [0.5, 0.5], "residual")
    with pytest.raises(ValueError, match="parallel_mode='residual' with 2 active adapters.*'weights'"):
        fuse_miva_adapters(unet)
    use(unet, ["a", "b"], [0.5, 0.5], "weights", prompts=True)
    with miva_call(unet, **CALL), pytest.raises(ValueError, match="per-adapter prompts cannot be fused: each adapter"):
        fuse_miva_adapters(unet)
    use(unet, ["pa", "pb"], [0.5, 0.5], "weights")  # own prompts (as `miva train` records) but none in use
    unfused = unet_call(unet, seed=3)
    assert fuse_miva_adapters(unet) == [("pa", 0.5), ("pb", 0.5)]
    torch.testing.assert_close(unet_call(unet, seed=3), unfused, atol=ATOL, rtol=0)
    unfuse_miva_adapters(unet)
    use(unet, ["a"], [1.0], "weights")
    with pytest.raises(ValueError, match=r"names=\['b'\]: \['b'\] are not active; active adapters: \['a'\]"):
        fuse_miva_adapters(unet, names=["b"])
    use(unet, [], [])
    with pytest.raises(ValueError, match="no active adapters to fuse"):
        fuse_miva_adapters(unet)


def test_while_fused_state_changes_are_refused(unet):
    use(unet, ["a", "b"], [0.7, 0.4], "weights")
    fuse_miva_adapters(unet)
    match = r"fuse_adapters: adapters .* are fused into the base weights; call pipe.unfuse_adapters\(\) first"
    with pytest.raises(ValueError, match=match):
        fuse_miva_adapters(unet)
    with pytest.raises(ValueError, match="fused into the base weights"):
        set_miva_adapters(unet, ["a"])
    with pytest.raises(ValueError, match=r"delete_adapters: adapters \[\('a', 0.7\)\] are fused"):
        delete_miva_adapter(unet, "a")
    with pytest.raises(ValueError, match="parallel_mode='residual': adapters .* are fused"):
        set_parallel_mode(unet, "residual")
    attn, x = layer(unet, "cross"), inputs("cross")
    main, p1, p2 = prompts(3)
    match = r"adapter_weights=\[0.5, 0.4\] for \['a', 'b'\] changes the fused adapters"
    with pytest.raises(ValueError, match=match):  # per-call weights
        run_with_weights(attn, x, main, [0.5, 0.4])
    context = get_miva_context(unet)
    CALL["adapter_weights"] = [0.5, 0.4]  # what a pipeline's adapter_weights= does for one call
    with pytest.raises(ValueError, match=match):
        run(attn, x, main)
    del CALL["adapter_weights"]
    context.active = [("a", 0.7)]
    with pytest.raises(ValueError, match="changes the fused adapters"):
        run(attn, x, main)
    context.active = [("a", 0.7), ("b", 0.4)]
    CALL["adapter_prompts"] = True
    with pytest.raises(ValueError, match=r"per-adapter prompts \(.*\): adapters .* are fused"):
        run(attn, x, torch.cat([main, p1, p2], dim=1))

"""Research checkpoints (docs/research.md#positional-encodings, #research-checkpoints) imported as MIVA adapters reproduce the research computation.

The research side is written here from docs/research.md alone, independently of our processors and of
`miva.attention_processors.positional`: the CA out-LoRA after W_O, additive rotary `x + R(x)` (interleaved pairs,
complex multiplication), the positive-exponent sinusoid, token-major K/V tiling, bug B1, nearest down/upsampling
with `F.interpolate`. Checkpoints are written in the research key layout, imported, and every hooked layer of a
full UNet forward is compared with the reference computed on that layer's captured input.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from bare_pipe import BarePipe
from research_checkpoints import (
    RANK,
    research_ca_checkpoint,
    research_motion_and_i2v_checkpoints,
    spatial_cross_attentions,
)

from miva.attention_processors import MIVAAdapterConfig, get_miva_context
from miva.loaders import (
    adapter_state_dict,
    convert_research_checkpoint,
    convert_research_state_dict,
    remap_research_keys_for_index,
)
from miva.loaders.research import base_weights_from_unet

FRAMES = 16  # the research `video_length`: its 1-D rotary uses arange(16)
ALPHA = 2.0


# ------------------------------------------------------------------------------------ research reference maths


def research_sinusoid(positions: int, d: int) -> torch.Tensor:
    """The research `PositionalEncoding` table: exponent +2i ln(10000)/d (multiplied, not divided)."""
    position = torch.arange(positions).float().unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * (math.log(10000.0) / d))
    pe = torch.zeros(positions, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def research_rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """lucidrains rotary on interleaved pairs, theta_k = 10000^(-2k/D); `positions` (N,) for x (..., N, D)."""
    d = x.shape[-1]
    theta = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    angles = positions.float()[:, None] * theta[None, :]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def research_rope_3d(grid: torch.Tensor) -> torch.Tensor:
    """`x + R3d(x)` on (B, F, h, w, C): channels [frame C/4 | row C/4 | col C/4 | last C/4 untouched]."""
    b, f, h, w, c = grid.shape
    q = c // 4
    ff, hh, ww = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    flat = grid.reshape(b, f * h * w, c)
    parts = [research_rotate(flat[..., i * q : (i + 1) * q], pos.reshape(-1)) for i, pos in enumerate((ff, hh, ww))]
    rotated = torch.cat([*parts, flat[..., 3 * q :]], dim=-1)
    return (flat + rotated).reshape(b, f, h, w, c)


def mha(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def lora(x, down, up, scale):
    return (x @ down.T) @ up.T * scale


def research_cross_attention(attn, x, text, ckpt, layer, *, size, ratio, pe_mode, q_lora):
    """One research `LoRACAAttentionProcessor` call with STQ (docs/research.md#spatiotemporal-query to #lora-layers), single adapter."""
    s = ALPHA / RANK
    w = lambda proj, part: ckpt[f"{layer}.processor.{proj}_lora.{part}.weight"]
    bf, _, c = x.shape
    b, (hgt, wid) = bf // FRAMES, size
    grid = x.reshape(b, FRAMES, hgt, wid, c).permute(0, 4, 1, 2, 3)
    grid = F.interpolate(grid, size=(FRAMES, hgt // ratio, wid // ratio)).permute(0, 2, 3, 4, 1)  # nearest
    _, _, h, wq, _ = grid.shape
    n = FRAMES * h * wq
    if pe_mode == "rope_3d":
        xs = research_rope_3d(grid).reshape(b, n, c)
    else:
        xs = grid.reshape(b, n, c)
        if pe_mode == "naive":
            xs = xs + research_sinusoid(2560, c)[:n]
        elif pe_mode == "temporal":
            table = research_sinusoid(FRAMES, c)
            table[0] = 0
            xs = xs + table.repeat_interleave(n // FRAMES, dim=0)
        elif pe_mode == "temporal_sine":
            freq = torch.exp(torch.arange(0, c).float() * (math.log(10000.0) / c))
            table = torch.sin(torch.arange(FRAMES).float()[:, None] * freq[None, :])
            table[0] = 0
            xs = xs + table.repeat_interleave(n // FRAMES, dim=0)
        elif pe_mode == "rope_1d":
            xs = xs + research_rotate(xs, torch.arange(16).repeat_interleave(n // 16))
    q = xs @ attn.to_q.weight.T
    if q_lora:
        q = q + lora(xs, w("to_q", "down"), w("to_q", "up"), s)
    if pe_mode == "ropeQ_3d":  # bug B1: W_Q and the Q-LoRA are discarded
        q = research_rope_3d(grid).reshape(b, n, c)
    e = text[::FRAMES]
    k = e @ attn.to_k.weight.T + lora(e, w("to_k", "down"), w("to_k", "up"), s)
    v = e @ attn.to_v.weight.T + lora(e, w("to_v", "down"), w("to_v", "up"), s)
    if pe_mode in ("ropeQK_1d", "ropeQKV_1d"):
        tokens = k.shape[1]
        k, v = k.repeat_interleave(16, dim=1), v.repeat_interleave(16, dim=1)  # index n*16 + f (token-major)
        positions = torch.arange(16).repeat_interleave(tokens)  # position = index // 77
        k = k + research_rotate(k, positions)
        if pe_mode == "ropeQKV_1d":
            v = v + research_rotate(v, positions)
    y = mha(q, k, v, attn.heads) @ attn.to_out[0].weight.T + attn.to_out[0].bias
    y = y + lora(y, w("to_out", "down"), w("to_out", "up"), s)  # the out-LoRA reads W_O's output
    y = y.reshape(b * FRAMES, h, wq, c).permute(0, 3, 1, 2)
    y = F.interpolate(y, size=(hgt, wid), mode="nearest")
    return y.permute(0, 2, 3, 1).reshape(bf, hgt * wid, c)


# ------------------------------------------------------------------------------------ running and capturing


def capture(unet, layers, sample, text):
    """Run the UNet once; return {layer: (hidden_states, encoder_hidden_states, output)} of the given modules."""
    seen, handles = {}, []
    for layer in layers:

        def hook(module, args, kwargs, output, layer=layer):
            seen[layer] = (args[0], kwargs.get("encoder_hidden_states"), output)

        handles.append(unet.get_submodule(layer).register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(sample, 500, text)
    finally:
        for h in handles:
            h.remove()
    return seen


def inputs(batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, FRAMES, 8, 8, generator=g)
    text = torch.randn(batch, 77, 32, generator=g).repeat_interleave(FRAMES, dim=0)  # one prompt per video
    return sample, text


# ------------------------------------------------------------------------------------ tests


PE_CASES = [None, "naive", "temporal", "temporal_sine", "rope_1d", "rope_3d", "ropeQ_3d", "ropeQK_1d", "ropeQKV_1d"]


@pytest.mark.parametrize("pe_mode", PE_CASES)
def test_ca_lora_with_stq_matches_research(pipe, tmp_path, pe_mode):
    unet = pipe.unet
    ckpt = research_ca_checkpoint(unet)
    torch.save(ckpt, tmp_path / "animatediff-i2v-nv1-ca-lora-weights.pt")
    config = MIVAAdapterConfig(
        use_i2v=False,
        use_motion_lora=False,
        q_downsample=True,
        q_downsample_ratio=2,
        ca_pe_mode=pe_mode,
        ca_lora_scale=ALPHA,
    )
    pipe.load_adapters(
        {"ca_lora_path": tmp_path / "animatediff-i2v-nv1-ca-lora-weights.pt"}, config=config, adapter_names="r"
    )
    loaded = get_miva_context(unet).configs["r"]
    assert (loaded.ca_lora_rank, loaded.use_q_lora, loaded.ca_out_lora_bias) == (RANK, True, True)
    assert loaded.pe_style == "research"  # every import, also without a PE mode (research STQ grid)
    sample, text = inputs()
    layers = spatial_cross_attentions(unet)
    seen = capture(unet, layers, sample, text)
    sizes = {8 * 8: (8, 8), 4 * 4: (4, 4)}
    for layer in layers:
        x, e, out = seen[layer]
        ref = research_cross_attention(
            unet.get_submodule(layer), x, e, ckpt, layer, size=sizes[x.shape[1]], ratio=2, pe_mode=pe_mode, q_lora=True
        )
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{layer} ({pe_mode})")


@pytest.mark.parametrize("parallel_mode", ["residual", "weights"])
def test_ca_lora_without_stq_matches_research_in_both_modes(pipe, tmp_path, parallel_mode):
    """Plain per-frame CA (r = 1, no PE, equal to STQ in the research code) with the out-LoRA bias term."""
    unet = pipe.unet
    ckpt = research_ca_checkpoint(unet, seed=5)
    torch.save({"state_dict": ckpt}, tmp_path / "ca.pt")  # the {"state_dict": ...} wrapper is accepted too
    config = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, ca_lora_scale=ALPHA)
    pipe.load_adapters({"ca_lora_path": tmp_path / "ca.pt"}, config=config, parallel_mode=parallel_mode)
    sample, text = inputs(batch=1)
    layers = spatial_cross_attentions(unet)
    seen = capture(unet, layers, sample, text)
    for layer in layers:
        x, e, out = seen[layer]
        hw = x.shape[1]
        side = int(math.isqrt(hw))
        ref = research_cross_attention(
            unet.get_submodule(layer), x, e, ckpt, layer, size=(side, side), ratio=1, pe_mode=None, q_lora=True
        )
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_motion_lora_and_i2v_match_research(pipe, tmp_path):
    unet = pipe.unet
    motion, i2v, motion_modules = research_motion_and_i2v_checkpoints(unet)
    torch.save(motion, tmp_path / "lora.pt")
    torch.save(i2v, tmp_path / "i2v.pt")
    names = pipe.load_adapters(
        {"adapter_lora_path": tmp_path / "lora.pt", "adapter_i2v_path": tmp_path / "i2v.pt"},
        config=MIVAAdapterConfig(use_ca_lora=False, motion_lora_scale=ALPHA),
    )
    config = get_miva_context(unet).configs[names[0]]
    assert (config.use_i2v, config.i2v_train_q, config.use_motion_lora, config.motion_lora_rank) == (
        True,
        True,
        True,
        RANK,
    )
    temporal = {key: next(n for n, m in unet.named_modules() if m is attn) for key, attn in motion_modules.items()}
    spatial = [
        n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn1.processor") and "motion" not in n
    ]
    sample, text = inputs(batch=1)
    seen = capture(unet, [*temporal.values(), *spatial], sample, text)
    s = ALPHA / RANK
    for key, layer in temporal.items():  # MotionLoRA: standard placement, the out delta reads the attention output
        attn, (x, _, out) = unet.get_submodule(layer), seen[layer]
        w = lambda proj, part, key=key: motion[f"{key}.{proj}_lora.{part}.weight"]
        q, k, v = (
            x @ getattr(attn, p).weight.T + lora(x, w(p, "down"), w(p, "up"), s) for p in ("to_q", "to_k", "to_v")
        )
        a = mha(q, k, v, attn.heads)
        ref = a @ attn.to_out[0].weight.T + attn.to_out[0].bias + lora(a, w("to_out", "down"), w("to_out", "up"), s)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for layer in spatial:  # frozen attn1 + I2V (every frame attends to frame 0 with the adapter's own to_q/to_out)
        attn, (x, _, out) = unet.get_submodule(layer), seen[layer]
        block = layer[: -len(".attn1")]
        k, v = x @ attn.to_k.weight.T, x @ attn.to_v.weight.T
        stock = mha(x @ attn.to_q.weight.T, k, v, attn.heads) @ attn.to_out[0].weight.T + attn.to_out[0].bias
        q = x @ i2v[f"{block}.i2v_adapter.to_q.weight"].T
        k0 = k.reshape(-1, FRAMES, *k.shape[1:])[:, :1].expand(-1, FRAMES, -1, -1).reshape(k.shape)
        v0 = v.reshape(-1, FRAMES, *v.shape[1:])[:, :1].expand(-1, FRAMES, -1, -1).reshape(v.shape)
        branch = mha(q, k0, v0, attn.heads) @ i2v[f"{block}.i2v_adapter.to_out.0.weight"].T
        ref = stock + branch + i2v[f"{block}.i2v_adapter.to_out.0.bias"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_multi_adapter_key_renaming_round_trip(base_unet):
    """The research inference renames checkpoint i's keys (`to_k_loras.{i}`, `processor.processors.{i}`,
    `i2v_adapters.{i}`); importing index i of such a state dict equals importing checkpoint i itself."""
    ca = [research_ca_checkpoint(base_unet, seed=s) for s in (7, 8)]
    motion, i2v, _ = research_motion_and_i2v_checkpoints(base_unet, seed=9)
    singles = [{**ca[0], **motion, **i2v}, ca[1]]
    multi = {**remap_research_keys_for_index(singles[0], 0), **remap_research_keys_for_index(singles[1], 1)}
    assert any(".to_k_loras.1.down.weight" in k for k in multi)
    assert any(".processor.processors.0.to_q_lora" in k for k in multi)
    assert any(".i2v_adapters.0.to_out.0.weight" in k for k in multi)
    base = base_weights_from_unet(base_unet)
    for index in (0, 1):
        cfg_a, a = convert_research_state_dict(singles[index], base=base)
        cfg_b, b = convert_research_state_dict(multi, base=base, adapter_index=index)
        # research never renames `to_q_lora`, so index 1's Q-LoRA is the one written last: compare the rest
        a = {k: v for k, v in a.items() if "attn2.to_q_lora" not in k}
        b = {k: v for k, v in b.items() if "attn2.to_q_lora" not in k}
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (cfg_a.use_motion_lora, cfg_a.use_i2v) == (cfg_b.use_motion_lora, cfg_b.use_i2v) == (index == 0,) * 2
    with pytest.raises(ValueError, match=r"holds 2 adapters \(indices \[0, 1\]\); pass adapter_index"):
        convert_research_state_dict(multi, base=base)


def test_list_of_research_checkpoints_gives_one_adapter_each(pipe, tmp_path):
    paths = []
    for seed in (11, 12):
        torch.save(research_ca_checkpoint(pipe.unet, seed=seed), tmp_path / f"ca{seed}.pt")
        paths.append(tmp_path / f"ca{seed}.pt")
    names = pipe.load_adapters(
        {"ca_lora_path": paths},
        adapter_names=["a", "b"],
        weights=[0.5, 0.5],
        config=MIVAAdapterConfig(use_i2v=False, use_motion_lora=False),
    )
    assert names == ["a", "b"] and pipe.get_active_adapters() == ["a", "b"]
    a, b = adapter_state_dict(pipe.unet, "a"), adapter_state_dict(pipe.unet, "b")
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_lora.down.weight"
    assert not torch.equal(a[key], b[key])


def test_full_unet_safetensors_and_convert(base_unet, tmp_path):
    """A research full-UNet `model.safetensors` (base + adapters + attn_temp) converts without a UNet (W_O comes
    from the file) to the same adapter as the split checkpoint imported with the UNet's base."""
    from safetensors.torch import save_file

    ckpt = research_ca_checkpoint(base_unet, seed=13)
    full = {k: v.clone() for k, v in base_unet.state_dict().items()}
    full.update({k: v.clone() for k, v in ckpt.items()})
    full["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_out.0.bias"] = torch.randn(32)  # ignored
    save_file(full, tmp_path / "model.safetensors")
    torch.save(ckpt, tmp_path / "ca.pt")
    config = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, ca_lora_scale=ALPHA)
    out_full = convert_research_checkpoint(tmp_path / "model.safetensors", tmp_path / "from_full", config)
    unet = copy.deepcopy(base_unet)
    out_split = convert_research_checkpoint(
        {"ca_lora_path": tmp_path / "ca.pt"}, tmp_path / "from_split", config, unet=unet
    )
    assert not get_miva_context(unet).configs  # the probe load was removed
    from safetensors.torch import load_file

    a, b = load_file(out_full / "miva_adapter.safetensors"), load_file(out_split / "miva_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the converted folder loads as a native adapter
    pipe = BarePipe(unet)
    pipe.load_adapters(out_full, adapter_names="conv")
    assert get_miva_context(unet).configs["conv"].ca_out_lora_bias


def test_research_checkpoint_errors_name_key_and_shapes(pipe, tmp_path):
    ckpt = research_ca_checkpoint(pipe.unet)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight"
    ckpt[key] = torch.randn(RANK, 768)  # trained on SD1.5 (768-d text), this base has 32
    torch.save(ckpt, tmp_path / "sd15.pt")
    config = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False)
    with pytest.raises(ValueError, match=r"to_k_lora\.down\.weight.*\(4, 768\).*\(4, 32\)"):
        pipe.load_adapters({"ca_lora_path": tmp_path / "sd15.pt"}, config=config)
    assert not get_miva_context(pipe.unet).configs
    torch.save(
        {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.mid.weight": torch.zeros(2)},
        tmp_path / "odd.pt",
    )
    with pytest.raises(ValueError, match="unsupported research adapter key"):
        pipe.load_adapters(tmp_path / "odd.pt", config=config)


def test_imported_bias_survives_fusing(pipe, tmp_path):
    """`fuse_adapters` merges the imported out-delta bias into to_out[0].bias: same output fused and unfused."""
    torch.save(research_ca_checkpoint(pipe.unet, seed=21), tmp_path / "ca.pt")
    pipe.load_adapters(
        {"ca_lora_path": tmp_path / "ca.pt"},
        config=MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, ca_lora_scale=ALPHA),
    )
    sample, text = inputs(batch=1)
    with torch.no_grad():
        unfused = pipe.unet(sample, 500, text).sample
        pipe.fuse_adapters()
        fused = pipe.unet(sample, 500, text).sample
        pipe.unfuse_adapters()
        again = pipe.unet(sample, 500, text).sample
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)
    assert torch.equal(again, unfused)


def test_i2v_loras_fold_into_the_dense_branch_weights(base_unet):
    """I2V Q-LoRA (input side) and out-LoRA (after W_O: (I + D)(W a + b)) become the branch's dense to_q/to_out."""
    _, i2v, _ = research_motion_and_i2v_checkpoints(base_unet, seed=4)
    g = torch.Generator().manual_seed(0)
    loras = {}
    for key in [k for k in i2v if k.endswith("i2v_adapter.to_q.weight")]:
        prefix, c = key[: -len("to_q.weight")], i2v[key].shape[0]
        for proj in ("to_q", "to_out"):
            loras[f"{prefix}processor.{proj}_lora.down.weight"] = torch.randn(2, c, generator=g)
            loras[f"{prefix}processor.{proj}_lora.up.weight"] = torch.randn(c, 2, generator=g)
    config, native = convert_research_state_dict({**i2v, **loras}, base=base_weights_from_unet(base_unet))
    assert config.i2v_train_q
    block = "up_blocks.1.attentions.2.transformer_blocks.0"
    lo = lambda proj, part: loras[f"{block}.i2v_adapter.processor.{proj}_lora.{part}.weight"]
    d_out, d_q = lo("to_out", "up") @ lo("to_out", "down") / 2, lo("to_q", "up") @ lo("to_q", "down") / 2
    w, b = i2v[f"{block}.i2v_adapter.to_out.0.weight"], i2v[f"{block}.i2v_adapter.to_out.0.bias"]
    torch.testing.assert_close(native[f"{block}.attn1.to_out.weight"], w + d_out @ w)
    torch.testing.assert_close(native[f"{block}.attn1.to_out.bias"], b + d_out @ b)
    torch.testing.assert_close(native[f"{block}.attn1.to_q.weight"], i2v[f"{block}.i2v_adapter.to_q.weight"] + d_q)
    i2v[f"{block}.i2v_adapter.to_k.weight"] = i2v[f"{block}.i2v_adapter.to_k.weight"] + 0.5
    with pytest.raises(ValueError, match=r"attn1: the I2V adapter's to_k\.weight differs .* another base model"):
        convert_research_state_dict(i2v, base=base_weights_from_unet(base_unet))

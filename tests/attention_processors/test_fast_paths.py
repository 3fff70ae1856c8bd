"""The inference fast paths of issue 17 equal their reference paths (fp32, 1e-6).

- stacked LoRA deltas (`lora_bank.StackedLoRA`) against the LoRA formula written out here;
- `"residual"` with several adapters, temporal and cross-attention: the stacked / shared-query path (no autograd)
  against the branch-by-branch path the processors run under autograd (training), on the same layer;
- the spatiotemporal-Q upsampling against an index-based reference;
- fused LoRA adapters: the processors take the stock path, bit-exact with diffusers' own processors on the fused
  weights.
"""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from processor_harness import activate, add_standalone_adapter, run_processor, standalone_processor

from miva.attention_processors import (
    LoRADelta,
    MIVAAdapterConfig,
    MIVACrossAttnProcessor,
    MIVATemporalAttnProcessor,
    add_miva_adapter,
    composition,
    cross_attention,
    fuse_miva_adapters,
    get_miva_adapter_modules,
    install_miva_processors,
    set_miva_adapters,
)
from miva.attention_processors.lora_bank import StackedLoRA
from miva.attention_processors.spatiotemporal_query import SpatiotemporalQuery
from miva.tiny import tiny_unet_motion

DIM, HEADS, TEXT_DIM = 32, 4, 24


def _randomize(module, seed, std=0.3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _lora(rank, alpha, seed, features=(DIM, DIM)):
    delta = LoRADelta(*features, rank=rank, alpha=alpha)
    _randomize(delta, seed)
    return delta


def test_stacked_lora_follows_the_formula():
    deltas = [_lora(4, 2.0, 1), None, _lora(8, None, 2), _lora(2, 0.5, 3)]
    x = torch.randn(3, 5, DIM, generator=torch.Generator().manual_seed(0))
    base = torch.randn(3, 5, DIM, generator=torch.Generator().manual_seed(1))

    def written_out(delta, x):  # up @ down @ x * alpha / rank, the rank read from the weights' shapes
        if delta is None:
            return torch.zeros_like(x)
        rank = delta.down.weight.shape[0]
        factor = 1.0 if delta.alpha is None else delta.alpha / rank
        return x @ delta.down.weight.T @ delta.up.weight.T * factor

    with torch.no_grad():
        bank = StackedLoRA(deltas, x)
        each = bank.add_each(base, x)
        parts = [torch.randn(3, 5, DIM, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
        mixed = bank.mix(parts, [0.3, 0.9, -0.4, 1.2])
    assert each.shape == (4, 3, 5, DIM) and each.is_contiguous()
    for i, delta in enumerate(deltas):
        torch.testing.assert_close(each[i], base + written_out(delta, x), atol=1e-6, rtol=1e-6)
    expected = sum(c * written_out(d, p) for d, p, c in zip(deltas, parts, [0.3, 0.9, -0.4, 1.2]))
    torch.testing.assert_close(mixed, expected, atol=1e-6, rtol=1e-6)


def _attn(cross_dim=None, seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, cross_attention_dim=cross_dim, heads=HEADS, dim_head=DIM // HEADS,
                     out_bias=True).eval()


def _with_adapters(kind, attn, configs, weights, **context):
    processor = standalone_processor(kind, **context)
    for seed, (name, config) in enumerate(configs.items()):
        add_standalone_adapter(processor, attn, MIVAAdapterConfig(**config), name=name)
        _randomize(processor.adapters[name], seed + 1)
    activate(processor, list(zip(configs, weights)))
    return processor


def _reference_and_fast(run, spy_owner, spy_name, monkeypatch):
    """`run()` under autograd (the branch-by-branch reference) and without (the fast path, which must be taken)."""
    calls = []
    original = getattr(spy_owner, spy_name)

    def spy(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(spy_owner, spy_name, spy)
    with torch.enable_grad():
        reference = run()
    assert reference.requires_grad
    with torch.no_grad():
        fast = run()
    return reference.detach(), fast, calls


TEMPORAL = {
    "r4": dict(use_i2v=False, use_ca_lora=False, motion_lora_rank=4, motion_lora_scale=2.0),
    "r8": dict(use_i2v=False, use_ca_lora=False, motion_lora_rank=8),
    "r2": dict(use_i2v=False, use_ca_lora=False, motion_lora_rank=2, motion_lora_scale=0.5),
}


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.7, 0.6, -0.1], [0.4, 0.4, 0.0]])
def test_temporal_residual_stacked_equals_branch_by_branch(weights, monkeypatch):
    attn = _attn()
    processor = _with_adapters(MIVATemporalAttnProcessor, attn, TEMPORAL, weights, max_frames=16)
    x = torch.randn(6, 8, DIM, generator=torch.Generator().manual_seed(5))  # (batch*pixels, frames, C)
    reference, fast, calls = _reference_and_fast(
        lambda: run_processor(processor, attn, x), StackedLoRA, "add_each", monkeypatch)
    assert calls == [False] * 3  # Q, K and V ran stacked, at inference only
    activate(processor, [])
    with torch.no_grad():
        stock = AttnProcessor2_0()(attn, x)
    assert (reference - stock).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)


CROSS = {
    "a": dict(use_i2v=False, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=4, ca_lora_scale=2.0),
    "b": dict(use_i2v=False, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=8, ca_out_lora_bias=True),
    "c": dict(use_i2v=False, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=2),
}
STQ = dict(q_downsample=True, q_downsample_ratio=2, ca_pe_mode="rope_3d")


@pytest.mark.parametrize("stq", [False, True])
@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.6, 0.6, 0.1]])
def test_cross_residual_shared_query_equals_branch_by_branch(stq, weights, monkeypatch):
    attn = _attn(cross_dim=TEXT_DIM)
    configs = {name: dict(config, **(STQ if stq else {})) for name, config in CROSS.items()}
    processor = _with_adapters(MIVACrossAttnProcessor, attn, configs, weights,
                               layer_name="down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor")
    frames, videos, size = 4, 2, (4, 6)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(videos * frames, size[0] * size[1], DIM, generator=generator)
    text = torch.randn(videos, 7, TEXT_DIM, generator=generator).repeat_interleave(frames, dim=0)

    def run():
        return run_processor(processor, attn, x, text, size=size, call={"num_frames": frames})

    reference, fast, calls = _reference_and_fast(run, StackedLoRA, "mix", monkeypatch)
    assert calls == [False]  # the out deltas ran stacked at inference only
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)


def test_cross_residual_with_q_lora_still_equals_branch_by_branch():
    attn = _attn(cross_dim=TEXT_DIM)
    configs = dict(CROSS, a=dict(CROSS["a"], use_q_lora=True))
    processor = _with_adapters(MIVACrossAttnProcessor, attn, configs, [0.5, 0.3, 0.4])
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(8, 12, DIM, generator=generator)
    text = torch.randn(8, 7, TEXT_DIM, generator=generator)
    with torch.enable_grad():
        reference = run_processor(processor, attn, x, text, call={"num_frames": 4}).detach()
    with torch.no_grad():
        fast = run_processor(processor, attn, x, text, call={"num_frames": 4})
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("ratio, size", [(2, (4, 6)), (2, (5, 7)), (3, (7, 4)), (4, (3, 3))])
def test_stq_upsample_puts_each_cell_back_over_its_block(ratio, size):
    stq = SpatiotemporalQuery((True, ratio, "nearest", None, "standard"))
    hq, wq = stq.grid(size)
    y = torch.randn(2, 3 * hq * wq, 5)  # (batch, frames*h'*w', C)
    up = stq.upsample(y, 3, size)
    rows = torch.arange(size[0]) // ratio  # pixel (i, j) reads cell (i // r, j // r)
    cols = torch.arange(size[1]) // ratio
    expected = y.reshape(6, hq, wq, 5)[:, rows][:, :, cols].reshape(6, size[0] * size[1], 5)
    assert torch.equal(up, expected)


def test_fused_lora_adapters_take_the_stock_path_bit_exactly(monkeypatch):
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    lora_only = dict(use_i2v=False, use_motion_lora=True, use_ca_lora=True, motion_lora_rank=4, ca_lora_rank=4)
    for seed, name in enumerate(("x", "y")):
        add_miva_adapter(unet, name, MIVAAdapterConfig(**lora_only))
        for module in get_miva_adapter_modules(unet, name).values():
            _randomize(module, seed + 3)
    set_miva_adapters(unet, ["x", "y"], [0.7, 0.5], parallel_mode="weights")
    fuse_miva_adapters(unet)
    stock = tiny_unet_motion(seed=0)
    own = stock.state_dict()
    stock.load_state_dict({key: value for key, value in unet.state_dict().items() if key in own})
    stock.set_attn_processor(AttnProcessor2_0())
    adapter_paths = []
    monkeypatch.setattr(cross_attention.MIVACrossAttnProcessor, "_adapted",
                        lambda *a, **k: adapter_paths.append("_adapted"))
    for mode in composition.COMPOSERS:  # every composer (the processors' one way into adapter code)
        monkeypatch.setitem(composition.COMPOSERS, mode, lambda *a, _m=mode, **k: adapter_paths.append(_m))
    generator = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 4, 8, 8, generator=generator)
    text = torch.randn(8, 77, 32, generator=generator)
    with torch.no_grad():
        ours = unet(sample, 500, encoder_hidden_states=text).sample
        theirs = stock(sample, 500, encoder_hidden_states=text).sample
        base = tiny_unet_motion(seed=0)(sample, 500, encoder_hidden_states=text).sample
    assert adapter_paths == []
    assert (theirs - base).abs().max() > 1e-3  # the fused deltas matter
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)

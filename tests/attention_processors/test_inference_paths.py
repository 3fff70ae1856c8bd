"""The processors' inference fast paths equal their autograd paths, and both equal an independent reference.

Without autograd the processors merge LoRA deltas into temporary projection weights (`linear_with_deltas`); with
autograd (training) the low-rank paths run. Independent reference: for LoRA-only adapters, the stock diffusers UNet
(default processors) with `W + sum_i w_i (alpha_i / rank_i) up_i down_i` merged into its Q/K/V/out weights by hand
here; both paths must equal it. For the other compositions (cross-frame branches, motion embeddings, STQ, implicit
prompts) the two paths are compared with each other on the tiny UNet, and each composition has its own written-out
reference at layer level in test_multi_adapter.py, test_self_attention.py and test_stq_pe_reference.py.
"""

import pytest
import torch
from torch import nn

from miva.attention_processors import (
    LoRADelta,
    MIVAAdapterConfig,
    add_miva_adapter,
    fuse_miva_adapters,
    get_miva_adapter_modules,
    get_miva_context,
    install_miva_processors,
    set_miva_adapters,
    unfuse_miva_adapters,
)
from miva.attention_processors.lora import linear_with_deltas
from miva.tiny import tiny_unet_motion

FRAMES, VIDEOS, SIZE, TOKENS, TEXT_DIM = 4, 2, 8, 77, 32
FULL = dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True, motion_lora_rank=4, ca_lora_rank=4)
STQ = dict(q_downsample=True, q_downsample_ratio=2, ca_pe_mode="rope_3d")
CONFIGS = {
    "full": dict(FULL, use_q_lora=True, use_motion_embed=True),
    "first": dict(FULL),  # shares the cross-frame attention output with "full" (same queries and keys)
    "prev": dict(FULL, sa_mode="prev", i2v_train_q=True, ca_out_lora_bias=True),
    "adaptive": dict(FULL, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", use_motion_embed=True),
    "stq1": dict(FULL, use_q_lora=True, **STQ),
    "stq2": dict(FULL, use_i2v=False, **STQ),
    "implicit": dict(FULL, use_ca_lora=False, ca_mode="implicit"),
    "lora1": dict(use_motion_lora=True, use_ca_lora=True, motion_lora_rank=4, ca_lora_rank=4),
    "lora2": dict(use_motion_lora=True, use_ca_lora=True, motion_lora_rank=8, ca_lora_rank=8, use_q_lora=True),
    # LoRA only (no cross-frame branch): what the hand-merged stock UNet below can express.
    "m1": dict(use_i2v=False, use_motion_lora=True, use_ca_lora=True, use_q_lora=True, motion_lora_rank=4,
               motion_lora_scale=2.0, ca_lora_rank=4, ca_lora_scale=3.0),
    "m2": dict(use_i2v=False, use_motion_lora=True, use_ca_lora=True, motion_lora_rank=8, motion_lora_scale=0.5,
               ca_lora_rank=2, ca_lora_scale=1.0),
}
ALPHAS = {  # (motion alpha, cross-attention alpha) of the LoRA-only adapters, written again for the reference
    "m1": (2.0, 3.0),
    "m2": (0.5, 1.0),
}
CASES = {
    "one full adapter": (["full"], [1.0], "residual"),
    "one adapter, weight 0.6 (base branch)": (["prev"], [0.6], "residual"),
    "first_prev adaptive": (["adaptive"], [1.0], "residual"),
    "two residual, shared cross-frame output": (["full", "first"], [0.5, 0.5], "residual"),
    "three residual, weights sum 1.3": (["full", "prev", "adaptive"], [0.6, 0.4, 0.3], "residual"),
    "two weights": (["full", "prev"], [0.7, 0.3], "weights"),
    "STQ residual": (["stq1", "stq2"], [0.5, 0.8], "residual"),
    "STQ weights": (["stq1", "stq2"], [0.5, 0.5], "weights"),
    "implicit and LoRA residual": (["implicit", "full"], [0.5, 0.5], "residual"),
}


@pytest.fixture(scope="module")
def unet(randomize_adapter):
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    for seed, (name, fields) in enumerate(CONFIGS.items()):
        add_miva_adapter(unet, name, MIVAAdapterConfig(**fields))
        randomize_adapter(unet, name, seed=seed)
    return unet


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(VIDEOS, 4, FRAMES, SIZE, SIZE, generator=generator)
    text = torch.randn(VIDEOS * FRAMES, TOKENS, TEXT_DIM, generator=generator)
    return sample, torch.tensor([500, 200]), text


def _both(unet, inputs):
    sample, timestep, text = inputs
    with torch.enable_grad():
        trained = unet(sample, timestep, encoder_hidden_states=text).sample
    assert trained.requires_grad  # the autograd path really ran
    with torch.no_grad():
        inferred = unet(sample, timestep, encoder_hidden_states=text).sample
    return trained.detach(), inferred


@pytest.mark.parametrize("case", list(CASES))
def test_inference_equals_autograd_path(unet, inputs, case):
    names, weights, mode = CASES[case]
    set_miva_adapters(unet, names, weights, parallel_mode=mode)
    try:
        trained, inferred = _both(unet, inputs)
        set_miva_adapters(unet, [])
        with torch.no_grad():
            stock = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    finally:
        set_miva_adapters(unet, [], parallel_mode="residual")
    assert (trained - stock).abs().max() > 1e-3  # the adapters matter, so the comparison means something
    torch.testing.assert_close(inferred, trained, atol=1e-5, rtol=1e-5)


def _hand_merged_stock_unet(unet, names, weights):
    """A stock tiny UNet (diffusers' default processors, same seeded base weights) with each LoRA adapter's
    `w (alpha / rank) up @ down` added to the weight of the projection it sits on, written out here."""
    stock = tiny_unet_motion(seed=0)
    with torch.no_grad():
        for name, w in zip(names, weights):
            for layer, module in get_miva_adapter_modules(unet, name).items():
                attn = stock.get_submodule(layer.removesuffix(".processor"))
                alpha = ALPHAS[name][0 if ".motion_modules." in layer else 1]
                for part, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v),
                                     ("to_out", attn.to_out[0])):
                    delta = getattr(module, f"{part}_lora", None)
                    if delta is not None:
                        rank = delta.down.weight.shape[0]
                        linear.weight += w * (alpha / rank) * (delta.up.weight @ delta.down.weight)
    return stock


@pytest.mark.parametrize("names, weights, mode", [(["m1"], [1.0], "residual"), (["m1", "m2"], [0.6, 0.4], "weights")])
def test_both_paths_equal_the_stock_unet_with_hand_merged_weights(unet, inputs, names, weights, mode):
    sample, timestep, text = inputs
    set_miva_adapters(unet, names, weights, parallel_mode=mode)
    try:
        trained, inferred = _both(unet, inputs)
    finally:
        set_miva_adapters(unet, [], parallel_mode="residual")
    with torch.no_grad():
        expected = _hand_merged_stock_unet(unet, names, weights)(sample, timestep, encoder_hidden_states=text).sample
        stock = tiny_unet_motion(seed=0)(sample, timestep, encoder_hidden_states=text).sample
    assert (expected - stock).abs().max() > 1e-3  # the adapters matter
    torch.testing.assert_close(inferred, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained, expected, atol=1e-5, rtol=1e-5)


def test_fused_lora_adapters_equal_unfused_inference(unet, inputs):
    set_miva_adapters(unet, ["lora1", "lora2"], [0.6, 0.4], parallel_mode="weights")
    try:
        _, unfused = _both(unet, inputs)
        fuse_miva_adapters(unet)
        with torch.no_grad():
            fused = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
        unfuse_miva_adapters(unet)
    finally:
        set_miva_adapters(unet, [], parallel_mode="residual")
    assert not get_miva_context(unet).fused
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


def test_linear_with_deltas_merges_only_without_autograd():
    torch.manual_seed(0)
    linear = nn.Linear(12, 10)
    deltas = [(LoRADelta(12, 10, rank=3, alpha=2.0), 0.7), (LoRADelta(12, 10, rank=5, alpha=None), 1.0)]
    for delta, _ in deltas:
        nn.init.normal_(delta.up.weight)
    x = torch.randn(6, 4, 12)
    expected = linear(x) + 0.7 * deltas[0][0](x) + deltas[1][0](x)
    bias = torch.randn(10)
    with torch.no_grad():
        merged = linear_with_deltas(linear, x, deltas, bias=bias)
        torch.testing.assert_close(linear_with_deltas(linear, x, []), linear(x), atol=0, rtol=0)
    torch.testing.assert_close(merged, expected.detach() + bias, atol=1e-5, rtol=1e-5)
    # With autograd the low-rank path runs, so the deltas get gradients of their own.
    out = linear_with_deltas(linear, x, deltas)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    out.sum().backward()
    assert deltas[0][0].down.weight.grad is not None and deltas[1][0].up.weight.grad is not None


def test_linear_with_deltas_leaves_wrapped_projections_in_charge():
    """A projection wrapped by another library (PEFT LoRA) is called, never bypassed by a merged weight."""

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_layer = nn.Linear(8, 8)
            self.weight = self.base_layer.weight

        def forward(self, x):
            return self.base_layer(x) + 1.0  # the wrapper's own contribution

    torch.manual_seed(0)
    wrapped, delta = Wrapped(), LoRADelta(8, 8, rank=2)
    nn.init.normal_(delta.up.weight)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(linear_with_deltas(wrapped, x, [(delta, 0.5)]), wrapped(x) + 0.5 * delta(x))

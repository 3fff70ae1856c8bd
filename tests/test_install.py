"""Tests for installing the MIVA processors on the tiny `UNetMotionModel` and managing adapters by name.

The reference is the stock diffusers UNet (same seed, untouched) on batch 2, 8 frames and a non-square 8x10 latent.
"""

import re

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from miva.attention_processors import (
    MIVAAdapterConfig,
    MIVACrossAttnProcessor,
    MIVASelfAttnProcessor,
    MIVATemporalAttnProcessor,
    add_miva_adapter,
    delete_miva_adapter,
    get_miva_adapter_modules,
    get_miva_context,
    install_miva_processors,
    miva_call,
    set_miva_adapters,
    set_parallel_mode,
)
from miva.attention_processors.base import MIVAProcessorBase
from miva.tiny import tiny_unet_motion

VIDEOS, FRAMES, SIZE = 2, 8, (8, 10)
FULL = dict(use_i2v=True, use_motion_lora=True, motion_lora_rank=4, use_ca_lora=True, ca_lora_rank=4)
KEY = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(attentions|motion_modules)\.\d+\.transformer_blocks\.\d+\."
    r"attn[12]\.processor\.adapters\.(?P<name>[\w-]+)\.(?P<part>[\w.]+)$"
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def inputs():
    sample = torch.randn(VIDEOS, 4, FRAMES, *SIZE, generator=_gen(0))
    text = torch.randn(VIDEOS, 77, 32, generator=_gen(1)).repeat_interleave(FRAMES, dim=0)
    return sample, torch.tensor([500, 200]), text


@pytest.fixture(scope="module")
def stock_output(inputs):
    return _run(tiny_unet_motion(seed=0), inputs)


def _run(unet, inputs):
    sample, timestep, text = inputs
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=text).sample


def _randomise(unet, name, seed=0, std=0.1):
    generator = _gen(seed)
    with torch.no_grad():
        for module in get_miva_adapter_modules(unet, name).values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def _adapter_keys(unet, name=None):
    return sorted(k for k in unet.state_dict() if ".adapters." in k and (name is None or f".adapters.{name}." in k))


# ------------------------------------------------------------------------------------------------- installing


def test_processor_counts_and_kinds():
    unet = tiny_unet_motion(seed=0)
    context = install_miva_processors(unet)
    assert unet.miva_context is context and get_miva_context(unet) is context
    processors = unet.attn_processors
    assert len(processors) == 44 and len(context.processors) == 44
    kinds = [type(p) for p in processors.values()]
    assert kinds.count(MIVASelfAttnProcessor) == 11
    assert kinds.count(MIVACrossAttnProcessor) == 11
    assert kinds.count(MIVATemporalAttnProcessor) == 22
    for name, processor in processors.items():
        assert context.processors[name] is processor and processor.layer_name == name
        if ".motion_modules." in name:
            assert isinstance(processor, MIVATemporalAttnProcessor), name  # motion attn2 is temporal too
        elif name.endswith("attn2.processor"):
            assert isinstance(processor, MIVACrossAttnProcessor), name
    assert context.max_frames == 32 and context.temb_channels == 128


def test_no_adapter_and_fresh_adapter_equal_stock(inputs, stock_output):
    unet = tiny_unet_motion(seed=0)
    context = install_miva_processors(unet)
    torch.testing.assert_close(_run(unet, inputs), stock_output, atol=1e-6, rtol=0)
    add_miva_adapter(unet, "fresh", MIVAAdapterConfig(**FULL))
    set_miva_adapters(unet, ["fresh"])
    torch.testing.assert_close(_run(unet, inputs), stock_output, atol=1e-6, rtol=0)
    # The hooks recorded this call's values in its call state.
    with miva_call(unet) as outer:
        _run(unet, inputs)
    values = outer.forward
    assert values.num_frames == FRAMES
    assert values.timestep.tolist() == [500, 200]
    assert values.temb.shape == (VIDEOS, 128)
    level0 = "down_blocks.0.attentions.0.transformer_blocks.0"
    level1 = "down_blocks.1.attentions.0.transformer_blocks.0"
    assert values.spatial_sizes[f"{level0}.attn1.processor"] == SIZE
    assert values.spatial_sizes[f"{level0}.attn2.processor"] == SIZE
    assert values.spatial_sizes[f"{level1}.attn2.processor"] == (4, 5)
    assert len(values.spatial_sizes) == 22  # every spatial attn1 / attn2
    # Nothing is attached to diffusers' modules.
    assert not [name for name, module in unet.named_modules() if any(k.startswith("miva") for k in vars(module))
                and module is not unet]
    # A call opened with `miva_call` gets its own state; an earlier call's state is untouched by it.
    with miva_call(unet) as state:
        _run(unet, (inputs[0][:1, :, :4], inputs[1][:1], inputs[2][:4]))
        assert context.call_state() is state and state.forward.num_frames == 4
    assert context.call_state() is not state and values.num_frames == FRAMES
    assert context.calls == [] and not context.recording  # no call left open, no recorder left behind
    # Non-zero adapter weights change the output; disabling the adapters brings the stock output back.
    _randomise(unet, "fresh")
    adapted = _run(unet, inputs)
    assert (adapted - stock_output).abs().max() > 1e-3
    context.enabled = False
    torch.testing.assert_close(_run(unet, inputs), stock_output, atol=1e-6, rtol=0)
    context.enabled = True
    set_miva_adapters(unet, [])
    torch.testing.assert_close(_run(unet, inputs), stock_output, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def adapted_unet(inputs):
    """An installed UNet with a randomised, active full adapter "w" (read-only for the tests that use it)."""
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    add_miva_adapter(unet, "w", MIVAAdapterConfig(use_motion_embed=True, use_q_lora=True, **FULL))
    _randomise(unet, "w")
    set_miva_adapters(unet, ["w"])
    return unet, _run(unet, inputs)


def test_install_is_idempotent(adapted_unet, inputs):
    unet, expected = adapted_unet
    context = unet.miva_context
    before = dict(unet.attn_processors)
    hooks = (dict(unet._forward_pre_hooks), dict(unet._forward_hooks))
    assert install_miva_processors(unet) is context
    after = unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())
    assert (dict(unet._forward_pre_hooks), dict(unet._forward_hooks)) == hooks  # no second set of hooks
    assert all("w" in p.adapters for p in after.values())
    torch.testing.assert_close(_run(unet, inputs), expected, atol=0, rtol=0)


def test_calls_nest_each_with_its_own_state(adapted_unet, inputs):
    """One UNet serving a call inside another: each sees its own per-call values, and the outer one's are back
    when the inner one ends."""
    unet, expected = adapted_unet
    context = get_miva_context(unet)
    with miva_call(unet, adapter_weights=[0.0]) as outer:
        base = _run(unet, inputs)
        with miva_call(unet, adapter_weights=[1.0]) as inner:
            torch.testing.assert_close(_run(unet, inputs), expected, atol=0, rtol=0)
            assert context.call_state() is inner
        assert context.call_state() is outer
        torch.testing.assert_close(_run(unet, inputs), base, atol=0, rtol=0)
    assert context.calls == [] and context.active == [("w", 1.0)]
    assert (expected - base).abs().max() > 1e-3


def test_reinstall_after_diffusers_replaced_every_processor(inputs, stock_output):
    unet = tiny_unet_motion(seed=0)
    context = install_miva_processors(unet)
    add_miva_adapter(unet, "w", MIVAAdapterConfig(**FULL))
    _randomise(unet, "w")
    set_miva_adapters(unet, ["w"])
    ours = dict(unet.attn_processors)
    expected = _run(unet, inputs)
    unet.set_attn_processor(AttnProcessor2_0())
    assert not any(isinstance(p, MIVAProcessorBase) for p in unet.attn_processors.values())
    assert not _adapter_keys(unet)  # the adapters left the state dict with our processors...
    torch.testing.assert_close(_run(unet, inputs), stock_output, atol=1e-6, rtol=0)
    assert install_miva_processors(unet) is context
    restored = unet.attn_processors
    assert all(restored[name] is processor for name, processor in ours.items())  # ...and come back with them
    assert len(_adapter_keys(unet, "w")) == 11 * 2 + 11 * 6 + 22 * 8
    torch.testing.assert_close(_run(unet, inputs), expected, atol=0, rtol=0)


# ------------------------------------------------------------------------------------- state dict and dtypes


def test_adapter_parameters_in_state_dict(adapted_unet):
    unet, _ = adapted_unet
    keys = _adapter_keys(unet)
    # attn1: to_out (weight, bias); attn2: K/V/O/Q LoRA (down, up); temporal: Q/K/V/O LoRA + embedding.
    assert len(keys) == 11 * 2 + 11 * 8 + 22 * 9
    for key in keys:
        match = KEY.match(key)
        assert match and match["name"] == "w", key
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.adapters.w.to_k_lora.down.weight" in keys
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.adapters.w.to_out.bias" in keys
    assert "mid_block.motion_modules.0.transformer_blocks.0.attn2.processor.adapters.w.motion_embed" in keys
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert shapes["up_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor.adapters.w.motion_embed"] == (
        32,
        64,
    )
    assert shapes["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.adapters.w.to_v_lora.up.weight"] == (
        64,
        4,
    )


def test_state_dict_round_trip(adapted_unet, inputs):
    unet, expected = adapted_unet
    other = tiny_unet_motion(seed=0)
    add_miva_adapter(other, "w", MIVAAdapterConfig(use_motion_embed=True, use_q_lora=True, **FULL))
    set_miva_adapters(other, ["w"])
    state = {k: v for k, v in unet.state_dict().items() if ".adapters." in k}
    result = other.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if ".adapters." in k]
    torch.testing.assert_close(_run(other, inputs), expected, atol=1e-6, rtol=0)


def test_to_float64_casts_adapters(inputs):
    unet = tiny_unet_motion(seed=0)
    add_miva_adapter(unet, "w", MIVAAdapterConfig(use_motion_embed=True, **FULL))
    _randomise(unet, "w")
    set_miva_adapters(unet, ["w"])
    expected = _run(unet, inputs)
    unet.to(torch.float64)
    dtypes = {v.dtype for k, v in unet.state_dict().items() if ".adapters." in k}
    assert dtypes == {torch.float64}
    sample, timestep, text = inputs
    out = _run(unet, (sample.double(), timestep, text.double()))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- training


def test_training_moves_only_adapter_parameters():
    unet = tiny_unet_motion(seed=0)
    config = MIVAAdapterConfig(
        i2v_train_q=True,
        sa_mode="first_prev",
        sa_first_frame_scale="adaptive_0.2",
        use_motion_embed=True,
        use_q_lora=True,
        **FULL,
    )
    add_miva_adapter(unet, "w", config)
    _randomise(unet, "w", std=0.05)  # every part non-zero, so every adapter parameter gets a gradient
    set_miva_adapters(unet, ["w"])
    unet.train()
    named = dict(unet.named_parameters())
    adapter_names = {n for n in named if ".adapters.w." in n}
    assert len(adapter_names) == 11 * 5 + 11 * 8 + 22 * 9  # attn1: to_out (2), own to_q (1), weight_module (2)
    for name, p in named.items():
        p.requires_grad_(name in adapter_names)
    before = {n: p.detach().clone() for n, p in named.items()}
    sample = torch.randn(1, 4, 4, 8, 8, generator=_gen(5))
    text = torch.randn(1, 77, 32, generator=_gen(6)).repeat_interleave(4, dim=0)
    target = torch.randn(1, 4, 4, 8, 8, generator=_gen(7))
    loss = torch.nn.functional.mse_loss(unet(sample, torch.tensor([300]), encoder_hidden_states=text).sample, target)
    loss.backward()
    for name, p in named.items():
        if name in adapter_names:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-2)  # all parameters, as users do
    optimizer.step()
    for name, p in named.items():
        if name in adapter_names:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name  # bit-identical


# --------------------------------------------------------------------------------------- managing adapters


def test_add_errors():
    unet = tiny_unet_motion(seed=0)
    add_miva_adapter(unet, "w", MIVAAdapterConfig())  # installs the processors on first use
    assert len(get_miva_context(unet).processors) == 44
    with pytest.raises(ValueError, match=r"an adapter named 'w' already exists; loaded adapters: \['w'\]"):
        add_miva_adapter(unet, "w", MIVAAdapterConfig())
    for bad in ("", "a.b", "has space", "x/y"):
        with pytest.raises(ValueError, match=rf"adapter name {bad!r} must be a non-empty string"):
            add_miva_adapter(unet, bad, MIVAAdapterConfig())
    with pytest.raises(TypeError, match="config must be a MIVAAdapterConfig, got dict"):
        add_miva_adapter(unet, "v", {"use_i2v": True})
    assert list(get_miva_context(unet).configs) == ["w"]


def test_set_errors():
    unet = tiny_unet_motion(seed=0)
    with pytest.raises(ValueError, match=r"call install_miva_processors\(unet\) first"):
        set_miva_adapters(unet, ["w"])
    add_miva_adapter(unet, "w", MIVAAdapterConfig(use_ca_lora=True))
    add_miva_adapter(unet, "c", MIVAAdapterConfig(use_ca_lora=True))
    add_miva_adapter(unet, "stq", MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=2))
    add_miva_adapter(unet, "motion", MIVAAdapterConfig(use_i2v=False))
    with pytest.raises(ValueError, match=r"unknown adapter 'x'; loaded adapters: \['w', 'c', 'stq', 'motion'\]"):
        set_miva_adapters(unet, ["w", "x"])
    with pytest.raises(ValueError, match=r"adapter_weights has 1 entries but 2 adapters were named: \['w', 'c'\]"):
        set_miva_adapters(unet, ["w", "c"], [0.5])
    with pytest.raises(ValueError, match="disagree on spatiotemporal Q"):
        set_miva_adapters(unet, ["w", "stq"])
    with pytest.raises(ValueError, match="must be distinct"):
        set_miva_adapters(unet, ["w", "w"])
    with pytest.raises(ValueError, match=r"parallel_mode='sum' is not one of \['residual', 'weights'\]"):
        set_miva_adapters(unet, ["w"], parallel_mode="sum")
    context = get_miva_context(unet)
    assert context.active == []  # nothing was half-applied
    set_miva_adapters(unet, ["stq", "motion"])  # an adapter without a cross-attention part agrees with anything
    assert context.active == [("stq", 1.0), ("motion", 1.0)]
    set_miva_adapters(unet, "w", 0.5, parallel_mode="weights")
    assert context.active == [("w", 0.5)] and context.parallel_mode == "weights"
    set_parallel_mode(unet, "residual")
    assert context.parallel_mode == "residual"


def test_delete_removes_state_dict_keys():
    unet = tiny_unet_motion(seed=0)
    add_miva_adapter(unet, "w", MIVAAdapterConfig(**FULL))
    add_miva_adapter(unet, "c", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, use_motion_lora=False))
    set_miva_adapters(unet, ["w", "c"], [0.5, 0.5])
    kept = _adapter_keys(unet, "c")
    assert len(_adapter_keys(unet, "w")) == 11 * 2 + 11 * 6 + 22 * 8
    delete_miva_adapter(unet, "w")
    assert _adapter_keys(unet, "w") == [] and _adapter_keys(unet) == kept
    assert not get_miva_adapter_modules(unet, "w")
    context = get_miva_context(unet)
    assert list(context.configs) == ["c"] and context.active == [("c", 0.5)]
    with pytest.raises(ValueError, match=r"no adapter named 'w'; loaded adapters: \['c'\]"):
        delete_miva_adapter(unet, "w")


def test_kept_adapter_settings_put_back_active_weights_enabled_and_mode():
    """Validation during training runs a pipeline on the UNet being trained: whatever that changes through the verbs
    comes back when the block ends, also when it raises."""
    from miva.attention_processors.install import disable_miva_adapters, kept_adapter_settings

    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    for name in ("a", "b"):
        add_miva_adapter(unet, name, MIVAAdapterConfig(**FULL))
    set_miva_adapters(unet, ["a", "b"], [0.5, 0.25], parallel_mode="weights")
    context = get_miva_context(unet)
    with pytest.raises(RuntimeError, match="validation failed"), kept_adapter_settings(unet):
        set_miva_adapters(unet, ["b"], [2.0], parallel_mode="residual")
        disable_miva_adapters(unet)
        assert (context.active, context.enabled, context.parallel_mode) == ([("b", 2.0)], False, "residual")
        raise RuntimeError("validation failed")
    assert (context.active, context.enabled, context.parallel_mode) == ([("a", 0.5), ("b", 0.25)], True, "weights")


def test_a_backbone_description_decides_layers_and_recorders():
    """Issue 28 item 4: which layers get which processor and which hooks a call registers come from the model's
    `Backbone` description; another description (here: no temporal layers, no level recorder) changes only that."""
    import dataclasses

    from miva.backbones.base import Recorder
    from miva.backbones.unet import ANIMATEDIFF_UNET

    assert [row[0] for row in ANIMATEDIFF_UNET.hook_table()] == ["timestep", "temb", "num_frames", "level"]
    spatial_only = dataclasses.replace(
        ANIMATEDIFF_UNET, name="no temporal layers",
        layer_kind=lambda name: None if ".motion_modules." in name else ANIMATEDIFF_UNET.layer_kind(name),
        recorders=tuple(r for r in ANIMATEDIFF_UNET.recorders if r.value != "level"))
    unet = tiny_unet_motion(seed=0)
    context = install_miva_processors(unet, backbone=spatial_only)
    kinds = [type(p) for p in unet.attn_processors.values()]
    assert kinds.count(MIVATemporalAttnProcessor) == 0 and kinds.count(AttnProcessor2_0) == 22
    assert len(context.processors) == 22 and context.backbone is spatial_only
    with miva_call(unet) as state:
        hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())
        _run(unet, (torch.randn(1, 4, 2, 8, 10), torch.tensor([10]), torch.randn(2, 77, 32)))
    assert hooks == 2 + 2 + len(unet.down_blocks) + 1 + len(unet.up_blocks)  # no Transformer2DModel hook
    assert state.forward.num_frames == 2 and state.forward.spatial_sizes == {}
    with pytest.raises(ValueError, match=r"Recorder.value='frames' is not one of \['timestep', 'temb', 'num_frames'"):
        Recorder("frames", lambda model: [], lambda args, kwargs, output: None, before=True, why="")

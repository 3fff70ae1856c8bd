"""The Wan transformer's backbone description: which layers get MIVA processors, and recorders that exist only
while a call is open (as on the UNet, tests/attention_processors/test_copies.py)."""

import copy

import torch
from wan_helpers import randomize, wan_inputs, wan_transformer

from miva.attention_processors import get_miva_adapter_modules, miva_call, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter
from miva.backbones.wan.processors import MIVAWanCrossAttnProcessor, MIVAWanSelfAttnProcessor


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _branch_model(seed=0):
    model = wan_transformer(seed)
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="linear"))
    for module in get_miva_adapter_modules(model, "a").values():
        randomize(module, seed=3)
    set_miva_adapters(model, "a")
    return model


def test_every_block_gets_a_self_and_a_cross_processor():
    model = _branch_model()
    processors = model.attn_processors
    assert set(processors) == {f"blocks.{i}.attn{j}.processor" for i in range(len(model.blocks)) for j in (1, 2)}
    for name, processor in processors.items():
        kind = MIVAWanSelfAttnProcessor if name.endswith("attn1.processor") else MIVAWanCrossAttnProcessor
        assert type(processor) is kind, name


def test_recorders_exist_only_during_a_call_and_record_the_frames():
    model = _branch_model()
    latents, timestep, text = wan_inputs(frames=3)
    outside = _hooks(model)
    seen = {}
    with miva_call(model) as state:
        # rope (frames) and condition_embedder (timestep before, temb after): three more hooks, only now
        assert _hooks(model) == outside + 3
        with torch.no_grad():
            model(latents, timestep, text)
        seen.update(frames=state.forward.num_frames, timestep=state.forward.timestep)
    assert _hooks(model) == outside == 2  # the two that open a call for a bare forward
    assert seen["frames"] == 3
    torch.testing.assert_close(seen["timestep"], timestep)


def test_a_bare_forward_equals_one_inside_a_call_and_a_deepcopy_matches():
    model = _branch_model()
    latents, timestep, text = wan_inputs(frames=3)
    with torch.no_grad():
        bare = model(latents, timestep, text).sample
        with miva_call(model):
            called = model(latents, timestep, text).sample
        copied = copy.deepcopy(model)(latents, timestep, text).sample
    torch.testing.assert_close(bare, called, rtol=0, atol=0)
    torch.testing.assert_close(copied, bare, rtol=0, atol=0)


def test_compile_repeated_blocks_compiles_the_miva_blocks_and_matches_eager():
    """diffusers' regional compilation matches blocks by class name; the branch-running subclass must be found
    (without it, diffusers raises "Regional compilation failed ...") and give the eager output."""
    model = _branch_model()
    latents, timestep, text = wan_inputs(frames=3)
    with torch.no_grad():
        eager = model(latents, timestep, text).sample
        model.compile_repeated_blocks(backend="eager", fullgraph=False)
        assert all(getattr(block, "_compiled_call_impl", None) is not None for block in model.blocks)
        compiled = model(latents, timestep, text).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)

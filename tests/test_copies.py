"""Copies of a MIVA UNet or pipeline work, and the hooks that feed a call exist only while the call is open.

`copy.deepcopy` of a UNet with MIVA processors (or of a whole `MIVAPipeline`) carries its context and its two call
hooks with it: the copy generates the same video as the original, and afterwards the two are independent (an
adapter weight changed on one leaves the other's output unchanged). `from_pipe(pipe, unet=copy.deepcopy(pipe.unet))`
generates too. The recorders (timestep, time embedding, frames, level sizes) are registered by `miva_call` and
removed when it closes; outside a call only the two hooks that open a call for a bare forward remain.
"""

import copy

import torch

from miva.attention_processors import MIVAAdapterConfig, miva_call
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

CALL = dict(prompt="a waterfall", num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
            output_type="latent")
FULL = dict(use_i2v=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", use_motion_lora=True,
            motion_lora_rank=4, use_ca_lora=True, ca_lora_rank=4, use_motion_embed=True)


def _pipe(randomize_adapter):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("flow", MIVAAdapterConfig(**FULL))
    randomize_adapter(pipe, "flow", seed=3, std=0.2)
    return pipe


def _video(pipe):
    return pipe(make_test_image(64, 64), generator=torch.Generator().manual_seed(0), **CALL).frames


def _hooks(module):
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


def _hook_count(unet):
    """Hook registrations on the UNet and every submodule."""
    return sum(_hooks(m) for m in unet.modules())


def test_recorders_exist_only_during_a_call(randomize_adapter):
    pipe = _pipe(randomize_adapter)
    unet = pipe.unet
    assert _hook_count(unet) == 2 and _hooks(unet) == 2  # outside a call: the two call hooks on the UNet only
    seen, frames = [], []

    def count(pipe, i, t, tensors):
        seen.append(_hook_count(unet))
        frames.append(unet.miva_context.call_state().num_frames)  # what the pipeline knows is in the call's state
        return tensors

    pipe(make_test_image(64, 64), callback_on_step_end=count, **CALL)
    blocks = len(unet.down_blocks) + 1 + len(unet.up_blocks)
    transformers = sum(1 for name in unet.miva_context.processors if name.endswith("attn1.processor")
                       and ".motion_modules." not in name)  # one Transformer2DModel per spatial attn1
    assert seen == [2 + 2 + blocks + transformers] * 2  # time_proj, time_embedding, each block and transformer
    assert frames == [CALL["num_frames"]] * 2
    assert _hook_count(unet) == 2 and unet.miva_context.calls == []


def test_deepcopy_of_a_unet_generates_the_same_and_is_independent(randomize_adapter):
    pipe = _pipe(randomize_adapter)
    expected = _video(pipe)
    copied = MIVAPipeline.from_pipe(pipe, unet=copy.deepcopy(pipe.unet))  # formerly "num_frames is unknown"
    assert copied.unet is not pipe.unet and copied.unet.miva_context is not pipe.unet.miva_context
    torch.testing.assert_close(_video(copied), expected, rtol=0, atol=0)
    copied.set_adapters(["flow"], [0.0])  # the copy's adapter bookkeeping is its own...
    changed = _video(copied)
    assert (changed - expected).abs().max() > 1e-3
    torch.testing.assert_close(_video(pipe), expected, rtol=0, atol=0)  # ...the original is untouched
    with torch.no_grad():  # and so are its weights
        for parameter in copied.unet.parameters():
            parameter.zero_()
    torch.testing.assert_close(_video(pipe), expected, rtol=0, atol=0)


def test_deepcopy_of_a_pipeline_generates_the_same(randomize_adapter):
    pipe = _pipe(randomize_adapter)
    expected = _video(pipe)
    copied = copy.deepcopy(pipe)
    torch.testing.assert_close(_video(copied), expected, rtol=0, atol=0)
    copied.delete_adapters(["flow"])
    assert pipe.get_list_adapters()["miva"] == ["flow"]
    torch.testing.assert_close(_video(pipe), expected, rtol=0, atol=0)
    copied.unload_adapters()  # removes the copy's call hooks, not the original's
    assert _hook_count(copied.unet) == 0 and _hook_count(pipe.unet) == 2
    torch.testing.assert_close(_video(pipe), expected, rtol=0, atol=0)


def test_a_bare_forward_on_a_copy_records_into_the_copy(randomize_adapter):
    """A forward outside any call (a stock pipeline sharing the UNet, `unet(...)`) opens a call on the context of
    the model it runs on, also on a copy."""
    unet = _pipe(randomize_adapter).unet
    with miva_call(unet):  # a copy made during a call starts with none open
        copied = copy.deepcopy(unet)
    assert copied.miva_context.calls == [] and not copied.miva_context.recording
    sample = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(4, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = unet(sample, torch.tensor([500]), encoder_hidden_states=text).sample
        with miva_call(copied) as state:
            torch.testing.assert_close(copied(sample, torch.tensor([500]), encoder_hidden_states=text).sample, out,
                                       rtol=0, atol=0)
        torch.testing.assert_close(copied(sample, torch.tensor([500]), encoder_hidden_states=text).sample, out,
                                   rtol=0, atol=0)
    assert state.forward.num_frames == 4 and unet.miva_context.calls == [] and copied.miva_context.calls == []

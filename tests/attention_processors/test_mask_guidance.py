"""Mask-guided attention on the tiny UNet (docs/mask_branch.md): a zero mask removes exactly the gated parts of the
adapter, a one mask changes nothing, and the mask stream's rows start as the frozen UNet on the mask latent."""

import copy

import pytest
import torch

from miva.attention_processors import (
    MIVAAdapterConfig,
    add_miva_adapter,
    install_miva_processors,
    miva_call,
    set_miva_adapters,
)
from miva.attention_processors.mask_guidance import MaskGuidance, check_mask_attention_mode
from miva.loaders import adapter_state_dict
from miva.tiny import tiny_unet_motion

FRAMES, SIZE = 4, 8
CONFIG = MIVAAdapterConfig(use_mask_branch=True, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=2)


def _unet(zero=()):
    """A tiny UNet with a trained-looking mask-branch adapter "m"; the parameters whose names contain one of
    `zero` are zeroed (the reference for a part switched off)."""
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    add_miva_adapter(unet, "m", CONFIG)
    set_miva_adapters(unet, ["m"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in adapter_state_dict(unet, "m").items():
            if "mask_to" not in key:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.2)
            if any(z in key for z in zero):
                tensor.zero_()
    return unet


@pytest.fixture(scope="module")
def unets():
    return {"full": _unet(), "no_sa": _unet(zero=(".to_out.",)),
            "no_ca": _unet(zero=("_lora",)), "none": _unet(zero=(".to_out.", "_lora"))}


def _inputs(videos=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(videos, 4, FRAMES, SIZE, SIZE, generator=g)
    text = torch.randn(videos, 77, 32, generator=g).repeat_interleave(FRAMES, dim=0)  # (videos*F, 77, D)
    return sample, text


def _forward(unet, sample, text, guidance=None):
    with torch.no_grad(), miva_call(unet, num_frames=FRAMES, mask_guidance=guidance):
        return unet(sample, 500, text).sample


def _guidance(mode, value, videos=1, **kw):
    soft = torch.full((videos, FRAMES, SIZE * 8, SIZE * 8), float(value))
    return MaskGuidance(("m",), videos, FRAMES, mode, soft={"m": soft}, **kw)


@pytest.mark.parametrize(("mode", "reference"), [("SA", "no_sa"), ("CA", "no_ca"), ("original", "none")])
def test_zero_mask_removes_exactly_the_gated_parts(unets, mode, reference):
    sample, text = _inputs()
    out = _forward(unets["full"], sample, text, _guidance(mode, 0.0))
    expected = _forward(unets[reference], sample, text)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    assert not torch.allclose(out, _forward(unets["full"], sample, text), atol=1e-3)  # the gated part acted


@pytest.mark.parametrize("mode", ["SA", "CA", "original"])
def test_one_mask_changes_nothing(unets, mode):
    sample, text = _inputs()
    out = _forward(unets["full"], sample, text, _guidance(mode, 1.0))
    assert torch.allclose(out, _forward(unets["full"], sample, text), atol=1e-5)


def test_half_mask_gates_per_token(unets):
    """SA: on a left-half mask the output's left half is the full adapter's, its right half the one without SA
    branch, up to the spatial mixing of later layers: compare the first attn1's output directly."""
    sample, text = _inputs()
    soft = torch.zeros(1, FRAMES, SIZE * 8, SIZE * 8)
    soft[..., : SIZE * 4] = 1
    unet = unets["full"]
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    outputs = []
    hook = attn.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        for guidance in (MaskGuidance(("m",), 1, FRAMES, "SA", soft={"m": soft}), None, _guidance("SA", 0.0)):
            _forward(unet, sample, text, guidance)
    finally:
        hook.remove()
    half, full, none = (o.reshape(FRAMES, SIZE, SIZE, -1) for o in outputs)
    assert torch.allclose(half[:, :, : SIZE // 2], full[:, :, : SIZE // 2], atol=1e-6)
    assert torch.allclose(half[:, :, SIZE // 2 :], none[:, :, SIZE // 2 :], atol=1e-6)


@pytest.mark.parametrize("image_guidance", [False, True])
def test_stream_rows_start_as_the_frozen_unet(image_guidance):
    """A fresh mask-branch adapter: the video rows are what they are alone; without image guidance the mask rows are
    the UNet on the mask latent alone (mask_to_q / mask_to_out are the frozen projections)."""
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    add_miva_adapter(unet, "m", MIVAAdapterConfig(use_mask_branch=True, motion_lora_rank=2))
    set_miva_adapters(unet, ["m"])
    video, text = _inputs(seed=0)
    mask_latent, _ = _inputs(seed=1)
    guidance = _guidance("original", 1.0, image_guidance=image_guidance, stream_rows=True)
    joint = _forward(unet, torch.cat([video, mask_latent]), torch.cat([text, text]), guidance)
    alone_video, alone_mask = _forward(unet, video, text), _forward(unet, mask_latent, text)
    assert torch.allclose(joint[:1], alone_video, atol=1e-5)
    assert torch.allclose(joint[1:], alone_mask, atol=1e-5) != image_guidance


def test_same_gate_for_both_cfg_halves():
    soft = torch.rand(2, FRAMES, 16, 16, generator=torch.Generator().manual_seed(0))
    guidance = MaskGuidance(("m",), 2, FRAMES, "SA", soft={"m": soft}, stream_rows=True)
    gate = guidance.gate("m", (4, 4), rows=3 * 2 * FRAMES, dtype=torch.float32)  # uncond, cond, mask stream
    block = 2 * FRAMES
    assert gate.shape == (3 * block, 16, 1)
    assert torch.equal(gate[:block], gate[block : 2 * block])
    assert torch.equal(gate[2 * block :], torch.ones(block, 16, 1))
    # Hand-computed area average: video 1, frame 2, token (0, 1) is the mean of the 4x4 block soft[1, 2, :4, 4:8].
    assert torch.allclose(gate[FRAMES + 2, 1, 0], soft[1, 2, :4, 4:8].mean())


def test_mode_errors():
    with pytest.raises(ValueError, match=r"^mask_attention_mode='TA' is not supported: the MotionLoRA is a delta"):
        check_mask_attention_mode("TA")
    with pytest.raises(ValueError, match=r"^mask_attention_mode='sa' is not one of \['SA', 'CA', 'original'\]"):
        check_mask_attention_mode("sa")
    assert copy.copy(check_mask_attention_mode("original")) == "original"

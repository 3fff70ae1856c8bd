"""The mask branch's part (docs/mask_branch.md): its projections start as exact copies of the frozen attn1 ones,
it is declared once (trainable part, card tag, config rule), and a fresh mask-branch adapter leaves the video alone."""

import copy

import pytest
import torch

from miva.attention_processors import MIVAAdapterConfig, add_miva_adapter, get_miva_context, install_miva_processors
from miva.attention_processors.parts import TRAINABLE_PARTS, adapter_parts, component_tags, part_of
from miva.loaders.model_card import miva_model_card
from miva.tiny import tiny_unet_motion

MASK = MIVAAdapterConfig(use_mask_branch=True, motion_lora_rank=2)


@pytest.fixture(scope="module")
def base_unet():
    return tiny_unet_motion(seed=0)


def _attn1_layers(unet):
    return [(name, module) for name, module in unet.named_modules()
            if name.endswith("attn1") and "motion_modules" not in name and "transformer_blocks" in name]


def test_projections_are_exact_copies_of_the_frozen_ones(base_unet):
    unet = copy.deepcopy(base_unet)
    install_miva_processors(unet)
    add_miva_adapter(unet, "m", MASK)
    assert get_miva_context(unet).configs["m"] == MASK
    layers = _attn1_layers(unet)
    assert layers
    for _, attn in layers:
        adapter = attn.processor.adapters["m"]
        assert torch.equal(adapter.mask_to_q.weight, attn.to_q.weight)
        assert adapter.mask_to_q.bias is None and attn.to_q.bias is None
        assert torch.equal(adapter.mask_to_out.weight, attn.to_out[0].weight)
        assert torch.equal(adapter.mask_to_out.bias, attn.to_out[0].bias)
        assert adapter.mask_to_q.weight.data_ptr() != attn.to_q.weight.data_ptr()  # copies, not shared
        assert adapter.mask_to_q.weight.requires_grad and adapter.mask_to_out.weight.requires_grad


def test_part_is_declared_once():
    assert "mask_branch" in TRAINABLE_PARTS
    assert "mask_branch" in adapter_parts(MASK)
    assert "mask_branch" not in adapter_parts(MIVAAdapterConfig())
    assert part_of("self_attention", "mask_to_q.weight") == "mask_branch"
    assert part_of("self_attention", "mask_to_out.bias") == "mask_branch"
    assert "mask-branch" in component_tags(MASK)
    card = str(miva_model_card(MASK, adapter_name="m"))
    assert "mask-branch" in card and "mask branch (M-MIVA)" in card


def test_config_errors():
    with pytest.raises(ValueError, match=r"^use_mask_branch=True needs use_i2v=True: the mask stream's projections"):
        MIVAAdapterConfig(use_mask_branch=True, use_i2v=False)
    with pytest.raises(ValueError, match=r"^use_mask_branch='yes' must be true or false$"):
        MIVAAdapterConfig(use_mask_branch="yes")
    assert MIVAAdapterConfig.from_dict(MASK.to_dict()) == MASK


def test_wan_adapters_refuse_the_mask_branch():
    from miva.backbones.wan.config import WanAdapterConfig

    with pytest.raises(ValueError, match=r"^use_mask_branch=True is not supported on Wan \(the mask branch is built "
                                         r"for the AnimateDiff UNet's attn1"):
        WanAdapterConfig(use_mask_branch=True)

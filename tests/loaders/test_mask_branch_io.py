"""The mask branch's projections are saved and loaded with the adapter (one state-dict layout for every part)."""

import copy

import torch
from bare_pipe import BarePipe
from safetensors.torch import load_file

from miva.attention_processors import MIVAAdapterConfig, get_miva_context
from miva.loaders import adapter_state_dict

MASK = MIVAAdapterConfig(use_mask_branch=True, motion_lora_rank=2)


def test_mask_branch_round_trip(base_unet, tmp_path):
    src, dst = BarePipe(copy.deepcopy(base_unet)), BarePipe(copy.deepcopy(base_unet))
    src.add_adapter("m", MASK)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, tensor in adapter_state_dict(src.unet, "m").items():
            if "mask_to" in key:  # trained-looking mask projections, unlike the frozen ones they started from
                tensor.add_(torch.randn(tensor.shape, generator=g))
    src.save_adapter("m", tmp_path / "m")
    saved = load_file(tmp_path / "m" / "miva_adapter.safetensors")
    mask_keys = [k for k in saved if ".mask_to_q." in k or ".mask_to_out." in k]
    layers = sum(1 for name, _ in src.unet.named_modules() if name.endswith("attn1") and "motion_modules" not in name)
    assert len(mask_keys) == layers * 3  # mask_to_q.weight, mask_to_out.weight, mask_to_out.bias per attn1
    dst.load_adapters(tmp_path / "m", adapter_names="m")
    assert get_miva_context(dst.unet).configs["m"] == MASK
    a, b = adapter_state_dict(src.unet, "m"), adapter_state_dict(dst.unet, "m")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

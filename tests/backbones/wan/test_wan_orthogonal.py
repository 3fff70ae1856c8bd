"""Issue 29: orthogonal adapters on Wan2.1: the bases library of a `WanTransformer3DModel` (keys = the adapter-free
`LoRADelta` paths), bins that make adapters' `up` spaces orthogonal per layer, `miva bases create` on a Wan base,
and `miva train` applying the bin (frozen `up`), then two OA adapters composed."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from wan_helpers import randomize, wan_inputs, wan_transformer

from miva.attention_processors import LoRADelta, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter
from miva.cli import main
from miva.loaders.base_models import load_base
from miva.training.orthogonal import apply_orthogonal_bins, create_bases_library, layer_dims, load_bases_library

ROOT = Path(__file__).resolve().parents[3]
TRAIN = str(ROOT / "examples" / "configs" / "train_wan_tiny.yaml")
RANK = 4
LORA = dict(use_i2v=False, use_motion_lora=True, motion_lora_rank=RANK, use_ca_lora=True, ca_lora_rank=RANK,
            use_q_lora=True)


def deltas(transformer, name):
    """`key -> LoRADelta` of adapter `name`, the key written out here: its module path minus
    `processor.adapters.<name>.`."""
    out = {}
    for path, module in transformer.named_modules():
        if isinstance(module, LoRADelta) and f".processor.adapters.{name}." in path:
            out[path.replace(f"processor.adapters.{name}.", "")] = module
    return out


def is_text_kv(key):
    return ".attn2." in key and key.endswith(("to_k_lora", "to_v_lora"))


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    path = tmp_path_factory.mktemp("bases") / "bases.safetensors"
    create_bases_library(wan_transformer(0), path, seed=0)
    return path


def test_library_covers_every_lora_delta_of_a_wan_adapter(library):
    transformer = wan_transformer(0)
    assert layer_dims(transformer) == {f"blocks.{b}.attn{a}.to_{p}_lora": 24
                                       for b in (0, 1) for a in (1, 2) for p in ("q", "k", "v", "out")}
    add_wan_adapter(transformer, "full", WanAdapterConfig(**LORA))
    bases = load_bases_library(library)
    assert set(bases) == set(deltas(transformer, "full")) == set(layer_dims(transformer))  # same keys with MIVA on
    for q in bases.values():
        torch.testing.assert_close(q.T @ q, torch.eye(24), atol=1e-5, rtol=0)


def test_different_bins_are_orthogonal_per_layer_and_text_kv_stay_free(library):
    transformer = wan_transformer(0)
    for name in ("a", "b", "c"):
        add_wan_adapter(transformer, name, WanAdapterConfig(**LORA))
    bases = load_bases_library(library)
    used = apply_orthogonal_bins(transformer, "a", bases, bin_id=0)
    apply_orthogonal_bins(transformer, "b", bases, bin_id=1)
    apply_orthogonal_bins(transformer, "c", bases, bin_id=6)  # 6 mod (24 // 4) = 0: bin 0 again
    a, b, c = (deltas(transformer, n) for n in "abc")
    assert set(used) == {k for k in a if not is_text_kv(k)} and len(used) == 12
    for key in used:
        ua, ub = a[key].up.weight, b[key].up.weight
        torch.testing.assert_close(ua, bases[key][:, :RANK])
        torch.testing.assert_close(ub, bases[key][:, RANK:2 * RANK])
        assert (ua.T @ ub).abs().max() < 1e-5  # U_a^T U_b = 0
        torch.testing.assert_close(ua.T @ ua, torch.eye(RANK), atol=1e-5, rtol=0)
        assert torch.equal(c[key].up.weight, ua)
        assert not ua.requires_grad and a[key].down.weight.requires_grad and not a[key].down.weight.any()
    for key in [k for k in a if is_text_kv(k)]:  # cross-attention K/V: untouched (research ignore_ca_kv)
        assert a[key].up.weight.requires_grad and all(not torch.equal(a[key].up.weight[:, :RANK], q[:, :RANK])
                                                      for q in bases.values())


def test_composed_oa_adapters_write_to_orthogonal_subspaces(library):
    transformer = wan_transformer(0)
    bases = load_bases_library(library)
    for bin_id, name in enumerate(("a", "b")):
        add_wan_adapter(transformer, name, WanAdapterConfig(**LORA))
        apply_orthogonal_bins(transformer, name, bases, bin_id=bin_id)
        for delta in deltas(transformer, name).values():
            randomize(delta.down, seed=bin_id)  # a "trained" down
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(3))
    for key in load_bases_library(library):
        if not is_text_kv(key):
            ya, yb = deltas(transformer, "a")[key](x), deltas(transformer, "b")[key](x)
            assert ya.abs().max() > 1e-3 and (ya @ yb.T).abs().max() < 1e-5  # every token's outputs orthogonal
    latents, timestep, text = wan_inputs()
    outputs = {}
    for names in (["a"], ["b"], ["a", "b"]):
        set_miva_adapters(transformer, names)
        with torch.no_grad():
            outputs[tuple(names)] = transformer(latents, timestep, text, return_dict=False)[0]
    both = outputs["a", "b"]
    assert torch.isfinite(both).all() and not torch.equal(both, outputs["a",]) and not torch.equal(both, outputs["b",])


def test_bases_create_on_a_wan_base(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "wan_bases.safetensors"
    assert main(["bases", "create", "--config", TRAIN, "--out", str(out), "--seed", "3"]) == 0
    written = load_file(out)
    transformer = load_base("tiny-wan").transformer
    assert set(written) == set(layer_dims(transformer)) and len(written) == 16
    again = create_bases_library(transformer, tmp_path / "again.safetensors", seed=3)
    assert all(torch.equal(written[k], again[k]) for k in again)
    tiny = tmp_path / "tiny.safetensors"  # --tiny on a Wan config: the tiny Wan model, not the tiny UNet
    assert main(["bases", "create", "--config", TRAIN, "--tiny", "--out", str(tiny), "--seed", "3"]) == 0
    assert load_file(tiny).keys() == written.keys()


def test_miva_train_applies_the_bin_and_keeps_up_frozen(library, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main(["train", "--config", TRAIN, "--tiny", "--set", f"output_dir={out}", "--set", "validation_steps=100",
                 "--set", "max_train_steps=2", "--set", "trainable_modules=[motion_lora,ca_lora]",
                 "--set", "unet_additional_kwargs.use_simple_CA=false", "--set", "unet_additional_kwargs.use_ca_lora=true",
                 "--set", "unet_additional_kwargs.use_motion_lora=true", "--set", "unet_additional_kwargs.oa_bin_id=2",
                 "--set", f"unet_additional_kwargs.oa_bases_path={library}",
                 "--set", "unet_additional_kwargs.motion_module_kwargs.lora_rank=4", "--set", "unet_additional_kwargs.ca_lora_rank=4"]) == 0
    state = load_file(out / "adapter" / "miva_adapter.safetensors")
    bases = load_bases_library(library)
    rank, start = 4, 2 * 4  # bin 2 of 24 // 4
    checked = 0
    for key, q in bases.items():
        if is_text_kv(key) or key == "blocks.0.attn2.to_q_lora" or key == "blocks.1.attn2.to_q_lora":
            assert f"{key}.up.weight" not in state or is_text_kv(key)  # CA Q-LoRA is off in this run
            continue
        up, down = state[f"{key}.up.weight"], state[f"{key}.down.weight"]
        assert torch.equal(up, q[:, start:start + rank])  # frozen through training
        assert down.abs().max() > 0  # started at zero, trained
        checked += 1
    assert checked == 10  # per block: 4 MotionLoRA deltas and CA-LoRA's to_out


def test_refusals_name_the_reason(library, tmp_path):
    transformer = wan_transformer(0)
    add_wan_adapter(transformer, "branch_only", WanAdapterConfig(ca_mode="implicit", implicit_rank=4))
    with pytest.raises(ValueError, match=re.escape(
            "adapter 'branch_only' has no LoRA deltas for orthogonal bin 1 to constrain: orthogonal adapters need "
            "MotionLoRA (use_motion_lora) or CA-LoRA (use_ca_lora)")):
        apply_orthogonal_bins(transformer, "branch_only", load_bases_library(library), bin_id=1)
    add_wan_adapter(transformer, "lora", WanAdapterConfig(**LORA))
    unet_library = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out_lora": torch.eye(32)}
    with pytest.raises(ValueError, match=re.escape(
            "the bases library has no layer key 'blocks.0.attn1.to_q_lora' (needed by adapter 'lora'); create the "
            "library for this model with create_bases_library(model, path) or `miva bases create`")):
        apply_orthogonal_bins(transformer, "lora", unet_library, bin_id=0)
    assert not any(d.up.weight.any() for d in deltas(transformer, "lora").values())  # checked before any change

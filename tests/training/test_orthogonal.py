"""Orthogonal adapters: the seeded bases library, its research `.pt` layout, and applying an adapter's bin."""

import pytest
import torch
from safetensors import safe_open

from miva.attention_processors import (
    LoRADelta,
    MIVAAdapterConfig,
    add_miva_adapter,
    get_miva_adapter_modules,
    get_miva_context,
    install_miva_processors,
    set_miva_adapters,
)
from miva.tiny import tiny_unet_motion
from miva.training.orthogonal import (
    apply_orthogonal_bins,
    create_bases_library,
    layer_dims,
    load_bases_library,
    research_key_to_layer_key,
)

RANK = 4
CONFIG = dict(use_ca_lora=True, ca_lora_rank=RANK, use_q_lora=True, motion_lora_rank=RANK)


@pytest.fixture(scope="module")
def unet():
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    for name in ("o1", "o2", "o3", "o4"):
        add_miva_adapter(unet, name, MIVAAdapterConfig(**CONFIG))
    return unet


@pytest.fixture(scope="module")
def library_path(unet, tmp_path_factory):
    path = tmp_path_factory.mktemp("bases") / "bases.safetensors"
    create_bases_library(unet, path, seed=0)
    return path


@pytest.fixture(scope="module")
def bases(library_path):
    return load_bases_library(library_path)


def constrained(unet, name):
    """`layer key -> LoRADelta` of the deltas OA constrains (all but cross-attention K/V)."""
    out = {}
    for layer, module in get_miva_adapter_modules(unet, name).items():
        for delta_name, lora in module.named_modules():
            if isinstance(lora, LoRADelta) and not (
                ".attn2." in layer and ".motion_modules." not in layer and delta_name in ("to_k_lora", "to_v_lora")
            ):
                out[f"{layer.removesuffix('.processor')}.{delta_name}"] = lora
    return out


def to_research_key(key):
    """Our layer key -> the research one (the inverse of `research_key_to_layer_key`, written independently)."""
    layer, delta = key.rsplit(".", 1)
    if ".motion_modules." in layer:
        head, tail = layer.split(".transformer_blocks.")
        block, attn = tail.split(".")
        layer = f"{head}.temporal_transformer.transformer_blocks.{block}.attention_blocks.{int(attn[-1]) - 1}"
    return f"{layer}.processor.{delta}"


# ---------------------------------------------------------------------------------------------------- library


def test_library_has_one_orthogonal_basis_per_lora_layer(unet, bases):
    dims = layer_dims(unet)
    assert len(dims) == 4 * (11 + 22)  # Q/K/V/out at 11 spatial cross-attentions and 22 temporal attentions
    assert dims["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out_lora"] == 32
    assert dims["down_blocks.1.motion_modules.0.transformer_blocks.0.attn1.to_q_lora"] == 64
    assert set(bases) == set(dims)
    for key, q in bases.items():
        assert q.dtype == torch.float32 and q.shape == (dims[key], dims[key])
        torch.testing.assert_close(q.T @ q, torch.eye(dims[key]), atol=1e-5, rtol=0)
    # Every key the adapters actually use is in the library.
    assert set(constrained(unet, "o1")) <= set(bases)


def test_library_is_deterministic_for_a_seed_and_differs_across_seeds(unet, library_path, bases, tmp_path):
    again = create_bases_library(unet, tmp_path / "again.safetensors", seed=0)
    reloaded = load_bases_library(tmp_path / "again.safetensors")
    with safe_open(str(tmp_path / "again.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "miva-oa-bases", "seed": "0"}
    state = torch.random.get_rng_state()
    other = create_bases_library(unet, tmp_path / "other.safetensors", seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is never used
    for key in bases:
        assert torch.equal(again[key], bases[key]) and torch.equal(reloaded[key], bases[key])
        assert (other[key] - bases[key]).abs().max() > 1e-2


def test_library_from_layer_dims(tmp_path):
    bases = create_bases_library({"x.to_q_lora": 8, "y.to_out_lora": 5}, tmp_path / "lib.safetensors", seed=3)
    assert bases["x.to_q_lora"].shape == (8, 8) and bases["y.to_out_lora"].shape == (5, 5)
    loaded = load_bases_library(tmp_path / "lib.safetensors")
    assert set(loaded) == set(bases) and all(torch.equal(loaded[k], bases[k]) for k in bases)
    with pytest.raises(ValueError, match=r"layer 'x.to_q_lora': d=0 must be a positive int"):
        create_bases_library({"x.to_q_lora": 0}, tmp_path / "bad.safetensors", seed=3)


def test_research_layout_loads_the_same_bases(bases, tmp_path):
    folder = tmp_path / "lora_bases_withca"
    folder.mkdir()
    for key, q in bases.items():
        torch.save(q.clone(), folder / f"{to_research_key(key)}.pt")
    loaded = load_bases_library(folder)
    assert set(loaded) == set(bases)
    assert all(torch.equal(loaded[k], bases[k]) for k in bases)


def test_research_key_mapping():
    research = "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.processor.to_q_lora"
    assert research_key_to_layer_key(research) == "down_blocks.0.motion_modules.1.transformer_blocks.0.attn2.to_q_lora"
    research = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora"
    assert research_key_to_layer_key(research) == "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out_lora"
    ours = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k_lora"
    assert research_key_to_layer_key(ours) == ours


class _NotATensor:
    pass


def test_research_files_are_read_safely(tmp_path):
    torch.save({"payload": _NotATensor()}, tmp_path / "a.attn2.processor.to_q_lora.pt")
    with pytest.raises(ValueError, match=r"needs more than torch.load\(weights_only=True\) and is refused"):
        load_bases_library(tmp_path)
    (tmp_path / "a.attn2.processor.to_q_lora.pt").unlink()
    torch.save(torch.zeros(4, 3), tmp_path / "b.attn2.processor.to_q_lora.pt")
    with pytest.raises(ValueError, match=r"must hold one square \(d, d\) basis tensor, found \(4, 3\)"):
        load_bases_library(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a safetensors file nor a folder"):
        load_bases_library(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------- bins


def test_different_bins_give_orthogonal_up_spaces_and_equal_bins_identical_ones(unet, bases):
    apply_orthogonal_bins(unet, "o1", bases, bin_id=0)
    apply_orthogonal_bins(unet, "o2", bases, bin_id=1)
    apply_orthogonal_bins(unet, "o3", bases, bin_id=0)
    u1, u2, u3 = (constrained(unet, n) for n in ("o1", "o2", "o3"))
    assert len(u1) == 2 * 11 + 4 * 22  # CA Q + out, temporal Q/K/V/out
    for key in u1:
        a, b = u1[key].up.weight.double(), u2[key].up.weight.double()
        assert (a.T @ b).abs().max() < 1e-6, key
        torch.testing.assert_close(a.T @ a, torch.eye(RANK, dtype=torch.float64), atol=1e-5, rtol=0)
        assert torch.equal(u1[key].up.weight, u3[key].up.weight)
        assert torch.equal(u1[key].up.weight, bases[key][:, :RANK])
        assert torch.equal(u2[key].up.weight, bases[key][:, RANK : 2 * RANK])


def test_bin_id_wraps_modulo_d_over_rank(unet, bases):
    used = apply_orthogonal_bins(unet, "o4", bases, bin_id=9)  # d=32: 8 bins -> 1; d=64: 16 bins -> 9
    for key, lora in constrained(unet, "o4").items():
        d = lora.out_features
        b = 9 % (d // RANK)
        assert used[key] == b == (1 if d == 32 else 9)
        assert torch.equal(lora.up.weight, bases[key][:, b * RANK : (b + 1) * RANK])


def test_applied_adapter_is_a_no_op_and_only_down_trains(unet, bases):
    apply_orthogonal_bins(unet, "o1", bases, bin_id=2)
    adapter_loras = [
        m
        for module in get_miva_adapter_modules(unet, "o1").values()
        for m in module.modules()
        if isinstance(m, LoRADelta)
    ]
    constrained_loras = set(map(id, constrained(unet, "o1").values()))
    for lora in adapter_loras:
        if id(lora) in constrained_loras:
            assert not lora.up.weight.requires_grad and lora.down.weight.requires_grad
            assert torch.count_nonzero(lora.down.weight) == 0
        else:  # cross-attention K/V: untouched (up still the zero init, both trainable)
            assert lora.up.weight.requires_grad and lora.down.weight.requires_grad
            assert torch.count_nonzero(lora.up.weight) == 0
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, 8, generator=generator)
    text = torch.randn(8, 77, 32, generator=generator)
    with torch.no_grad():
        set_miva_adapters(unet, [])
        base = unet(sample, 400, text).sample
        set_miva_adapters(unet, ["o1"])
        adapted = unet(sample, 400, text).sample
        set_miva_adapters(unet, [])
    torch.testing.assert_close(adapted, base, atol=1e-6, rtol=0)


def test_bin_from_the_adapter_config(unet, bases):
    add_miva_adapter(unet, "cfg", MIVAAdapterConfig(oa_bin_id=3, **CONFIG))
    used = apply_orthogonal_bins(unet, "cfg", bases)
    assert set(used.values()) == {3}
    with pytest.raises(ValueError, match="bin_id=None and adapter 'o1' has oa_bin_id=None"):
        apply_orthogonal_bins(unet, "o1", bases)


def test_apply_errors_name_the_key_and_shapes(unet, bases):
    key = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q_lora"
    missing = {k: v for k, v in bases.items() if k != key}
    with pytest.raises(ValueError, match=f"no layer key '{key}'"):
        apply_orthogonal_bins(unet, "o2", missing, bin_id=0)
    wrong = {**bases, key: torch.eye(48)}
    with pytest.raises(
        ValueError,
        match=rf"'{key}': basis shape \(48, 48\) does not match the LoRA up weight "
        r"\(32, 4\): expected \(32, 32\)",
    ):
        apply_orthogonal_bins(unet, "o2", wrong, bin_id=0)
    with pytest.raises(ValueError, match=r"adapter_name='nope' is not loaded"):
        apply_orthogonal_bins(unet, "nope", bases, bin_id=0)
    with pytest.raises(ValueError, match=r"bin_id=-1 must be a non-negative int"):
        apply_orthogonal_bins(unet, "o2", bases, bin_id=-1)
    assert get_miva_context(unet).configs["o2"].oa_bin_id is None

"""Native adapter files and the `MIVALoaderMixin` lifecycle: round trips, sources (folder, file, Hub cache), safety,
strict and all-or-nothing loading, and unloading back to a stock UNet."""

import copy
import json
import os
import pickle
import shutil

import pytest
import torch
from bare_pipe import BarePipe
from no_hub import hub_cache
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from miva.attention_processors import MIVAAdapterConfig, get_miva_context
from miva.loaders import adapter_state_dict, load_miva_adapter, save_miva_adapter
from miva.tiny import tiny_components

FULL = MIVAAdapterConfig(
    use_i2v=True, i2v_train_q=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", use_motion_lora=True,
    motion_lora_rank=4, use_motion_embed=True, use_ca_lora=True, ca_lora_rank=4, use_q_lora=True, q_downsample=True,
    q_downsample_ratio=2, ca_pe_mode="rope_3d", prompt="water flowing",
)  # fmt: skip
IMPLICIT = MIVAAdapterConfig(use_i2v=False, motion_lora_rank=2, ca_mode="implicit", implicit_rank=8)


def randomize(unet, name, seed=0):
    """Trained-looking adapter weights (a fresh adapter is a zero delta)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in adapter_state_dict(unet, name).values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)


def forward(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, 8, generator=g)
    text = torch.randn(1, 77, 32, generator=g).repeat_interleave(8, dim=0)
    with torch.no_grad():
        return unet(sample, 500, text).sample


@pytest.fixture(scope="module")
def saved(base_unet, tmp_path_factory):
    """A trained FULL adapter saved by a pipeline: (folder, its state dict, the UNet output with it active)."""
    folder = tmp_path_factory.mktemp("adapters") / "waterfall"
    pipe = BarePipe(copy.deepcopy(base_unet))
    pipe.add_adapter("w", FULL)
    randomize(pipe.unet, "w", seed=1)
    pipe.save_adapter("w", folder)
    state = {k: v.clone() for k, v in adapter_state_dict(pipe.unet, "w").items()}
    output = forward(pipe.unet)
    assert (output - forward(base_unet)).abs().max() > 1e-3  # the adapter acts: losing it would show
    return folder, state, output


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("config", [FULL, IMPLICIT], ids=["full", "implicit"])
def test_save_load_round_trip_is_bit_exact(base_unet, tmp_path, config):
    src, dst = BarePipe(copy.deepcopy(base_unet)), BarePipe(copy.deepcopy(base_unet))
    src.add_adapter("a", config)
    randomize(src.unet, "a", seed=2)
    src.save_adapter("a", tmp_path / "a")
    assert dst.load_adapters(tmp_path / "a", adapter_names="a") == ["a"]
    assert get_miva_context(dst.unet).configs["a"] == config
    assert_same_state(adapter_state_dict(src.unet, "a"), adapter_state_dict(dst.unet, "a"))
    assert torch.equal(forward(src.unet), forward(dst.unet))
    assert not torch.equal(forward(dst.unet), forward(base_unet))  # the adapter does something


def test_file_layout_keys_and_metadata(saved):
    folder, state, _ = saved
    assert sorted(os.listdir(folder)) == ["README.md", "adapter_config.json", "miva_adapter.safetensors"]
    with safe_open(folder / "miva_adapter.safetensors", framework="pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert metadata["format"] == "miva" and metadata["adapter_name"] == "w"
    assert MIVAAdapterConfig.from_dict(json.loads(metadata["miva_config"])) == FULL
    assert json.loads((folder / "adapter_config.json").read_text())["miva_version"] == metadata["miva_version"]
    assert keys == set(state)  # only this adapter's tensors, the adapter name is not part of the key
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_lora.down.weight" in keys
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.motion_embed" in keys
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.weight_module.weight" in keys
    assert not any(".adapters." in k or ".processor." in k for k in keys)


def test_single_file_sources(pipe, saved, tmp_path):
    folder, state, output = saved
    alone = tmp_path / "alone" / "waterfall.safetensors"  # config from the safetensors metadata
    alone.parent.mkdir()
    shutil.copy(folder / "miva_adapter.safetensors", alone)
    sibling = tmp_path / "sibling" / "weights.safetensors"  # no metadata: config from adapter_config.json beside it
    sibling.parent.mkdir()
    save_file(load_file(folder / "miva_adapter.safetensors"), sibling)
    shutil.copy(folder / "adapter_config.json", sibling.parent)
    assert pipe.load_adapters([alone, sibling]) == ["waterfall", "weights"]
    for name in ("waterfall", "weights"):
        assert_same_state(adapter_state_dict(pipe.unet, name), state)
    pipe.set_adapters("weights")
    assert torch.equal(forward(pipe.unet), output)


def test_hub_repo_id_offline_from_cache(pipe, saved, tmp_path):
    folder, state, output = saved
    files = {name: folder / name for name in ("adapter_config.json", "miva_adapter.safetensors")}
    files.update({f"motions/{name}": path for name, path in files.items()})
    sha = hub_cache(tmp_path / "hub", "someone/miva-waterfall", files)
    pipe.load_adapters("someone/miva-waterfall", cache_dir=tmp_path / "hub")
    pipe.load_adapters(
        "someone/miva-waterfall",
        adapter_names="sub",
        cache_dir=tmp_path / "hub",
        revision=sha,
        subfolder="motions",
        local_files_only=True,
    )
    assert pipe.get_list_adapters() == ["miva-waterfall", "sub"]
    for name in ("miva-waterfall", "sub"):
        assert_same_state(adapter_state_dict(pipe.unet, name), state)
    assert torch.equal(forward(pipe.unet), output)
    with pytest.raises(OSError, match="someone/missing"):
        pipe.load_adapters("someone/missing", cache_dir=tmp_path / "hub")


def test_learned_word_embedding_round_trip(base_unet, tmp_path):
    parts = [tiny_components(seed=0, with_image_encoder=False) for _ in range(2)]
    src = BarePipe(copy.deepcopy(base_unet), parts[0]["text_encoder"], parts[0]["tokenizer"])
    src.tokenizer.add_tokens(["<flow>"])
    src.text_encoder.resize_token_embeddings(len(src.tokenizer))
    token_id = src.tokenizer.convert_tokens_to_ids("<flow>")
    with torch.no_grad():
        src.text_encoder.get_input_embeddings().weight[token_id] = torch.linspace(-1, 1, 32)
    src.add_adapter("flow", MIVAAdapterConfig(use_i2v=False, motion_lora_rank=2, word_to_learn="<flow>"))
    src.save_adapter("flow", tmp_path / "flow")
    assert torch.equal(
        load_file(tmp_path / "flow" / "miva_adapter.safetensors")["text_embeddings.<flow>"], torch.linspace(-1, 1, 32)
    )
    dst = BarePipe(copy.deepcopy(base_unet), parts[1]["text_encoder"], parts[1]["tokenizer"])
    dst.load_adapters(tmp_path / "flow")
    new_id = dst.tokenizer.convert_tokens_to_ids("<flow>")
    assert torch.equal(dst.text_encoder.get_input_embeddings().weight[new_id], torch.linspace(-1, 1, 32))
    assert dst.tokenizer("<flow>").input_ids[1] == new_id
    with torch.no_grad():  # a different embedding already under that token: refused, nothing loaded
        dst.text_encoder.get_input_embeddings().weight[new_id] = 0.0
    with pytest.raises(ValueError, match="already has the token '<flow>' with another embedding"):
        dst.load_adapters(tmp_path / "flow", adapter_names="flow2")
    assert dst.get_list_adapters() == ["flow"]


def test_low_level_functions_without_a_pipeline(base_unet, tmp_path):
    unet, other = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    BarePipe(unet).add_adapter("m", IMPLICIT)
    randomize(unet, "m", seed=3)
    folder = save_miva_adapter(unet, "m", tmp_path / "m", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model"].startswith("stable-diffusion")
    config = load_miva_adapter(other, folder, "m")
    assert config.ca_mode == "implicit" and "m" in get_miva_context(other).configs
    assert_same_state(adapter_state_dict(unet, "m"), adapter_state_dict(other, "m"))


# ------------------------------------------------------------------------------------------- safety


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_executing_pickle_is_refused(pipe, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Exploit(marker)}, tmp_path / "adapter.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"x": _Exploit(marker)}))
    for path in (tmp_path / "adapter.pt", tmp_path / "raw.pt"):
        with pytest.raises(ValueError, match="needs arbitrary code to load .* and was refused"):
            pipe.load_adapters(path)
        with pytest.raises(ValueError, match="needs arbitrary code"):
            pipe.load_adapters({"ca_lora_path": path})
    assert not marker.exists()
    assert not get_miva_context(pipe.unet).configs


def test_truncated_safetensors_is_a_clear_error(pipe, saved, tmp_path):
    folder, _, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = (folder / "miva_adapter.safetensors").read_bytes()
    (broken / "miva_adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"miva_adapter\.safetensors is not a readable safetensors file \(truncated"):
        pipe.load_adapters(broken)
    (broken / "miva_adapter.safetensors").write_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pipe.load_adapters(broken / "miva_adapter.safetensors")
    torch.save({"x": torch.zeros(4)}, tmp_path / "ca.pt")
    (tmp_path / "ca.pt").write_bytes((tmp_path / "ca.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"ca\.pt is not a readable torch checkpoint \(truncated or corrupt\?\)"):
        pipe.load_adapters({"ca_lora_path": tmp_path / "ca.pt"})


def _edited_copy(folder, target, edit):
    shutil.copytree(folder, target)
    path = target / "miva_adapter.safetensors"
    with safe_open(path, framework="pt") as f:  # an edited file: its old checksum would (rightly) refuse it
        metadata = {k: v for k, v in f.metadata().items() if k != "miva_sha256"}
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)
    return target


def test_mismatches_name_the_key_and_shapes(pipe, saved, tmp_path):
    folder, _, _ = saved
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_lora.down.weight"
    missing = _edited_copy(folder, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(ValueError, match=rf"missing key '{key}' \(this UNet expects shape \(4, 32\)\)"):
        pipe.load_adapters(missing)
    extra = _edited_copy(
        folder, tmp_path / "extra", lambda t: t.update({"mid_block.attentions.9.attn2.x": t[key].clone()})
    )
    with pytest.raises(ValueError, match=r"unexpected key 'mid_block\.attentions\.9\.attn2\.x' of shape \(4, 32\)"):
        pipe.load_adapters(extra)
    wide = _edited_copy(folder, tmp_path / "wide", lambda t: t.update({key: torch.zeros(4, 768)}))
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(4, 768\) in the file but this UNet expects \(4, 32\)"):
        pipe.load_adapters(wide)
    assert not get_miva_context(pipe.unet).configs


def test_adapters_loaded_together_must_agree_on_stq(pipe, tmp_path):
    for name, mode in (("a", "rope_3d"), ("b", "temporal")):
        cfg = MIVAAdapterConfig(
            use_i2v=False,
            use_motion_lora=False,
            use_ca_lora=True,
            ca_lora_rank=2,
            q_downsample=True,
            q_downsample_ratio=2,
            ca_pe_mode=mode,
        )
        helper = BarePipe(copy.deepcopy(pipe.unet))
        helper.add_adapter(name, cfg)
        helper.save_adapter(name, tmp_path / name)
    with pytest.raises(ValueError, match=r"must agree on spatiotemporal Q.*\['a'\].*'rope_3d'.*\['b'\].*'temporal'"):
        pipe.load_adapters([tmp_path / "a", tmp_path / "b"])
    assert not get_miva_context(pipe.unet).configs


def test_failed_load_leaves_previous_adapters_working(pipe, saved, tmp_path):
    folder, _, output = saved
    pipe.load_adapters(folder, adapter_names="w")
    good = tmp_path / "good"
    helper = BarePipe(copy.deepcopy(pipe.unet))
    helper.add_adapter("g", MIVAAdapterConfig(use_i2v=False, motion_lora_rank=2))
    helper.save_adapter("g", good)
    bad = _edited_copy(folder, tmp_path / "bad", lambda t: t.pop(next(iter(t))))
    with pytest.raises(ValueError, match="missing key"):
        pipe.load_adapters([good, bad], adapter_names=["g", "b"], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="already exists"):
        pipe.load_adapters(folder, adapter_names="w")
    with pytest.raises(ValueError, match="parallel_mode='sideways' is not one of"):
        pipe.load_adapters(good, adapter_names="g", parallel_mode="sideways")
    assert pipe.get_list_adapters() == ["w"] and pipe.get_active_adapters() == ["w"]
    assert get_miva_context(pipe.unet).parallel_mode == "residual"
    assert torch.equal(forward(pipe.unet), output)


# ------------------------------------------------------------------------------------------- lifecycle


def test_lifecycle_verbs(pipe, saved, base_unet):
    folder, _, output = saved
    stock = forward(base_unet)
    pipe.load_adapters([folder, folder], adapter_names=["w", "v"], weights=[0.25, 0.75], parallel_mode="weights")
    context = get_miva_context(pipe.unet)
    assert context.active == [("w", 0.25), ("v", 0.75)] and context.parallel_mode == "weights"
    pipe.set_adapters("w")
    assert torch.equal(forward(pipe.unet), output)
    pipe.disable_adapters()
    assert pipe.get_active_adapters() == [] and torch.equal(forward(pipe.unet), stock)
    pipe.enable_adapters()
    assert pipe.get_active_adapters() == ["w"]
    pipe.fuse_adapters()
    with pytest.raises(ValueError, match="fused into the base weights"):
        pipe.delete_adapters("w")
    torch.testing.assert_close(forward(pipe.unet), output, atol=1e-4, rtol=1e-4)
    pipe.unfuse_adapters()
    assert torch.equal(forward(pipe.unet), output)
    pipe.delete_adapters("v")
    assert pipe.get_list_adapters() == ["w"]
    pipe.fuse_adapters()
    pipe.unload_adapters()  # unfuses, removes adapters, processors, hooks and the context
    assert not hasattr(pipe.unet, "miva_context") and pipe.get_list_adapters() == pipe.get_active_adapters() == []
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert pipe.unet.state_dict().keys() == base_unet.state_dict().keys()
    assert_same_state(pipe.unet.state_dict(), base_unet.state_dict())
    assert torch.equal(forward(pipe.unet), stock)
    pipe.load_adapters(folder, adapter_names="w")  # and it can be used again
    assert torch.equal(forward(pipe.unet), output)


def test_argument_errors(pipe, saved, tmp_path):
    folder, _, _ = saved
    plain = tmp_path / "plain.safetensors"  # native keys, but no config anywhere
    save_file(load_file(folder / "miva_adapter.safetensors"), plain)
    with pytest.raises(ValueError, match="neither a MIVA adapter file .* nor a research UNet checkpoint"):
        pipe.load_adapters(plain)
    with pytest.raises(TypeError, match="unexpected keyword argument 'revison'"):
        pipe.load_adapters(folder, revison="main")
    with pytest.raises(ValueError, match="adapter_names has 1 entries but there are 2 sources"):
        pipe.load_adapters([folder, folder], adapter_names=["a"])
    with pytest.raises(ValueError, match="adapter names must be distinct"):
        pipe.load_adapters([folder, folder])
    with pytest.raises(FileNotFoundError, match="neither an existing folder or file nor a Hub repo id"):
        pipe.load_adapters("./no/such/folder")
    with pytest.raises(FileNotFoundError, match="is not a MIVA adapter folder"):
        pipe.load_adapters(folder.parent.parent)


def test_adapter_of_another_base_names_both_bases_before_the_keys(pipe, base_unet, tmp_path):
    """Item 3 of issue 27: an adapter trained on another base says so first (its recorded base, the pipeline's),
    then which key does not fit."""
    import miva.world

    world = miva.world.load_pipeline()
    tiny = BarePipe(copy.deepcopy(base_unet))
    tiny.add_adapter("w", FULL)
    tiny.save_adapter("w", tmp_path / "tiny_w", base_model="my-tiny-sd15")
    with pytest.raises(ValueError) as error:
        world.load_adapters(tmp_path / "tiny_w")
    assert str(error.value).startswith(
        f"{tmp_path / 'tiny_w'}: adapter trained on base model 'my-tiny-sd15', this pipeline's base model is "
        f"'{miva.world.BASE_PATH}'; adapter 'tiny_w': "
    ), str(error.value)
    assert not world.get_list_adapters().get("miva")
    shipped = miva.world.ADAPTERS_PATH / "right"
    with pytest.raises(ValueError) as error:
        pipe.load_adapters(shipped)
    assert str(error.value).startswith(
        f"{shipped}: adapter trained on base model 'miva-world', this pipeline's base model is not recorded (a "
        "pipeline built from its components); adapter 'right': "
    ), str(error.value)

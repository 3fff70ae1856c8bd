"""Reliability: every bad input ends in one clean error that names it, a failed call changes nothing, writes are
atomic, and damaged training state is skipped (issue 12). The property tests are in
`test_reliability_properties.py`, the kill-and-resume tests in `test_reliability_resume.py`."""

import copy
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from research_checkpoints import research_ca_checkpoint
from state_snapshot import expect_clean_failure, take_snapshot

from miva import MIVAAdapterConfig, MIVAPipeline, load_config
from miva.atomic import atomic_folder, atomic_write_text, remove_folder
from miva.attention_processors import get_miva_context
from miva.loaders import adapter_state_dict
from miva.tiny import make_test_image, tiny_components

CONFIG = MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4)
SIZE, FRAMES = 64, 4


def folder_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below `folder` (what "left intact" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def randomize(pipe, name, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in adapter_state_dict(pipe.unet, name).values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def base_components():
    return tiny_components(seed=0)


def make_pipe(components):
    pipe = MIVAPipeline(**copy.deepcopy(components))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("a", CONFIG)
    randomize(pipe, "a")
    return pipe


@pytest.fixture
def pipe(base_components):
    """A fresh tiny pipeline with one random adapter "a", active (for tests that change it)."""
    return make_pipe(base_components)


@pytest.fixture(scope="module")
def shared(base_components):
    """The same, shared by the tests whose calls must fail and change nothing (each test checks that)."""
    return make_pipe(base_components)


@pytest.fixture(scope="module")
def image():
    return make_test_image(SIZE, SIZE, seed=0)


def call(pipe, image, **kwargs):
    options = dict(
        prompt="clouds",
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    options.update(kwargs)
    return pipe(image, **options)


# ---------------------------------------------------------------------------------------------- nothing is lost
def test_failed_save_leaves_the_old_adapter_folder_intact(pipe, tmp_path):
    """The issue's data loss: saving "b" with a missing sample GIF over a's folder used to overwrite a first."""
    folder = tmp_path / "adapter"
    pipe.save_adapter("a", folder)
    before = folder_digest(folder)
    pipe.add_adapter("b", CONFIG)
    randomize(pipe, "b", seed=2)
    with pytest.raises(FileNotFoundError, match="sample_gif='missing.gif' does not exist"):
        pipe.save_adapter("b", folder, sample_gif="missing.gif")
    assert folder_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left behind


def test_save_killed_half_way_leaves_the_old_folder(shared, tmp_path, monkeypatch):
    """A crash after some files were written (here: the model card raises) changes nothing under the final name."""
    from huggingface_hub import ModelCard

    folder = tmp_path / "adapter"
    shared.save_adapter("a", folder)
    before = folder_digest(folder)

    def broken_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(ModelCard, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        shared.save_adapter("a", folder)
    assert folder_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_resave_replaces_adapter_files_and_keeps_the_users_other_files(pipe, tmp_path):
    folder = tmp_path / "adapter"
    gif = tmp_path / "s.gif"
    PIL.Image.new("RGB", (8, 8)).save(gif)
    pipe.save_adapter("a", folder, sample_gif=gif)
    (folder / "notes.txt").write_text("mine")
    pipe.add_adapter("b", CONFIG)
    randomize(pipe, "b", seed=2)
    pipe.save_adapter("b", folder)  # no sample this time: a's sample must not stay behind as b's
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "miva_adapter.safetensors",
        "notes.txt",
    ]
    assert (folder / "notes.txt").read_text() == "mine"
    other = MIVAPipeline(**tiny_components(seed=0))
    other.load_adapters(folder, adapter_names="b")
    for key, tensor in adapter_state_dict(pipe.unet, "b").items():
        assert torch.equal(adapter_state_dict(other.unet, "b")[key], tensor)


def test_atomic_folder_and_remove_folder_never_leave_a_half_folder(tmp_path, monkeypatch):
    final = tmp_path / "out"
    with atomic_folder(final) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("killed")
    assert (final / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A delete interrupted half-way (rmtree dies after the first file) happens under a temporary name.
    (final / "y").write_text("y")
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        remove_folder(final)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not final.exists()  # never half-deleted under its own name
    with atomic_folder(final) as tmp:  # the next write sweeps the leftover
        (tmp / "x").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_text_gives_plain_file_permissions_and_leaves_nothing_behind(tmp_path, monkeypatch):
    plain = tmp_path / "plain.json"
    plain.write_text("{}")  # what `open(path, "w")` gives under this process's umask
    written = atomic_write_text(tmp_path / "config.json", "{}")
    assert written.read_text() == "{}"
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0o600
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "config.json", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "plain.json"]
    assert written.read_text() == "{}"


# ----------------------------------------------------------------------------------------- all-or-nothing verbs
def test_add_adapter_while_fused_leaves_nothing_behind(pipe):
    pipe.fuse_adapters()
    error = expect_clean_failure(pipe, lambda: pipe.add_adapter("b", CONFIG))
    assert "fused" in str(error)
    assert pipe.get_list_adapters() == {"miva": ["a"]}


def test_delete_adapters_with_an_unknown_name_deletes_none(pipe):
    pipe.add_adapter("b", CONFIG, activate=False)
    error = expect_clean_failure(pipe, lambda: pipe.delete_adapters(["b", "nope"]))
    assert "'nope'" in str(error) and pipe.get_list_adapters() == {"miva": ["a", "b"]}
    expect_clean_failure(pipe, lambda: pipe.delete_adapters(5))


@pytest.mark.parametrize("weights", [float("nan"), [float("inf")], [-float("inf")], ["x"], [None]])
def test_set_adapters_refuses_non_finite_weights(shared, weights):
    error = expect_clean_failure(shared, lambda: shared.set_adapters(["a"], weights))
    assert "weights" in str(error)


def test_load_adapters_refuses_bad_weights_and_keeps_state(shared, tmp_path):
    shared.save_adapter("a", tmp_path / "a")
    error = expect_clean_failure(
        shared, lambda: shared.load_adapters(tmp_path / "a", adapter_names="c", weights=[float("nan")])
    )
    assert "weights[0]=nan" in str(error)
    expect_clean_failure(shared, lambda: shared.load_adapters(5))


# -------------------------------------------------------------------------------------------- adapter configs
@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("ca_lora_scale", float("nan"), ValueError),
        ("ca_lora_scale", float("inf"), ValueError),
        ("motion_lora_scale", float("nan"), ValueError),
        ("ca_lora_rank", 10**15, ValueError),
        ("implicit_rank", 10**6, ValueError),
        ("q_downsample_ratio", 10**9, ValueError),
        ("sa_first_frame_scale", "adaptive_inf", ValueError),
        ("sa_first_frame_scale", float("nan"), ValueError),
        ("prompt", 123, ValueError),
        ("word_to_learn", ["x"], ValueError),
        ("base_model", 1.5, ValueError),
    ],
)
def test_adapter_config_refuses_poisonous_values(field, value, kind):
    with pytest.raises(kind, match=field):
        MIVAAdapterConfig(**{field: value})


@pytest.mark.parametrize(
    "content, match",
    [
        (b"[1, 2]", "holds a JSON list"),
        (b"null", "holds a JSON NoneType"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"prompt": 123}', "prompt=123 must be a string"),
        (b'{"ca_lora_scale": NaN}', "ca_lora_scale=nan"),
        (b'{"ca_lora_rank": 1000000000000000}', "ca_lora_rank"),
        (b'{"ca_lora_rnak": 4}', "did you mean 'ca_lora_rank'"),
    ],
)
def test_bad_adapter_config_json_names_the_file(shared, tmp_path, content, match):
    folder = tmp_path / "bad"
    shared.save_adapter("a", folder)
    (folder / "adapter_config.json").write_bytes(content)
    error = expect_clean_failure(shared, lambda: shared.load_adapters(folder, adapter_names="c"))
    assert "adapter_config.json" in str(error)
    assert match in str(error)


def test_edited_adapter_config_json_is_reported(pipe, tmp_path, caplog):
    folder = tmp_path / "edited"
    pipe.save_adapter("a", folder)
    data = json.loads((folder / "adapter_config.json").read_text())
    data["prompt"] = "edited by hand"
    (folder / "adapter_config.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="miva.loaders.sources"):
        pipe.load_adapters(folder, adapter_names="c")
    assert "prompt: None -> 'edited by hand'" in caplog.text
    assert get_miva_context(pipe.unet).configs["c"].prompt == "edited by hand"


def test_flipped_tensor_bit_is_detected(shared, tmp_path):
    folder = tmp_path / "flipped"
    shared.save_adapter("a", folder)
    path = folder / "miva_adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a low mantissa bit of the last tensor: a finite, plausible, wrong value
    path.write_bytes(bytes(data))
    error = expect_clean_failure(shared, lambda: shared.load_adapters(folder, adapter_names="c"))
    assert "miva_adapter.safetensors is corrupt" in str(error)


def test_non_finite_adapter_tensors_are_refused(pipe, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    pipe.save_adapter("a", folder)
    path = folder / "miva_adapter.safetensors"
    with safe_open(path, framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "miva_sha256"}
    tensors = load_file(path)
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, path, metadata=metadata)
    error = expect_clean_failure(pipe, lambda: pipe.load_adapters(folder, adapter_names="c"))
    assert key in str(error) and "NaN or infinite" in str(error)
    with pytest.raises(ValueError, match="NaN or infinite"):  # nor are they written
        with torch.no_grad():
            adapter_state_dict(pipe.unet, "a")[key].fill_(float("inf"))
        pipe.save_adapter("a", tmp_path / "inf")
    assert not (tmp_path / "inf").exists()


# ----------------------------------------------------------------------------------------- research .pt import
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop(next(k for k in sd if "to_k_lora.down" in k)), "has up.weight but lacks down.weight"),
        (lambda sd: sd.update({k: torch.tensor(1.0) for k in list(sd)[:1]}), r"shape \(\), expected a non-empty 2-d"),
        (lambda sd: sd.update({k: torch.zeros(4, 0) for k in list(sd)[:1]}), "expected a non-empty 2-d"),
        (lambda sd: sd.update({next(k for k in sd if "to_k_lora.up" in k): torch.zeros(32, 3)}), "do not chain"),
        (lambda sd: sd.update({k: torch.zeros(4, 7) for k in sd if "lora.down" in k}), r"shape \(4, 7\)"),
        (lambda sd: sd.update({k: torch.full((4, 32), math.nan) for k in sd if "lora.down" in k}), "NaN or infinite"),
        (lambda sd: sd.update({k: torch.ones(4, 32, dtype=torch.int64) for k in sd if "lora.down" in k}), "floating"),
    ],
)
def test_malformed_research_pt_names_file_and_key(shared, tmp_path, edit, match):
    state = research_ca_checkpoint(shared.unet, seed=0, q_lora=False, out_lora=False)
    edit(state)
    path = tmp_path / "ca.pt"
    torch.save(state, path)
    error = expect_clean_failure(shared, lambda: shared.load_adapters(path, adapter_names="r"))
    assert "ca.pt" in str(error) and re.search(match, str(error)), str(error)


def test_damaged_pt_is_corrupt_not_unsafe(shared, tmp_path):
    path = tmp_path / "ca.pt"
    torch.save(research_ca_checkpoint(shared.unet, seed=0, q_lora=False, out_lora=False), path)
    shared.load_adapters(path, adapter_names="r")  # the intact file loads
    shared.delete_adapters("r")
    shared.set_adapters(["a"])  # as the fixture had it
    data = path.read_bytes()
    for i, damaged in enumerate((data[: len(data) // 2], data[:100], b"\x80\x02garbage", b"")):
        bad = tmp_path / f"bad{i}.pt"
        bad.write_bytes(damaged)
        error = expect_clean_failure(shared, lambda bad=bad: shared.load_adapters(bad, adapter_names="r"))
        assert "not a readable torch checkpoint (truncated or corrupt?)" in str(error)
    raw = tmp_path / "truncated_raw.pt"  # a raw pickle cut short, no zip around it
    raw.write_bytes(pickle.dumps({"x": [1, 2, 3]}, protocol=2)[:-4])
    assert "corrupt" in str(expect_clean_failure(shared, lambda: shared.load_adapters(raw, adapter_names="r")))


# ------------------------------------------------------------------------------------------- pipeline arguments
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(height=0), "height"),
        (dict(height=-64), "height"),
        (dict(width=64.0), "width"),
        (dict(height=10**6), "height"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps="2"), "num_inference_steps"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(eta=float("inf")), "eta"),
        (dict(prompt=123), "prompt"),
        (dict(prompt=["a", 5]), "prompt"),
        (dict(negative_prompt=7), "negative_prompt"),
        (dict(output_type="gif"), "output_type"),
        (dict(generator=3), "generator"),
        (dict(latents=torch.zeros(1, 4, FRAMES, 4, 4)), "latents"),
        (dict(latents=torch.full((1, 4, FRAMES, 8, 8), float("nan"))), "latents"),
        (dict(adapter_weights=[float("nan")]), r"adapter_weights\[0\]"),
        (dict(shared_noise_ratio=float("nan")), "shared_noise_ratio"),
        (dict(shared_noise_ratio="0.5"), "shared_noise_ratio"),
        (dict(cil_ratio=float("inf")), "cil_ratio"),
        (dict(cil_ratio=2.0), "cil_ratio=2.0 scales the first timestep to"),
        (dict(guidance_scale=1e300), "guidance_scale"),
        (dict(eta=5.0), "eta"),
        (dict(use_dct_init="yes"), "use_dct_init"),
        (dict(clip_skip=-1), "clip_skip"),
        (dict(clip_skip=10**6), "clip_skip"),
        (dict(num_videos_per_prompt=10**15), "num_videos_per_prompt"),
        (dict(cross_attention_kwargs=[1]), "cross_attention_kwargs"),
    ],
)
def test_bad_pipeline_arguments_name_the_argument(shared, image, kwargs, argument):
    error = expect_clean_failure(shared, lambda: call(shared, image, **kwargs))
    assert re.search(argument, str(error)), str(error)


@pytest.mark.parametrize(
    "bad_image, match",
    [
        (PIL.Image.new("RGB", (0, 0)), "0x0 pixels"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "5x0 pixels"),
        (np.full((SIZE, SIZE, 3), np.nan, dtype=np.float32), "image 0: .* NaN or infinite"),
        (torch.full((3, SIZE, SIZE), float("inf")), "image 0: .* NaN or infinite"),
    ],
)
def test_bad_images_are_refused(shared, bad_image, match):
    error = expect_clean_failure(shared, lambda: call(shared, bad_image))
    assert re.search(match, str(error)), str(error)


def test_good_call_after_refused_calls_is_unchanged(shared, image):
    """Refused calls leave nothing behind: the next good call gives the same video as on a fresh pipeline."""
    reference = call(shared, image).frames
    for kwargs in (dict(height=0), dict(adapter_weights=[float("nan")]), dict(latents=torch.zeros(1))):
        with pytest.raises((ValueError, TypeError)):
            call(shared, image, **kwargs)
    assert torch.equal(call(shared, image).frames, reference)
    assert torch.isfinite(reference).all()


# ------------------------------------------------------------------------------------------------ YAML configs
@pytest.mark.parametrize(
    "data, key",
    [
        ({"unet_additional_kwargs": {"ca_lora_scale": float("nan")}}, "unet_additional_kwargs.ca_lora_scale"),
        ({"unet_additional_kwargs": {"ca_lora_rank": 10**15}}, "unet_additional_kwargs.ca_lora_rank"),
        ({"unet_additional_kwargs": {"adapter_weights": [float("inf")]}}, "unet_additional_kwargs.adapter_weights"),
        ({"validation_data": {"guidance_scale": float("inf")}}, "validation_data.guidance_scale"),
        ({"validation_data": {"height": 10**9}}, "validation_data.height"),
        ({"learning_rate": float("inf")}, "learning_rate"),
    ],
)
def test_yaml_config_refuses_non_finite_and_absurd_values(data, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(data)


def test_snapshot_helper_sees_every_kind_of_change(pipe):
    """The helper used above must notice a change of each kind it claims to compare (else it proves nothing)."""
    from state_snapshot import assert_same_snapshot

    changes = [
        lambda: adapter_state_dict(pipe.unet, "a")[next(iter(adapter_state_dict(pipe.unet, "a")))].add_(1e-7),
        lambda: next(pipe.unet.parameters()).data.view(-1)[0].add_(1.0),
        lambda: next(pipe.text_encoder.parameters()).data.view(-1)[0].add_(1.0),
        lambda: pipe.tokenizer.add_tokens(["<new-word>"]),
        lambda: pipe.add_adapter("z", CONFIG, activate=False),
        lambda: pipe.set_adapters(["a"], [0.5]),
        lambda: pipe.disable_adapters(),
        lambda: setattr(get_miva_context(pipe.unet).configs["a"], "prompt", "changed"),
    ]
    for change in changes:
        before = take_snapshot(pipe)
        with torch.no_grad():
            change()
        with pytest.raises(AssertionError):
            assert_same_snapshot(before, take_snapshot(pipe))


def test_clip_skip_works_with_transformers_5(shared, image):
    """clip_skip=1 (a valid input that crashed inside diffusers: transformers 5's CLIPTextModel has no `.text_model`)
    equals the penultimate CLIP layer + final layer norm, computed here by hand and passed as prompt_embeds."""
    tokenizer, encoder = shared.tokenizer, shared.text_encoder
    ids = tokenizer(["clouds"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
        embeds = encoder.final_layer_norm(hidden)
    skipped = call(shared, image, clip_skip=1).frames
    assert torch.equal(skipped, call(shared, image, prompt=None, prompt_embeds=embeds).frames)
    assert not torch.equal(skipped, call(shared, image).frames)


def test_a_nan_video_is_an_error_not_a_result(pipe, image):
    """The last guard: whatever poisons a call (here an adapter weight set to NaN in memory, past every loader
    check) ends in a ValueError instead of a NaN video, and the call state is restored."""
    key = next(k for k in adapter_state_dict(pipe.unet, "a") if "to_k_lora.up" in k)
    with torch.no_grad():
        adapter_state_dict(pipe.unet, "a")[key].fill_(float("nan"))
    error = expect_clean_failure(pipe, lambda: call(pipe, image))
    assert "denoised latents contain NaN or infinity" in str(error)

"""The MIVA trainer on the tiny offline model and 10 synthetic clips (64x64, 8 frames, stride 1): learning, what
trains, checkpoints and exact resume, textual inversion, the saved adapter, 2-process DDP, config and CLI."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from miva.attention_processors import MIVAAdapterConfig
from miva.training import checkpointing as ckpt
from miva.training.synthetic import write_synthetic_dataset
from miva.training.train import LOG_FILE, MIVATrainer, SeededShuffleSampler, train
from miva.training.train_config import TrainConfig, ValidationConfig, apply_overrides
from miva.training.trainer_parts import encode_frames, i2v_epsilon_loss, step_generator

PROMPT = "a photo of clouds moving"
ADAPTER = dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True, motion_lora_rank=4, ca_lora_rank=4)
PARTS = ["motion_lora", "ca_lora"]  # the cross-frame branch exists but stays frozen


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_synthetic_dataset(folder, num_clips=10, num_frames=10, height=64, width=64, prompt=PROMPT, fmt="gif")
    return folder


def make_config(clips, output_dir, **overrides) -> TrainConfig:
    fields = dict(
        output_dir=str(output_dir),
        tiny=True,
        video_root=str(clips),
        prompt=PROMPT,
        num_frames=8,
        sample_frame_rate=1,
        width=64,
        height=64,
        adapter=dict(ADAPTER),
        trainable_modules=list(PARTS),
        learning_rate=3e-3,
        max_train_steps=30,
        checkpointing_steps=10,
        validation_steps=None,
        mixed_precision="no",
        gradient_checkpointing=False,  # ~30% faster on CPU; the checkpointed path has its own tests below
        report_to="none",
        seed=42,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def state_copy(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def eval_loss(trainer) -> float:
    """The objective on all 10 clips with fixed samples, timesteps and noise (no gradient)."""
    trainer.dataset.set_epoch(0)
    losses = []
    with torch.no_grad():
        for i in range(len(trainer.dataset)):
            generator = step_generator(7, i, 0, "cpu")
            latents = encode_frames(trainer.vae, trainer.dataset[i]["pixel_values"][None], generator)
            embeds = trainer.prompt_embeds([trainer.dataset.prompts[i]])
            losses.append(
                i2v_epsilon_loss(trainer.unet, latents, embeds, trainer.noise_scheduler, generator, [100, 900]).item()
            )
    return float(np.mean(losses))


def log_losses(output_dir) -> dict[int, float]:
    lines = Path(output_dir, LOG_FILE).read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """30 steps at lr 3e-3 with checkpoints every 10 steps (the newest 2 kept) and the final native adapter."""
    out = tmp_path_factory.mktemp("run30")
    trainer = MIVATrainer(make_config(clips, out, checkpoints_total_limit=2))
    trainer.setup()
    before = dict(
        unet=state_copy(trainer.unet),
        vae=state_copy(trainer.vae),
        text=state_copy(trainer.text_encoder),
        loss=eval_loss(trainer),
    )
    path = trainer.train()
    before["loss_after"] = eval_loss(trainer)
    return trainer, before, path


# ------------------------------------------------------------------------------------------ learning, what trains
def test_loss_decreases(trained):
    trainer, before, _ = trained
    losses = log_losses(trainer.output_dir)
    assert sorted(losses) == list(range(1, 31))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(26, 31)])
    assert last < first - 0.01, (first, last)
    assert before["loss_after"] < 0.95 * before["loss"], (before["loss"], before["loss_after"])


def test_only_selected_parameters_change(trained):
    trainer, before, _ = trained
    after = trainer.unet.state_dict()
    assert set(after) == set(before["unet"])
    trainable = set(trainer.trainable)
    assert trainable and all(".adapters.miva." in k for k in trainable)
    assert any(".motion_modules." in k for k in trainable) and any("attn2.processor" in k for k in trainable)
    for key, value in after.items():
        if key in trainable:
            assert not torch.equal(value, before["unet"][key]), f"{key} did not train"
        else:
            assert torch.equal(value, before["unet"][key]), f"{key} changed but is frozen"
    frozen_i2v = [k for k in after if "attn1.processor.adapters.miva.to_out." in k and ".motion_modules." not in k]
    assert len(frozen_i2v) == 2 * 11  # weight and bias of the 11 spatial attn1 branches of the tiny UNet
    assert all(not trainer.unet.get_parameter(k).requires_grad and not before["unet"][k].any() for k in frozen_i2v)
    for part in ("vae", "text"):
        module = trainer.vae if part == "vae" else trainer.text_encoder
        assert all(torch.equal(v, before[part][k]) for k, v in module.state_dict().items())


def test_checkpoints_are_adapter_only_pruned_and_complete(trained):
    trainer, _, _ = trained
    names = sorted(p.name for p in trainer.output_dir.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-20", "checkpoint-30"]  # checkpoints_total_limit=2; no *.tmp left behind
    folder = trainer.output_dir / "checkpoint-30"
    files = {p.name for p in folder.iterdir()}
    assert {ckpt.ADAPTER_STATE_FILE, ckpt.TRAINER_STATE_FILE, "optimizer.bin"} <= files
    assert "model.safetensors" not in files  # the frozen UNet is never copied into checkpoints
    state = ckpt.read_trainer_state(folder)
    assert state["global_step"] == 30 and state["trainable_modules"] == PARTS and state["num_processes"] == 1
    saved = load_file(str(folder / ckpt.ADAPTER_STATE_FILE))
    live = ckpt.adapter_state_dict(trainer.unet, "miva")
    assert set(saved) == set(live) and all(torch.equal(saved[k], live[k]) for k in live)


def test_saved_adapter_loads_and_changes_the_video(trained):
    from miva.pipelines import MIVAPipeline
    from miva.tiny import make_test_image, tiny_components

    trainer, _, path = trained
    assert path == trainer.output_dir / "adapter"
    assert {"adapter_config.json", "miva_adapter.safetensors", "README.md"} <= {p.name for p in path.iterdir()}
    saved = MIVAAdapterConfig.from_json_file(path / "adapter_config.json")
    assert (saved.base_model, saved.motion_adapter) == ("miva.tiny", "miva.tiny")  # what --tiny really used
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    options = dict(
        prompt=PROMPT, num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=1.0, output_type="np"
    )
    image = make_test_image(64, 64, seed=3)
    plain = pipe(image, generator=torch.Generator().manual_seed(0), **options).frames
    assert pipe.load_adapters(str(path), adapter_names="trained") == ["trained"]
    loaded = {
        k.replace(".adapters.trained.", ".adapters.miva."): v
        for k, v in ckpt.adapter_state_dict(pipe.unet, "trained").items()
    }
    expected = ckpt.adapter_state_dict(trainer.unet, "miva")
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    adapted = pipe(image, generator=torch.Generator().manual_seed(0), **options).frames
    assert plain.shape == adapted.shape == (1, 8, 64, 64, 3)
    assert np.abs(adapted - plain).max() > 1e-3


# ---------------------------------------------------------------------------------------------- exact resume
def test_resume_continues_exactly(trained, clips, tmp_path):
    """Stopped at step 10 (after its checkpoint) and resumed to 20 == the uninterrupted run's step 20, bit for bit."""
    reference, _, _ = trained
    out = tmp_path / "resumed"
    train(make_config(clips, out, max_train_steps=10))
    (out / "checkpoint-90.tmp").mkdir()  # a save killed half-way: never taken as a checkpoint
    assert ckpt.find_checkpoint(out, "latest") == out / "checkpoint-10"
    train(make_config(clips, out, max_train_steps=20, resume_from_checkpoint="latest"))
    ours = load_file(str(out / "checkpoint-20" / ckpt.ADAPTER_STATE_FILE))
    theirs = load_file(str(reference.output_dir / "checkpoint-20" / ckpt.ADAPTER_STATE_FILE))
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    resumed, uninterrupted = log_losses(out), log_losses(reference.output_dir)
    assert sorted(resumed) == list(range(1, 21))
    assert all(resumed[s] == uninterrupted[s] for s in range(1, 21))


def test_resume_refuses_another_adapter_config(trained, clips, tmp_path):
    reference, _, _ = trained
    config = make_config(
        clips,
        tmp_path,
        adapter=dict(ADAPTER, ca_lora_rank=8),
        resume_from_checkpoint=str(reference.output_dir / "checkpoint-20"),
    )
    with pytest.raises(ValueError, match="adapter_config"):
        MIVATrainer(config).setup()


# ------------------------------------------------------------------------------------------ textual inversion
def test_textual_inversion_changes_only_the_new_row(clips, tmp_path):
    from miva.loaders.adapter_io import load_miva_adapter
    from miva.tiny import tiny_components, tiny_unet_motion

    word = "<wiggle>"
    config = make_config(
        clips,
        tmp_path,
        prompt=f"a photo of {word} moving",
        word_to_learn=word,
        initializer_token="clouds",
        max_train_steps=4,
        checkpointing_steps=None,
    )
    with pytest.raises(ValueError, match="does not appear"):  # the clips' .txt sidecars win over `prompt`
        MIVATrainer(config).setup()
    no_sidecars = tmp_path / "clips"
    no_sidecars.mkdir()
    for clip in Path(clips).glob("*.gif"):
        (no_sidecars / clip.name).symlink_to(clip)
    config.video_root = str(no_sidecars)
    trainer = MIVATrainer(config)
    trainer.setup()
    weight = trainer.text_encoder.get_input_embeddings().weight
    new_id = trainer.tokenizer.convert_tokens_to_ids(word)
    (init_id,) = trainer.tokenizer.encode("clouds", add_special_tokens=False)
    assert new_id == weight.shape[0] - 1 and torch.equal(weight[new_id], weight[init_id])
    before = state_copy(trainer.text_encoder)
    path = trainer.train()
    after = trainer.text_encoder.state_dict()
    (key,) = [k for k, p in trainer.text_encoder.named_parameters() if p is weight]
    changed_rows = (after[key] != before[key]).any(dim=1).nonzero().flatten().tolist()
    assert changed_rows == [new_id]
    assert all(torch.equal(v, before[k]) for k, v in after.items() if k != key)
    # The adapter folder carries the learned word; loading it adds the token with the trained vector.
    parts = tiny_components(seed=0, with_image_encoder=False)
    load_miva_adapter(
        tiny_unet_motion(seed=0), str(path), "ti", text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"]
    )
    loaded = parts["text_encoder"].get_input_embeddings().weight[parts["tokenizer"].convert_tokens_to_ids(word)]
    assert torch.equal(loaded, after[key][new_id])


def test_orthogonal_bins_train_down_only(clips, tmp_path):
    from miva.tiny import tiny_unet_motion
    from miva.training.orthogonal import create_bases_library
    from miva.training.trainer_parts import adapter_parameter_parts

    create_bases_library(tiny_unet_motion(seed=0), tmp_path / "bases.safetensors", seed=0)
    config = make_config(
        clips,
        tmp_path / "run",
        oa_bin_id=1,
        oa_bases_path=str(tmp_path / "bases.safetensors"),
        trainable_modules=["motion_lora"],
        max_train_steps=3,
        checkpointing_steps=None,
    )
    trainer = MIVATrainer(config)
    trainer.setup()
    parts = adapter_parameter_parts(trainer.unet, "miva")
    ups = {
        k: p.detach().clone() for k, (part, p) in parts.items() if part == "motion_lora" and k.endswith(".up.weight")
    }
    assert set(trainer.trainable) == {k for k, (part, _) in parts.items() if part == "motion_lora" and ".down." in k}
    assert not any(p.requires_grad for k, (part, p) in parts.items() if part == "ca_lora")
    trainer.train()
    for key, param in parts.items():
        if key in ups:
            assert torch.equal(param[1], ups[key]), key  # the bin's columns stay fixed
    first = next(k for k in ups)
    up = ups[first]
    assert torch.allclose(up.T @ up, torch.eye(up.shape[1]), atol=1e-5)  # orthonormal columns
    assert all(parts[k][1].abs().sum() > 0 for k in trainer.trainable)  # down left zero and trained


def test_motion_module_checkpointing_keeps_outputs_and_gradients():
    from miva.attention_processors import add_miva_adapter, install_miva_processors, set_miva_adapters
    from miva.tiny import tiny_unet_motion
    from miva.training.trainer_parts import checkpoint_motion_modules

    def run(checkpointed: bool):
        unet = tiny_unet_motion(seed=0)
        install_miva_processors(unet)
        add_miva_adapter(unet, "w", MIVAAdapterConfig(**ADAPTER))
        set_miva_adapters(unet, ["w"])
        unet.requires_grad_(False)
        params = {n: p for n, p in unet.named_parameters() if ".adapters." in n}
        with torch.no_grad():
            for i, p in enumerate(params.values()):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.02)
        for p in params.values():
            p.requires_grad_(True)
        if checkpointed:
            unet.enable_gradient_checkpointing()
            assert checkpoint_motion_modules(unet) == 11 and checkpoint_motion_modules(unet) == 0
        generator = torch.Generator().manual_seed(1)
        sample, text = torch.randn(1, 4, 8, 8, 8, generator=generator), torch.randn(8, 77, 32, generator=generator)
        out = unet(sample, torch.tensor([500]), encoder_hidden_states=text).sample
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in params.items()}

    plain, plain_grads = run(False)
    checkpointed, grads = run(True)
    assert torch.equal(plain, checkpointed)
    assert all(torch.equal(plain_grads[n], grads[n]) for n in plain_grads)


# ---------------------------------------------------------------------------- validation GIFs, Hub push, precision
def test_validation_gif_and_push_to_hub(clips, tmp_path, monkeypatch):
    from miva.loaders import adapter_io

    uploads = []

    class Repo(str):
        repo_id = "user/miva-test"

    def fake_upload_folder(repo_id, folder_path, **kwargs):
        uploads.append((repo_id, {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}))

    monkeypatch.setattr(adapter_io, "create_repo", lambda repo_id, **kwargs: Repo(f"https://hub/{repo_id}"))
    monkeypatch.setattr(adapter_io, "upload_folder", fake_upload_folder)
    config = make_config(
        clips,
        tmp_path,
        max_train_steps=2,
        checkpointing_steps=None,
        validation_steps=2,
        validation=dict(num_inference_steps=2),
        push_to_hub=True,
        hub_model_id="user/miva-test",
    )
    trainer = MIVATrainer(config)
    trainer.train()
    gifs = sorted((tmp_path / "validation").glob("*.gif"))
    assert [g.name for g in gifs] == ["step-000002-clip_000-frame0.gif"]  # every 2 steps and at the end: once
    assert trainer.last_gif == gifs[0]
    ((repo_id, files),) = uploads
    assert repo_id == "user/miva-test"
    assert {"README.md", "adapter_config.json", "miva_adapter.safetensors", "sample.gif"} <= set(files)
    assert files["sample.gif"] == gifs[0].read_bytes()
    assert b"sample.gif" in files["README.md"] and b"user/miva-test" in files["README.md"]


def test_bf16_mixed_precision_checkpointing_and_full_unet_file(clips, tmp_path):
    config = make_config(
        clips,
        tmp_path,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        max_train_steps=2,
        checkpointing_steps=None,
        split_ckpt=False,
    )
    trainer = MIVATrainer(config)
    path = trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert all(p.dtype == torch.float32 for p in trainer.trainable.values())
    assert trainer.unet.conv_in.weight.dtype == torch.bfloat16
    motion_modules = [m for m in trainer.unet.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    assert trainer.unet.is_gradient_checkpointing and all(m._miva_checkpointed for m in motion_modules)
    assert all(np.isfinite(v) for v in log_losses(tmp_path).values())
    assert path == tmp_path / "model.safetensors"
    saved = load_file(str(path))
    live = trainer.unet.state_dict()
    assert set(saved) == set(live) and all(torch.equal(saved[k], live[k].cpu()) for k in live)
    assert MIVAAdapterConfig.from_json_file(tmp_path / "adapter_config.json").to_dict() == config.adapter.to_dict()


def test_fp16_without_gpu_falls_back_to_float32(clips, tmp_path):
    trainer = MIVATrainer(make_config(clips, tmp_path, mixed_precision="fp16"))
    trainer._make_accelerator()
    assert trainer.accelerator.mixed_precision == "no"


# --------------------------------------------------------------------------------------------- multi-process
def test_accelerate_launch_two_processes(clips, tmp_path, accelerate_launch):
    """Two CPU processes (gloo DDP): 5 batches each per epoch, one adapter saved, states of both ranks checkpointed.

    accelerate 1.15's `--cpu` launcher starts a single process (multi-CPU needs mpirun); `--multi_gpu` on a machine
    without GPUs runs torchrun, and each process trains on the CPU with the gloo backend.
    """
    config = make_config(clips, tmp_path / "out", max_train_steps=4, checkpointing_steps=4)
    config.to_yaml(tmp_path / "train.yaml")
    command, env = accelerate_launch("miva.training.train", "--config", str(tmp_path / "train.yaml"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    state = ckpt.read_trainer_state(out / "checkpoint-4")
    assert state["num_processes"] == 2 and state["global_step"] == 4
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (out / "checkpoint-4").iterdir()}
    assert list(out.glob("*/miva_adapter.safetensors")) == [out / "adapter" / "miva_adapter.safetensors"]
    assert result.stdout.strip().splitlines()[-1] == str(out / "adapter")
    tensors = load_file(str(out / "adapter" / "miva_adapter.safetensors"))
    ups = [v for k, v in tensors.items() if k.endswith("lora.up.weight")]
    assert ups and all(v.abs().max() > 0 for v in ups)  # trained (LoRA `up` starts at zero)


# ---------------------------------------------------------------------------------------- data order, config, CLI
def test_seeded_sampler_is_a_pure_function_of_seed_and_epoch():
    sampler = SeededShuffleSampler(10, seed=42)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert sorted(orders[0]) == list(range(10)) and orders[0] == orders[2] and orders[0] != orders[1]
    assert list(SeededShuffleSampler(10, seed=43)) != orders[0]


def test_config_errors_name_the_field(clips, tmp_path):
    base = dict(output_dir=str(tmp_path), tiny=True, video_root=str(clips))
    cases = [
        (dict(learning_rat=1e-4), "did you mean 'learning_rate'"),
        (dict(trainable_modules=["motion_lora", "ca_lora"]), "'ca_lora' is not a part of this adapter"),
        (dict(trainable_modules=["motion_lorra"]), "did you mean 'motion_lora'"),
        (dict(mixed_precision="fp32"), "mixed_precision='fp32'"),
        (dict(width=100), "width=100 must be a multiple of 8"),
        (dict(sample_frame_rate=[4, 2]), "sample_frame_rate"),
        (dict(word_to_learn="<w>"), "initializer_token"),
        (dict(push_to_hub=True), "hub_model_id"),
        (dict(oa_bin_id=1), "oa_bases_path"),
        (dict(timestep_range=[500, 100]), "timestep_range"),
        (dict(report_to="tensorbord"), "did you mean 'tensorboard'"),
        (dict(adapter=dict(use_ca_lora="yes")), "use_ca_lora='yes'"),
        (dict(validation=dict(num_inference_step=2)), "did you mean 'num_inference_steps'"),
        (dict(tiny=False, motion_module_path="m"), "pretrained_model_path is required"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            TrainConfig.from_dict({**base, **fields})


def test_config_yaml_round_trip_overrides_and_cli(clips, tmp_path):
    from miva.cli import build_parser
    from miva.training.command import TINY_DEFAULTS, config_from_args

    config = make_config(clips, tmp_path, validation=ValidationConfig(image=["a.png"], num_inference_steps=3))
    config.to_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_yaml(tmp_path / "c.yaml", overrides=["adapter.ca_lora_rank=8", "max_train_steps=7"])
    expected = config.to_dict()
    expected["adapter"]["ca_lora_rank"], expected["max_train_steps"] = 8, 7
    assert again.to_dict() == expected
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=null", "e=text"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": None,
        "e": "text",
    }
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["max_train_steps"])
    args = build_parser().parse_args(
        ["train", "--tiny", "--resume", "latest", "--set", "max_train_steps=3", "--set", f"output_dir={tmp_path}"]
    )
    cli_config = config_from_args(args)
    assert cli_config.tiny and cli_config.max_train_steps == 3 and cli_config.resume_from_checkpoint == "latest"
    assert cli_config.width == TINY_DEFAULTS["width"] and cli_config.video_root is None


def test_find_checkpoint_and_prune(tmp_path):
    assert ckpt.find_checkpoint(tmp_path, None) is None and ckpt.find_checkpoint(tmp_path, "latest") is None
    for step in (5, 30, 200):
        (tmp_path / f"checkpoint-{step}").mkdir()
        ckpt.write_trainer_state(tmp_path / f"checkpoint-{step}", {"global_step": step})
    (tmp_path / "checkpoint-300.tmp").mkdir()
    assert ckpt.find_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-200"
    assert ckpt.find_checkpoint(tmp_path, "checkpoint-30") == tmp_path / "checkpoint-30"
    with pytest.raises(FileNotFoundError, match="checkpoint-7.*checkpoint-5"):
        ckpt.find_checkpoint(tmp_path, "checkpoint-7")
    assert ckpt.prune_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint-5", tmp_path / "checkpoint-30"]
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-200"]


def test_checkpoint_tensors_use_the_adapter_file_format_and_old_keys_still_load(unet_motion, randomize_adapter):
    """One format for `adapter_state.safetensors` and `miva_adapter.safetensors`; checkpoints written with the UNet's
    parameter names (`<layer>.processor.adapters.<name>.<part>`, before the formats were one) load exactly."""
    from miva.attention_processors import add_miva_adapter
    from miva.loaders import adapter_state_dict
    from miva.tiny import tiny_unet_motion

    config = MIVAAdapterConfig(use_ca_lora=True, use_motion_embed=True)
    add_miva_adapter(unet_motion, "miva", config)
    randomize_adapter(unet_motion, "miva")
    native = adapter_state_dict(unet_motion, "miva")
    saved = ckpt.checkpoint_adapter_state(unet_motion, "miva")
    assert set(saved) == set(native) and all(torch.equal(saved[k], native[k]) for k in native)
    legacy = {k: v.clone() for k, v in unet_motion.state_dict().items() if ".adapters.miva." in k}
    assert len(legacy) == len(native) and not set(legacy) & set(native)
    for state in (saved, legacy):
        other = tiny_unet_motion(seed=0)
        add_miva_adapter(other, "miva", config)
        ckpt.load_adapter_state(other, "miva", state)
        loaded = adapter_state_dict(other, "miva")
        assert all(torch.equal(loaded[k], native[k]) for k in native)
    legacy.pop(next(iter(legacy)))
    with pytest.raises(ValueError, match=r"adapter 'miva': missing key '.*' \(this UNet expects shape"):
        ckpt.load_adapter_state(other, "miva", legacy)

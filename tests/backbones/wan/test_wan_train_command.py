"""Issue 29: `miva train` trains Wan adapters with the shared trainer (`WanTrainer`): exact resume (bit for bit
against an uninterrupted run), what trains, gradient checkpointing, the native Wan folder it writes, and the
run-config checks on a Wan base."""

import json
import re
from pathlib import Path

import pytest
import torch
from no_hub import block_hub
from safetensors.torch import load_file

from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.trainer import WanTrainer
from miva.cli import main
from miva.config import ConfigError, load_config
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline

ROOT = Path(__file__).resolve().parents[3]
TRAIN = str(ROOT / "examples" / "configs" / "train_wan_tiny.yaml")


def train(out: Path, *extra: str) -> int:
    return main(["train", "--config", TRAIN, "--tiny", "--set", f"output_dir={out}", "--set", "validation_steps=100",
                 *extra])


def losses(out: Path) -> dict[int, float]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("wan_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        hub = block_hub(mp)
        assert train(out) == 0
        assert not hub
    return out


def test_resume_equals_the_uninterrupted_run_bit_for_bit(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert train(out, "--set", "max_train_steps=3") == 0  # stops after step 3; the newest checkpoint is step 2
    stopped = load_file(out / "adapter" / "miva_adapter.safetensors")
    assert train(out, "--resume", "latest") == 0  # replays step 3 from checkpoint-2, then step 4
    ours = load_file(out / "adapter" / "miva_adapter.safetensors")
    theirs = load_file(uninterrupted / "adapter" / "miva_adapter.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert any(not torch.equal(stopped[k], theirs[k]) for k in theirs)  # step 4 changed the adapter
    assert losses(out) == losses(uninterrupted) and sorted(losses(out)) == [1, 2, 3, 4]


def test_the_output_is_a_wan_adapter_folder_that_trained(uninterrupted):
    config = json.loads((uninterrupted / "adapter" / "adapter_config.json").read_text())
    assert config["backbone"] == "wan2.1-dit" and config["ca_mode"] == "implicit" and config["base_model"] == "tiny-wan"
    pipe = MIVAWanPipeline.from_pretrained  # noqa: F841  (the class is what loads it)
    from miva import load_base

    pipe = load_base("tiny-wan")
    pipe.load_adapters(uninterrupted / "adapter", adapter_names="waves")
    state = load_file(uninterrupted / "adapter" / "miva_adapter.safetensors")
    assert state["blocks.0.attn1.o.weight"].abs().max() > 0  # o starts at zero: it trained
    assert state["blocks.1.attn2.CA3.weight"].abs().max() > 0  # CA3 starts at zero too
    assert "Wan2.1" in (uninterrupted / "adapter" / "README.md").read_text()


def test_miva_infer_reads_what_miva_train_wrote(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    infer = str(ROOT / "examples" / "configs" / "infer_wan_tiny.yaml")
    assert main(["infer", "--config", infer, "--quiet", "--format", "png", "--set", f"output_dir={tmp_path}",
                 "--set", f"unet_checkpoint_path={uninterrupted / 'adapter'}"]) == 0
    assert len(list((tmp_path / "waterfall").glob("*.png"))) == 9
    assert main(["infer", "--config", infer, "--quiet", "--set", f"output_dir={tmp_path}", "--set",
                 f"unet_checkpoint_path={uninterrupted / 'adapter'}", "--set",
                 "unet_additional_kwargs.implicit_rank=4"]) == 2  # the YAML disagrees with the trained adapter


def test_what_trains_and_checkpointing_changes_nothing(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(TRAIN, [f"output_dir={tmp_path / 'x'}"]).train_config(tiny=True)
    trainer = WanTrainer(config)
    trainer.setup()
    assert isinstance(trainer.config.adapter, WanAdapterConfig)
    trained = {k.split(".adapters.waves.")[1].split(".")[0] for k in trainer.trainable}
    assert trained == {"o", "weight_module", "CA2", "CA_norm", "CA3"}  # q, k, v and the RMS norms: frozen copies
    frozen = [n for n, p in trainer.unet.named_parameters() if p.requires_grad and n not in trainer.trainable]
    assert frozen == []
    out = tmp_path / "no_ckpt"
    assert train(out, "--set", "gradient_checkpointing=false", "--set", "max_train_steps=2") == 0
    reference = losses(uninterrupted)
    assert [losses(out)[s] for s in (1, 2)] == pytest.approx([reference[1], reference[2]], rel=1e-5)


def test_the_saved_train_config_reads_back_as_the_same_wan_recipe(uninterrupted, monkeypatch):
    """The full `train_config.yaml` a Wan run writes (its adapter has Wan-only fields such as `implicit_act`) reads
    back as a `TrainConfig` with a `WanAdapterConfig`, and with the same recipe fingerprint: what an interrupted
    `python -m miva.world.adapters --ship --base wan` compares before it reuses a training."""
    from miva.config.trainer import TrainConfig
    from miva.world.adapters import recipe_fingerprint, saved_recipe_fingerprint

    monkeypatch.chdir(ROOT)
    saved = TrainConfig.from_yaml(uninterrupted / "train_config.yaml")
    assert type(saved.adapter) is WanAdapterConfig and "implicit_act" in saved.adapter.to_dict()
    original = load_config(TRAIN, [f"output_dir={uninterrupted}", "validation_steps=100"]).train_config(tiny=True)
    assert saved.adapter == original.adapter
    assert saved_recipe_fingerprint(uninterrupted) == recipe_fingerprint(original.to_dict())


def test_training_pads_prompts_to_the_length_the_tokenizer_declares(tmp_path, monkeypatch):
    """The trainer's T5 states have the pipeline's default length (the tokenizer's `model_max_length`), so an
    adapter trains under the padding it samples with (the base pretrained at 32 tokens must not train at 512)."""
    monkeypatch.chdir(ROOT)
    config = load_config(TRAIN, [f"output_dir={tmp_path / 'x'}"]).train_config(tiny=True)
    trainer = WanTrainer(config)
    trainer.setup()
    for length in (512, 24):
        trainer.tokenizer.model_max_length = length
        trainer._prompt_cache.clear()
        embeds = trainer.prompt_embeds(["waves", "waves", "sea"])
        pipe = trainer.validation_pipeline()
        stock, _ = pipe.encode_prompt(["waves", "waves", "sea"], do_classifier_free_guidance=False,
                                      max_sequence_length=length)
        assert embeds.shape == (3, length, stock.shape[-1]) and torch.equal(embeds, stock)


@pytest.mark.parametrize(("override", "message"), [
    ("train_data.n_sample_frames=8", "num_frames=8 is not 4k+1: Wan's VAE packs 4 frames after the first"),
    ("motion_module_path=guoyww/x", "motion_module_path='guoyww/x': the base 'tiny-wan' is a Wan2.1 DiT, which has "
                                    "no motion module; remove it"),
    ("split_ckpt=false", "split_ckpt=False: the full-UNet file is a UNet format"),
])
def test_wan_run_config_errors(override, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TRAIN, [f"output_dir={tmp_path}", override]).train_config(tiny=True).validate()
    assert train(tmp_path / "o", "--set", override) == 2
    assert capsys.readouterr().err.startswith("miva train: error: ")


OFFICIAL = {"pretrained_model_path": "tiny-wan", "train_data": {"n_sample_frames": 9, "width": 16, "height": 16},
            "unet_additional_kwargs": {"use_motion_lora": False, "q_downsample": False},
            "dit_kwargs": {"SA_mode": "first_prev", "SA_kwargs": {"sa_first_frame_scale": "adaptive_0.2"},
                           "CA_mode": "simple",
                           "CA_kwargs": {"rank": 8, "act": "gelu_tanh", "norm_mid": False, "use_out": True,
                                         "bias": False}},
            "trainable_modules": ["i2v_adapter", "cross_attn.CA2", "cross_attn.CA3"]}


def with_changes(changes: dict) -> dict:
    data = json.loads(json.dumps(OFFICIAL))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        part = data
        for name in parents:
            part = part.setdefault(name, {})
        part[leaf] = value
    return data


def test_official_training_yaml_keys_set_the_wan_adapter_and_what_trains():
    config = load_config(OFFICIAL).train_config(tiny=True)
    adapter = config.adapter
    assert isinstance(adapter, WanAdapterConfig)
    assert (adapter.sa_mode, adapter.sa_first_frame_scale, adapter.ca_mode, adapter.implicit_rank,
            adapter.implicit_act, adapter.implicit_norm, adapter.implicit_bias, adapter.use_ca_lora) == (
        "first_prev", "adaptive_0.2", "implicit", 8, "gelu_tanh", False, False, False)
    assert config.parts == ["i2v", "adaptive_weight", "implicit"]
    vanilla = load_config(with_changes({"dit_kwargs.CA_mode": "vanilla"})).adapter_configs()[0]
    assert (vanilla.ca_mode, vanilla.use_ca_lora) == ("lora", False)


@pytest.mark.parametrize(("changes", "message"), [
    ({"dit_kwargs.CA_kwargs.use_out": False},
     "dit_kwargs.CA_kwargs.use_out: False is not supported (accepted: [True])"),
    ({"dit_kwargs.CA_mode": "fancy"}, "dit_kwargs.CA_mode: 'fancy' is not supported (accepted: ['simple', 'vanilla'])"),
    ({"dit_kwargs.CA_kwargs.dropout": 0.1}, "dit_kwargs.CA_kwargs.dropout: not an official MIVA-Wan key miva reads"),
    ({"pretrained_model_path": "some/sd15"}, "dit_kwargs: official MIVA-Wan keys, but the base 'some/sd15' is not a "
                                             "Wan2.1 one"),
    ({"unet_additional_kwargs.sa_mode": "prev"}, "unet_additional_kwargs.sa_mode: also set by dit_kwargs; give each "
                                                 "adapter setting once"),
])
def test_official_training_yaml_refusals_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(with_changes(changes)).train_config(tiny=True)


def test_two_process_ddp_on_wan(tmp_path, accelerate_launch):
    """`accelerate launch` with two CPU processes (gloo DDP, as tests/training/test_training.py does for the UNet):
    both ranks' states checkpointed, one trained Wan adapter folder."""
    import subprocess

    out = tmp_path / "out"
    command, env = accelerate_launch("miva.training.train", "--config", str(TRAIN), "--tiny", "--set",
                                     f"output_dir={out}")
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["global_step"] == 4
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (out / "checkpoint-4").iterdir()}
    tensors = load_file(out / "adapter" / "miva_adapter.safetensors")
    assert tensors["blocks.0.attn1.o.weight"].abs().max() > 0  # trained (o starts at zero)

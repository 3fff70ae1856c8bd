"""`load_base`: one way to load a base by name or path (issue 27 item 1, issue 28 item 6).

Known names (`miva.base_registry`) resolve offline and fast with every Hub download made to fail; any other name
goes to diffusers' `from_pretrained` unchanged. References: the shipped safetensors read directly, `miva.tiny`."""

import dataclasses
import time

import pytest
import torch
from no_hub import block_hub
from safetensors.torch import load_file

import miva.base_registry as registry
from miva.base_registry import KNOWN_BASES, WORLD_PATH, known_base, resolve_base_path
from miva.loaders.base_models import load_base
from miva.loaders.model_card import is_hub_id
from miva.pipelines.pipeline_miva import MIVAPipeline

needs_weights = pytest.mark.skipif(not (WORLD_PATH / "model_index.json").is_file(),
                                   reason="the MotionWorld weights are not built in this checkout")


def _shipped(part: str, key: str) -> torch.Tensor:
    return load_file(str(WORLD_PATH / part / "diffusion_pytorch_model.safetensors"))[key].float()


def test_registry_names_and_paths():
    names = [name for base in KNOWN_BASES for name in base.names]
    assert len(names) == len(set(names)) and {"miva-world", "world", "tiny", "miva.tiny"} <= set(names)
    assert known_base("world") is known_base("miva-world") and known_base("miva.tiny").name == "tiny"
    assert resolve_base_path("miva-world") == str(WORLD_PATH)
    assert resolve_base_path("miva-world/motion_adapter") == str(WORLD_PATH / "motion_adapter")
    assert resolve_base_path("world/unet") == "world/unet"  # aliases only as whole names: may be a local folder
    assert resolve_base_path("user/miva-worldly") == "user/miva-worldly"
    assert resolve_base_path("tiny") == "tiny" and resolve_base_path(None) is None
    assert not is_hub_id("miva-world") and not is_hub_id("tiny") and is_hub_id("guoyww/animatediff-motion-adapter")


@needs_weights
def test_miva_world_loads_offline_fast_with_the_shipped_weights(monkeypatch):
    hub = block_hub(monkeypatch)
    start = time.perf_counter()
    pipe = load_base("miva-world")
    seconds = time.perf_counter() - start
    assert not hub and seconds < 20, seconds  # the bug: ~35 s of Hub retries, then a failure
    assert isinstance(pipe, MIVAPipeline) and type(pipe.unet).__name__ == "UNetMotionModel"
    assert pipe.unet.dtype == torch.float32  # stored fp16, loaded float32 (the registry's dtype)
    torch.testing.assert_close(pipe.unet.conv_in.weight.data, _shipped("unet", "conv_in.weight"), rtol=0, atol=0)
    key = "down_blocks.0.motion_modules.0.proj_in.weight"
    torch.testing.assert_close(pipe.unet.down_blocks[0].motion_modules[0].proj_in.weight.data,
                               _shipped("motion_adapter", key), rtol=0, atol=0)
    again = load_base("world", "miva-world/motion_adapter")  # alias + the name the trainer records
    torch.testing.assert_close(again.unet.down_blocks[0].motion_modules[0].proj_in.weight.data,
                               _shipped("motion_adapter", key), rtol=0, atol=0)
    assert not hub


def test_tiny_is_miva_tiny_and_takes_no_foreign_motion_adapter(monkeypatch):
    from miva.tiny import tiny_unet_motion

    hub = block_hub(monkeypatch)
    pipe = load_base("tiny")
    reference = tiny_unet_motion(seed=0)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert load_base("miva.tiny", "miva.tiny", image_encoder=None).image_encoder is None
    with pytest.raises(ValueError) as error:
        load_base("tiny", "guoyww/animatediff-motion-adapter-v1-5-3")
    assert str(error.value) == ("motion_adapter='guoyww/animatediff-motion-adapter-v1-5-3': the 'tiny' base brings "
                                "its own motion adapter (leave it unset, or use one of ['tiny', 'miva.tiny'])")
    assert not hub


def test_other_names_go_to_diffusers_unchanged(monkeypatch):
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(path=path, **kwargs)
        return "pipeline"

    monkeypatch.setattr(MIVAPipeline, "from_pretrained", from_pretrained)
    monkeypatch.setattr("miva.loaders.base_models.load_motion_adapter", lambda path, dtype=None: f"adapter:{path}")
    assert load_base("someone/miva-worldly", "guoyww/animatediff-motion-adapter-v1-5-3") == "pipeline"
    assert seen == {"path": "someone/miva-worldly", "motion_adapter": "adapter:guoyww/animatediff-motion-adapter-v1-5-3"}
    seen.clear()
    load_base("./a/local/folder", dtype=torch.float16, image_encoder=None)
    assert seen == {"path": "./a/local/folder", "dtype": torch.float16, "image_encoder": None}


def test_a_known_base_missing_from_the_install_says_how_to_rebuild(monkeypatch, tmp_path):
    world = dataclasses.replace(known_base("miva-world"), folder=tmp_path, rebuild="make-it")
    monkeypatch.setattr(registry, "KNOWN_BASES", (world, *KNOWN_BASES[1:]))
    with pytest.raises(FileNotFoundError) as error:
        load_base("miva-world")
    assert str(error.value) == f"miva-world: no base in {tmp_path} ({world.description}); rebuild it with `make-it`"


@needs_weights
def test_trainer_and_app_load_miva_world_offline(monkeypatch, tmp_path):
    from miva.app.bases import resolve_base
    from miva.training.train_config import TrainConfig
    from miva.training.trainer_parts import load_components

    hub = block_hub(monkeypatch)
    config = TrainConfig(output_dir=str(tmp_path), pretrained_model_path="miva-world",
                         motion_module_path="miva-world/motion_adapter", video_root=str(tmp_path))
    parts = load_components(config)
    assert type(parts["unet"]).__name__ == "UNetMotionModel" and parts["unet"].dtype == torch.float32
    torch.testing.assert_close(parts["unet"].conv_in.weight.data, _shipped("unet", "conv_in.weight"), rtol=0, atol=0)
    assert parts["noise_scheduler"].config.num_train_timesteps == 1000
    base = resolve_base("miva-world")
    assert base.label == "MotionWorld (shipped)" and base.train_model_path == "miva-world"
    assert base.train_motion_path == "miva-world/motion_adapter"
    torch.testing.assert_close(base.load().unet.conv_in.weight.data, _shipped("unet", "conv_in.weight"),
                               rtol=0, atol=0)
    assert not hub


@needs_weights
def test_convert_and_embed_text_resolve_miva_world_offline(monkeypatch):
    """`miva convert` / `miva bases create` (base UNet) and `miva embed-text` (text parts) take the same names."""
    from miva.commands.convert import base_unet
    from miva.commands.embed_text import text_parts
    from miva.config import load_config

    hub = block_hub(monkeypatch)
    config = load_config({"pretrained_model_path": "miva-world", "motion_module_path": "miva-world/motion_adapter"})
    unet = base_unet(config, tiny=False)
    torch.testing.assert_close(unet.conv_in.weight.data.float(), _shipped("unet", "conv_in.weight"), rtol=0, atol=0)
    tokenizer, text_encoder = text_parts(config, tiny=False)
    assert type(text_encoder).__name__ == "CLIPTextModel" and len(tokenizer("a red disc").input_ids) > 2
    assert not hub

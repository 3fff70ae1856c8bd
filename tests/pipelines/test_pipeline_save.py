"""`MIVAPipeline.save_pretrained` with adapters: the UNet is saved stock, the adapters beside it, and they come back
(names, weights, composition mode, outputs) with `from_pretrained`, `custom_pipeline` and in a `push_to_hub` upload."""

import json
import os
import sys

import pytest
import torch
from diffusers import DiffusionPipeline, UNetMotionModel
from diffusers.utils import dynamic_modules_utils
from safetensors import safe_open

import miva.pipelines.pipeline as shim
from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

OPTIONS = dict(prompt="a waterfall", num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
               output_type="latent")


def _randomize(pipe, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pipe.unet.miva_context.processors.values():
            if name in module.adapters:
                for p in module.adapters[name].parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pipeline with two trained adapters, both active with weights (0.7, 0.4) in "weights" mode, saved."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4))
    pipe.add_adapter("sway", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, use_i2v=False, motion_lora_rank=4))
    _randomize(pipe, "flow", 1)
    _randomize(pipe, "sway", 2)
    pipe.set_adapters(["flow", "sway"], [0.7, 0.4], parallel_mode="weights")
    folder = tmp_path_factory.mktemp("pipe") / "saved"
    pipe.save_pretrained(folder)
    image = make_test_image(64, 64)
    out = pipe(image, generator=torch.Generator().manual_seed(0), **OPTIONS).frames
    return folder, image, out


def _check_restored(pipe, image, expected):
    assert pipe.get_active_adapters() == ["flow", "sway"]
    assert pipe.unet.miva_context.active == [("flow", 0.7), ("sway", 0.4)]
    assert pipe.unet.miva_context.parallel_mode == "weights"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image, generator=torch.Generator().manual_seed(0), **OPTIONS).frames
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_unet_is_saved_stock(saved):
    folder, _, _ = saved
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    stock = set(UNetMotionModel.from_config(UNetMotionModel.load_config(folder / "unet")).state_dict())
    assert keys == stock  # no processor keys: a stock load neither warns nor drops anything
    manifest = json.loads((folder / "miva_adapters" / "miva_adapters.json").read_text())
    assert manifest == {"adapters": ["flow", "sway"], "active": [["flow", 0.7], ["sway", 0.4]],
                        "parallel_mode": "weights", "enabled": True}
    assert sorted(os.listdir(folder / "miva_adapters" / "flow")) == [
        "README.md", "adapter_config.json", "miva_adapter.safetensors"]


def test_from_pretrained_restores_the_adapters(saved):
    folder, image, expected = saved
    _check_restored(MIVAPipeline.from_pretrained(folder), image, expected)


def test_custom_pipeline_restores_the_adapters(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder, image, expected = saved
    loaded = DiffusionPipeline.from_pretrained(folder, custom_pipeline=os.path.dirname(shim.__file__),
                                               trust_remote_code=True)
    _check_restored(loaded, image, expected)


def test_save_without_adapters_removes_stale_ones_and_refuses_fused(saved, tmp_path):
    folder, _, _ = saved
    pipe = MIVAPipeline.from_pretrained(folder)
    pipe.fuse_adapters()
    refused = r"save_pretrained: adapters .* are fused into the base weights; call pipe.unfuse_adapters\(\)"
    with pytest.raises(ValueError, match=refused):
        pipe.save_pretrained(tmp_path / "fused")
    pipe.unfuse_adapters()
    pipe.unload_adapters()
    pipe.save_pretrained(folder)  # same folder, no adapters now
    assert not (folder / "miva_adapters").exists()
    assert MIVAPipeline.from_pretrained(folder).get_active_adapters() == []


def test_push_to_hub_uploads_the_adapters(tmp_path, monkeypatch):
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    uploaded = {}

    class Repo:
        repo_id = "user/miva-pipe"

    monkeypatch.setattr(pipeline_utils, "create_repo", lambda *a, **k: Repo())
    monkeypatch.setattr(pipeline_utils, "load_or_create_model_card", lambda *a, **k: pipeline_utils.ModelCard(""))

    def upload(self, folder, repo_id, **kwargs):
        uploaded[repo_id] = sorted(str(p.relative_to(folder)) for p in __import__("pathlib").Path(folder).rglob("*"))

    monkeypatch.setattr(MIVAPipeline, "_upload_folder", upload)
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("flow", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4))
    pipe.save_pretrained(os.fspath(tmp_path / "push"), push_to_hub=True, repo_id="user/miva-pipe")
    assert "miva_adapters/flow/miva_adapter.safetensors" in uploaded["user/miva-pipe"]
    assert "miva_adapters/miva_adapters.json" in uploaded["user/miva-pipe"]

"""`DiffusionPipeline.from_pretrained(..., custom_pipeline=<miva/pipelines>, trust_remote_code=True)`, offline."""

import json
import os
import shutil
import sys

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import dynamic_modules_utils

import miva.pipelines.pipeline as shim
from miva.attention_processors.base import MIVAProcessorBase
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

SHIM_FOLDER = os.path.dirname(shim.__file__)


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies custom code into HF_MODULES_CACHE (read once at import): point it at a temporary folder."""
    cache = tmp_path / "modules"
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


def test_shim_exposes_exactly_one_pipeline():
    assert dynamic_modules_utils.find_pipeline_class(shim) is MIVAPipeline


def test_custom_pipeline_from_saved_folder(tmp_path, modules_cache):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.save_pretrained(tmp_path / "tiny")
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path / "tiny", custom_pipeline=SHIM_FOLDER)

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "tiny", custom_pipeline=SHIM_FOLDER, trust_remote_code=True)
    assert type(loaded) is MIVAPipeline
    assert list(modules_cache.rglob("pipeline.py"))  # copied into our temporary cache, not ~/.cache
    assert all(isinstance(p, MIVAProcessorBase) for p in loaded.unet.attn_processors.values())

    image = make_test_image(64, 64)
    options = dict(
        prompt="a waterfall",
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
    )
    for p in (pipe, loaded):
        p.set_progress_bar_config(disable=True)
    a = pipe(image, generator=torch.Generator().manual_seed(0), **options).frames
    b = loaded(image, generator=torch.Generator().manual_seed(0), **options).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_saved_repo_carrying_its_own_shim(tmp_path, modules_cache):
    """The Hub-repo layout of README: pipeline.py next to model_index.json, `_class_name` = [module, class]."""
    folder = tmp_path / "repo"
    MIVAPipeline(**tiny_components(seed=0)).save_pretrained(folder)
    shutil.copyfile(shim.__file__, folder / "pipeline.py")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "MIVAPipeline"
    index["_class_name"] = ["pipeline", "MIVAPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded) is MIVAPipeline

"""Issue 29, the run-config side on Wan: `load_base("tiny-wan")`, the base deciding the backbone, and `miva infer`
on a Wan config (offline) against a direct `MIVAWanPipeline` call; UNet-only keys refused naming the key."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from no_hub import block_hub
from PIL import Image
from wan_helpers import randomize

from miva import load_base
from miva.attention_processors import get_miva_adapter_modules
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.tiny import tiny_wan_components
from miva.base_registry import base_backbone
from miva.cli import main
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline

ROOT = Path(__file__).resolve().parents[3]
INFER = str(ROOT / "examples" / "configs" / "infer_wan_tiny.yaml")


def test_tiny_wan_is_the_tiny_components_and_a_saved_folder_loads_as_wan(tmp_path):
    pipe = load_base("tiny-wan")
    assert type(pipe) is MIVAWanPipeline
    reference = tiny_wan_components(seed=0)
    for name in ("transformer", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, name).state_dict(), reference[name].state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    pipe.save_pretrained(tmp_path / "base")
    assert base_backbone(str(tmp_path / "base")) == "wan2.1-dit"
    assert base_backbone("tiny") == base_backbone("some/hub-id") == "animatediff-unet"
    assert type(load_base(str(tmp_path / "base"))) is MIVAWanPipeline
    with pytest.raises(ValueError, match=r"motion_adapter='x': the base 'tiny-wan' is a wan2.1-dit \(the Wan2.1 DiT "
                                         r"\(WanTransformer3DModel\)\), which has no motion adapter; leave it unset"):
        load_base("tiny-wan", "x")


def test_miva_infer_on_a_wan_config_equals_the_pipeline_called_directly(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    trained = load_base("tiny-wan")
    trained.add_adapter("waves", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2",
                                                  ca_mode="implicit", implicit_rank=8, use_motion_lora=False))
    for module in get_miva_adapter_modules(trained.transformer, "waves").values():
        randomize(module, seed=3)
    folder = trained.save_adapter("waves", tmp_path / "waves")
    hub = block_hub(monkeypatch)
    assert main(["infer", "--config", INFER, "--quiet", "--format", "png", "--set", f"output_dir={tmp_path / 'out'}",
                 "--set", f"unet_checkpoint_path={folder}"]) == 0
    assert not hub
    written = np.stack([np.asarray(Image.open(tmp_path / "out" / "waterfall" / f"{k}.png")) for k in range(9)])

    pipe = load_base("tiny-wan")
    pipe.load_adapters(folder, adapter_names="waves")
    with Image.open(ROOT / "examples" / "images" / "waterfall.png") as image:
        frames = pipe(image=image.convert("RGB"), prompt="a waterfall, water flowing", num_frames=9, height=16,
                      width=16, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(42),
                      output_type="np").frames[0]
    expected = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    assert written.shape == (9, 16, 16, 3)
    assert np.array_equal(written, expected)
    pipe.set_adapters(["waves"], weights=[0.0])  # the adapter matters: the stock output differs
    stock = pipe(image=Image.open(ROOT / "examples" / "images" / "waterfall.png").convert("RGB"),
                 prompt="a waterfall, water flowing", num_frames=9, height=16, width=16, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(42), output_type="np").frames[0]
    assert np.abs(stock - frames).max() > 1e-3


@pytest.mark.parametrize(("override", "message"), [
    ("validation_data.use_adain_norm=last", r"validation_data.use_adain_norm='last': not supported on a wan2.1-dit "
                                            r"base \(MIVAWanPipeline takes no use_adain_norm\); remove the key"),
    ("noise_scheduler_kwargs={beta_start: 0.001}", r"noise_scheduler_kwargs: DDIM arguments, but the base 'tiny-wan' "
                                                   r"is a wan2.1-dit, which samples with its own flow-matching"),
    ("motion_module_path=guoyww/x", r"motion_module_path='guoyww/x': the base 'tiny-wan' is a wan2.1-dit"),
    ("unet_additional_kwargs.q_downsample=true", r"unet_additional_kwargs: q_downsample=True is not supported on "
                                                 r"Wan \(spatiotemporal Q"),
])
def test_unet_only_keys_refused_on_wan(override, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["infer", "--config", INFER, "--quiet", "--set", f"output_dir={tmp_path}", "--set", override]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("miva infer: error: ") and re.search(message, first), first

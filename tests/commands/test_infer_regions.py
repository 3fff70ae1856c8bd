"""Issue 30 item 4: `miva infer` hands the masks and schedules of a config (and of `--mask` / `--schedule`) to the
pipeline as `adapter_masks` / `adapter_schedules`: mask images read (alpha or brightness), fitted to the video like
the input image, one-line errors for unreadable files. The pipeline call is recorded here (the arguments it gets);
what the pipeline does with them is tested in test_infer_regions_pipeline.py."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from miva.cli import main
from miva.commands.regions import fit_mask, load_mask, mask_array
from miva.config import ConfigError, load_config
from miva.pipelines import MIVAPipeline

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ROOT / "examples" / "configs" / "infer_world_regions.yaml"
REGION_ARGS = ("adapter_masks", "adapter_schedules")


def test_mask_array_reads_alpha_when_transparent_else_brightness():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: only the alpha says where the painted region is
    rgba[1:3, 2:5, 3] = 255
    rgba[0, 0, 3] = 51
    expected = np.zeros((4, 6), np.float32)
    expected[1:3, 2:5], expected[0, 0] = 1.0, 0.2
    np.testing.assert_allclose(mask_array(Image.fromarray(rgba, "RGBA")), expected, atol=1e-6)
    grey = np.array([[0, 255, 102]], np.uint8)
    np.testing.assert_allclose(mask_array(Image.fromarray(grey, "L")), [[0.0, 1.0, 0.4]], atol=1e-6)
    opaque = np.dstack([grey, grey, grey, np.full_like(grey, 255)])  # RGBA without transparency: its brightness
    np.testing.assert_allclose(mask_array(Image.fromarray(opaque, "RGBA")), [[0.0, 1.0, 0.4]], atol=1e-6)


def test_fit_mask_crops_like_the_input_image():
    """A 64x128 mask on a 64x64 video: scale 1, the middle 64 columns (as the pipeline crops a 64x128 image)."""
    mask = np.zeros((64, 128), np.float32)
    mask[:, :40] = 1.0  # the left 40 columns; the crop keeps columns 32..95
    expected = mask[:, 32:96]
    np.testing.assert_allclose(fit_mask(mask, 64, 64), expected, atol=1e-5)
    assert fit_mask(np.ones((16, 8), np.float32), 24, 40).shape == (24, 40)
    small = np.zeros((8, 8), np.float32)
    small[:, :4] = 1.0
    half = fit_mask(small, 64, 64)  # 8x8 -> 64x64: the left half, a soft edge in the middle
    assert half[:, :24].min() == 1.0 and half[:, 40:].max() == 0.0


def test_load_mask_errors_name_the_key(tmp_path):
    where = "validation_data.adapter_masks.right"
    with pytest.raises(ConfigError) as error:
        load_mask(str(tmp_path / "none.png"), 64, 64, where)
    assert str(error.value) == (f"{where}: mask image {str(tmp_path / 'none.png')!r} not found (paths are relative "
                                "to the working folder)")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ConfigError) as error:
        load_mask(str(tmp_path / "notes.png"), 64, 64, where)
    assert str(error.value) == (f"{where}: {str(tmp_path / 'notes.png')!r} is not an image file "
                                "(UnidentifiedImageError); use a PNG, white where the adapter acts")


def test_example_mask_is_the_left_half(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(str(REGIONS))
    v = config.validation_data
    assert v.adapter_schedules == {"right": [1, 1, 1, 1, 1, 1, 0.5, 0]}
    mask = load_mask(v.adapter_masks["right"], v.height, v.width, "x")
    expected = np.zeros((64, 64), np.float32)
    expected[:, :32] = 1.0
    np.testing.assert_array_equal(mask, expected)
    assert (ROOT / "examples" / "masks" / "left_half.png").stat().st_size < 200  # keep binary files tiny


@pytest.fixture
def recorded(monkeypatch):
    """Every `MIVAPipeline` call's region arguments; they are taken out before the real call, so this works
    before the pipeline has them."""
    calls = []
    real = MIVAPipeline.__call__

    def call(self, *args, **kwargs):
        calls.append({k: kwargs.pop(k) for k in REGION_ARGS if k in kwargs})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MIVAPipeline, "__call__", call)
    return calls


def _two_image_config(tmp_path) -> Path:
    Image.fromarray(np.full((8, 8), 255, np.uint8), "L").save(tmp_path / "all.png")
    half = np.zeros((8, 8), np.uint8)
    half[4:] = 255
    Image.fromarray(half, "L").save(tmp_path / "bottom.png")
    data = {
        "output_dir": str(tmp_path / "out"),
        "adapter_names": ["water", "pan"],
        "validation_data": {
            "image_path": str(tmp_path / "images"), "prompt_path": ["lake", "sky"], "prompts": "x",
            "video_length": 4, "width": 64, "height": 32, "num_inference_steps": 1, "guidance_scale": 1,
            "adapter_masks": {"water": str(tmp_path / "all.png")},
            "image_masks": {"sky": {"water": None, "pan": str(tmp_path / "bottom.png")}},
        },
    }
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "regions.yaml"


def test_infer_passes_each_image_its_masks_and_the_schedules(tmp_path, recorded):
    config = _two_image_config(tmp_path)
    assert main(["infer", "--config", str(config), "--tiny", "--quiet", "--schedule", "pan=1,0.5,0.25,0"]) == 0
    assert [sorted(call) for call in recorded] == [list(REGION_ARGS), list(REGION_ARGS)]
    lake, sky = recorded
    assert set(lake["adapter_masks"]) == {"water"} and set(sky["adapter_masks"]) == {"pan"}
    np.testing.assert_array_equal(lake["adapter_masks"]["water"], np.ones((32, 64), np.float32))
    bottom = sky["adapter_masks"]["pan"]  # 8x8 -> cover 64x64 -> middle 32 rows: the boundary is in the middle
    assert bottom.shape == (32, 64) and bottom.dtype == np.float32
    assert bottom[:12].max() == 0.0 and bottom[20:].min() == 1.0 and 0.4 < bottom[15, 0] < 0.6
    assert lake["adapter_schedules"] == sky["adapter_schedules"] == {"pan": [1.0, 0.5, 0.25, 0.0]}


def test_infer_without_regions_adds_no_argument(tmp_path, recorded, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["infer", "--config", str(ROOT / "examples/configs/infer_single.yaml"), "--tiny", "--quiet",
            "--set", f"output_dir={tmp_path}", "--set", "validation_data.CA_Map_visualization_resolution=null"]
    assert main(argv) == 0
    assert recorded == [{}]


@pytest.mark.parametrize(("flags", "start"), [
    (["--mask", "water=nowhere.png"], "miva infer: error: validation_data.adapter_masks.water: mask image "
                                      "'nowhere.png' not found"),
    (["--mask", "wter=nowhere.png"], "miva infer: error: validation_data.adapter_masks.wter: no adapter named 'wter'"),
    (["--schedule", "pan=1,1"], "miva infer: error: validation_data.adapter_schedules.pan: 2 weights for "
                                "video_length 4; give one weight per frame"),
    (["--schedule", "pan"], "miva infer: error: --schedule 'pan': expected NAME=v1,v2,..."),
])
def test_bad_flags_are_one_error_line(tmp_path, flags, start, capsys, monkeypatch):
    config = _two_image_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["infer", "--config", str(config), "--tiny", "--quiet", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("miva ")]
    assert len(errors) == 1 and errors[0].startswith(start), errors

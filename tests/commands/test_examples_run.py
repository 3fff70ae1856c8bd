"""Items 8 and 9 of issue 11: the example configs find the images they name, `miva infer` shows progress bars over
videos and denoising steps (`--quiet` turns them off), and `miva convert --tiny` on an example says what it needs.
Issue 28 item 6: the MotionWorld example runs offline on a fresh clone, no Hub call."""

import os
from pathlib import Path

import numpy as np
import pytest
from no_hub import block_hub
from PIL import Image

from miva.cli import main
from miva.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
INFER = str(ROOT / "examples" / "configs" / "infer_single.yaml")
WORLD = str(ROOT / "examples" / "configs" / "infer_world.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_images_ship_with_the_examples(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name repo-relative paths, as the docs run them
    items = load_config(str(path)).inputs(must_exist=True)
    assert items and all(os.path.isfile(item.image) for item in items)


def test_infer_progress_bars_and_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["infer", "--config", INFER, "--tiny", "--set", f"output_dir={tmp_path}",
            "--set", "validation_data.CA_Map_visualization_resolution=null"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "videos: 100%" in err and "1/1" in err  # the bar over videos
    assert "0/2" in err  # diffusers' bar over the 2 denoising steps (drawn when it opens)
    assert main([*argv, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "videos" not in err and "0/2" not in err


def test_convert_tiny_on_an_example_names_the_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["convert", "--config", INFER, "--tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("miva convert: error: ") and "checkpoints/waterfall/adapter" in err[0]


def test_world_example_runs_offline_and_its_adapter_moves_right(tmp_path, monkeypatch):
    from miva.world.metrics import estimate_motion

    monkeypatch.chdir(ROOT)
    hub = block_hub(monkeypatch)  # "miva-world" must never reach the Hub (it used to retry for ~35 s, then fail)
    assert main(["infer", "--config", WORLD, "--quiet", "--set", f"output_dir={tmp_path}"]) == 0
    assert not hub
    with Image.open(tmp_path / "motionworld.gif") as gif:
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
    video = np.stack(frames)
    assert video.shape == (8, 64, 64, 3)
    drift = estimate_motion(video).summary  # the shipped "right" adapter: about +1.9 px/frame along x here
    assert drift.vx > 1.0 and abs(drift.vy) < 0.5, drift

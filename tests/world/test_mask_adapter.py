"""MotionWorld's mask-branch adapter (miva.world.mask_adapter): the regional training data and its masks, a tiny
training on the shipped UNet world base, the evaluation's keys and its Dice, the Dice against hand-written cases,
and the one-line errors.

References are written out here: the moving shape is frame 0 shifted by the motion's 2 px per frame (the static
background equals frame 0), the Dice values are counted by hand."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from miva.world import load_pipeline, make_scene
from miva.world.mask_adapter import evaluate_mask_adapter, mask_dice, region_motions, train_world_mask_adapter
from miva.world.regions import render_regional_clip

FRAMES = 8  # the UNet world recipe's


def _png_frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mask_adapter")
    result = train_world_mask_adapter("right", out, num_clips=2, steps=2, batch_size=1, log=lambda message: None)
    return out, result


def test_training_data_pairs_each_clip_with_its_moving_regions_mask(trained):
    out, result = trained
    config = result["config"]
    assert config["video_root"] == str(out / "data" / "clips")
    assert config["mask_root"] == str(out / "data" / "masks" / "shape")
    assert config["adapter"]["use_mask_branch"] is True and config["adapter"]["use_i2v"] is True
    assert sorted(p.name for p in (out / "data" / "masks").iterdir()) == ["background", "shape"]
    for i in range(2):
        clip = _png_frames(out / "data" / "clips" / f"clip_{i:03d}")
        mask = _png_frames(out / "data" / "masks" / "shape" / f"clip_{i:03d}")
        background = _png_frames(out / "data" / "masks" / "background" / f"clip_{i:03d}")
        assert clip.shape == (FRAMES, 64, 64, 3) and mask.shape == (FRAMES, 64, 64) and mask.dtype == np.uint8
        assert (mask.astype(int) + background == 255).all() and {0, 255} <= set(np.unique(mask))
        for t in range(1, FRAMES):
            s = 2 * t  # "right" at 64 px: 2 px per frame; the mask and the shape move, the rest stays
            assert (mask[t, :, s:] == mask[0, :, :-s]).all()  # (columns < s: the part outside frame 0 entering)
            inside = mask[t] == 255
            inside[:, :s] = False  # the columns that entered the frame: no frame-0 pixel to compare with
            assert inside.sum() > 20 and (clip[t][inside] == np.roll(clip[0], s, axis=1)[inside]).all()
            outside = (mask[t] == 0) & (mask[0] == 0)
            assert (clip[t][outside] == clip[0][outside]).all()


def test_two_steps_train_a_mask_branch_that_loads_into_the_world_pipeline(trained):
    out, result = trained
    adapter = result["adapter"]
    assert adapter == out / "adapter" and result["seconds"] > 0
    assert json.loads((adapter / "adapter_config.json").read_text())["use_mask_branch"] is True
    weights = load_file(adapter / "miva_adapter.safetensors")
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    pipe = load_pipeline(base="unet")
    frozen_q = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    # created as a copy of the frozen to_q, moved by the two steps
    assert weights[f"{layer}.mask_to_q.weight"].shape == frozen_q.shape
    assert not torch.equal(weights[f"{layer}.mask_to_q.weight"], frozen_q)
    assert pipe.load_adapters([str(adapter)], adapter_names=["m"]) == ["m"]
    assert pipe.get_active_adapters() == ["m"]


def test_evaluation_on_one_scene_has_the_documented_keys(trained):
    _, result = trained
    pipe = load_pipeline(base="unet")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters([str(result["adapter"])], adapter_names=["m"])
    calls = []

    class Recording:  # the pipeline, its calls and outputs kept
        unet, vae = pipe.unet, pipe.vae

        def __call__(self, **kwargs):
            calls.append((kwargs, pipe(**kwargs)))
            return calls[-1][1]

    scores = evaluate_mask_adapter(Recording(), "m", "right", scenes=1, first_scene=3, num_inference_steps=2)
    truth = render_regional_clip(make_scene("heldout", 3), "shape", ("right", "static"), FRAMES, 64)
    ((kwargs, output),) = calls
    assert (np.asarray(kwargs["image"]) == truth.frames[0]).all() and kwargs["prompt"] == truth.prompt
    branch = kwargs["mask_branch"]
    assert list(branch.masks) == ["m"] and (branch.masks["m"] == truth.masks[0, 0]).all() and branch.seed == 3
    predicted = output.masks["m"][0].numpy()[1:] > 0.5  # Dice counted here, frames 1..
    inside = truth.masks[0, 1:] > 0.5
    expected = 2 * (predicted & inside).sum() / (predicted.sum() + inside.sum())
    assert set(scores["summary"]) == {"videos", "dice", "still_dice", "inside_direction_error",
                                      "inside_class_accuracy", "inside_speed", "outside_speed"}
    assert scores["summary"]["videos"] == 1 and 0.0 <= scores["summary"]["dice"] <= 1.0
    (row,) = scores["rows"]
    assert set(row) == {"scene", "dice", "still_dice", "regions", "seconds"} and row["scene"] == 3
    held = truth.masks[0, :1].repeat(len(truth.masks[0]) - 1, 0) > 0.5  # frame 0's mask held over frames 1..
    assert row["still_dice"] == pytest.approx(2 * (held & inside).sum() / (held.sum() + inside.sum()), abs=1e-6)
    assert row["still_dice"] < 1.0
    assert row["dice"] == scores["summary"]["dice"] == pytest.approx(expected, abs=1e-6)
    assert set(row["regions"]) == {"shape", "background"}
    assert scores["summary"]["outside_speed"] == row["regions"]["background"]["speed"]
    assert scores["sampling"]["num_inference_steps"] == 2 and scores["sampling"]["use_adain_norm"] == "last"
    assert (scores["layout"], scores["region"], scores["motion"], scores["reference"]) == ("shape", "shape", "right",
                                                                                           False)


def test_the_reference_scores_a_perfect_dice_and_no_drift_outside():
    scores = evaluate_mask_adapter(None, "m", "right", scenes=2, reference=True)["summary"]
    assert scores["dice"] == 1.0 and scores["inside_class_accuracy"] == 1.0
    assert scores["inside_direction_error"] < 10 and scores["outside_speed"] < 0.1
    halves = evaluate_mask_adapter(None, "m", "down", layout="halves", region="right", scenes=1, reference=True)
    assert halves["summary"]["still_dice"] == 1.0  # a half is a fixed region: holding its mask still is exact
    assert halves["summary"]["dice"] == 1.0 and halves["regions"]["right"]["class_accuracy"] == 1.0


def test_dice_against_hand_counted_cases():
    truth = np.zeros((3, 4, 4), dtype=np.float32)
    truth[1:, 0, :3] = 1.0  # 3 pixels in each of frames 1 and 2: 6 in all
    assert mask_dice(truth, truth) == 1.0
    disjoint = np.zeros_like(truth)
    disjoint[1:, 3, :] = 1.0
    assert mask_dice(disjoint, truth) == 0.0
    overlap = np.zeros_like(truth)
    overlap[1:, 0, 1:] = 0.9  # 3 pixels a frame, 2 of them in the truth: 2 * 4 / (6 + 6)
    assert mask_dice(overlap, truth) == pytest.approx(2 / 3, abs=1e-7)
    overlap[1:, 0, 3] = 0.5  # 0.5 is not inside (binarised > 0.5): 2 * 4 / (4 + 6)
    assert mask_dice(overlap, truth) == pytest.approx(0.8, abs=1e-7)
    frame0 = truth.copy()
    frame0[0] = 1.0  # frame 0 is the given mask: not scored
    assert mask_dice(frame0, truth) == 1.0
    assert mask_dice(np.zeros_like(truth), np.zeros_like(truth)) == 1.0  # two empty masks, as the trainer logs
    with pytest.raises(ValueError, match=r"^predicted and truth must be mask videos \(F, H, W\) of one shape, got "
                                         r"\(3, 4, 4\) and \(3, 4, 5\)$"):
        mask_dice(truth, np.zeros((3, 4, 5)))


def test_bad_layout_region_or_world_are_one_line_errors(tmp_path):
    assert region_motions("shape", "background", "down") == ("static", "down")
    assert region_motions("halves", "left", "right") == ("right", "static")
    cases = [(dict(layout="thirds"), "layout='thirds' must be one of halves, shape"),
             (dict(region="left"), "region='left' is not a region of layout 'shape'; choose one of shape, background"),
             (dict(layout="halves"), "region='shape' is not a region of layout 'halves'; choose one of left, right"),
             (dict(world="wan"), "world='wan': the mask branch exists on the unet world only")]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            train_world_mask_adapter("right", tmp_path / "out", steps=1, **kwargs)
        assert str(error.value) == message
        if "world" not in kwargs:
            with pytest.raises(ValueError) as error:
                evaluate_mask_adapter(None, "m", "right", reference=True, scenes=1, **kwargs)
            assert str(error.value) == message
    assert not (tmp_path / "out").exists()  # refused before anything is written

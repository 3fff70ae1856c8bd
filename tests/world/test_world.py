"""MotionWorld: analytic ground truth, the motion metric, the pretraining recipe, the shipped model and the demo.

References here are independent of the renderer and of the metric: shifts by `np.roll`/slicing, turns by
`np.rot90`, hand-made videos with a known motion."""

import json
import math

import numpy as np
import pytest
import torch

from miva.world import BASE_PATH, get_motion, make_scene, render_clip, shipped_adapters
from miva.world.metrics import (
    direction_spread,
    drift_along,
    estimate_motion,
    evaluate_video,
    motion_class,
    psnr,
    ssim,
)
from miva.world.motions import NAMED_MOTIONS, Motion, sample_generic_motion
from miva.world.scenes import scene_seed

SHIPPED = (BASE_PATH / "model_index.json").is_file()
needs_weights = pytest.mark.skipif(not SHIPPED, reason="the MotionWorld weights are not built in this checkout")


# ------------------------------------------------------------------------------------------------ scenes, motions
def test_scenes_are_deterministic_and_splits_disjoint():
    a, b = render_clip(make_scene("heldout", 4), Motion(), 1), render_clip(make_scene("heldout", 4), Motion(), 1)
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    train = {scene_seed("train", i) for i in range(500)}
    heldout = {scene_seed("heldout", i) for i in range(500)}
    assert not train & heldout
    assert not np.array_equal(a, render_clip(make_scene("heldout", 5), Motion(), 1))
    prompt = make_scene("train", 0).prompt
    assert "background" in prompt and not any(word in prompt for word in ("right", "zoom", "rotat", "mov"))


@pytest.mark.parametrize("name,dx,dy", [("right", 2, 0), ("down", 0, 2), ("up_left_slow", -1, -1), ("left_fast", -3, 0)])
def test_translation_ground_truth_is_an_exact_pixel_shift(name, dx, dy):
    motion = get_motion(name)
    if "_" in name and "left_fast" not in name:  # diagonal at speed 1: one pixel per axis needs speed sqrt(2)
        motion = Motion(vx=float(dx), vy=float(dy))
    video = render_clip(make_scene("train", 3), motion, 4).astype(int)
    for t in range(1, 4):
        sx, sy = dx * t, dy * t
        # frame t at (y, x) shows frame 0 at (y - sy, x - sx), wherever that is inside the frame
        moved = video[t][max(sy, 0) : 64 + min(sy, 0), max(sx, 0) : 64 + min(sx, 0)]
        source = video[0][max(-sy, 0) : 64 + min(-sy, 0), max(-sx, 0) : 64 + min(-sx, 0)]
        assert np.abs(moved - source).max() <= 1


def test_rotation_ground_truth_matches_rot90():
    video = render_clip(make_scene("train", 5), Motion(degrees=90.0), 2)
    # clockwise on screen (y down) by 90 degrees == numpy's rot90 with k=-1 on an (H, W) array
    assert np.abs(video[1].astype(int) - np.rot90(video[0], k=-1).astype(int)).max() <= 1


def test_motion_sums_and_catalogue():
    assert get_motion("right+down") == Motion(vx=2.0, vy=2.0)
    assert get_motion("right+zoom_in").log_zoom == pytest.approx(math.log(1.04))
    assert len([n for n in NAMED_MOTIONS if n.split("_")[-1] not in ("in", "out", "cw", "ccw", "static")]) == 24
    with pytest.raises(ValueError, match="unknown motion 'sideways'"):
        get_motion("right+sideways")
    with pytest.raises(ValueError, match="Motion.vx"):
        Motion(vx=float("nan"))
    rng = np.random.default_rng(0)
    directions = [m.direction for m in (sample_generic_motion(rng) for _ in range(400)) if m.speed > 0.5]
    assert direction_spread(directions)["resultant"] < 0.15  # the pretraining mix has no preferred direction


# ------------------------------------------------------------------------------------------------ the metric
@pytest.mark.parametrize("name", ["right", "down_left_fast", "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw"])
def test_ground_truth_videos_score_perfectly(name):
    scene, motion = make_scene("heldout", 7), get_motion(name)
    row = evaluate_video(render_clip(scene, motion, 8), scene, motion)
    assert row["class_correct"] and row["class"] == motion_class(motion)
    assert row["psnr"] == math.inf and row["ssim"] == pytest.approx(1.0)
    assert row["speed_error"] < 0.05 and row["zoom_error"] < 0.002 and row["turn_error"] < 0.1
    if row["direction_error"] is not None:
        assert row["direction_error"] < 1.0
        assert row["drift_along_target"] == pytest.approx(motion.speed, abs=0.05)
    else:
        assert row["drift_along_target"] is None


def test_static_video_is_no_motion_and_scores_against_a_moving_target():
    scene = make_scene("heldout", 1)
    still = np.repeat(render_clip(scene, Motion(), 1), 8, axis=0)
    row = evaluate_video(still, scene, get_motion("right"))
    assert row["class"] == "static" and not row["class_correct"]
    assert row["speed"] == 0.0 and row["direction_error"] is None  # no drift: no direction to be wrong about
    assert row["psnr"] < 30.0 and row["frame0_psnr"] == math.inf


def test_known_shift_gives_its_direction():
    """A video made by shifting an image with numpy (not by the renderer): 1 px right and 2 px down per frame."""
    image = render_clip(make_scene("train", 9), Motion(), 1, 96)[0]
    video = np.stack([image[16 - 2 * t : 80 - 2 * t, 16 - t : 80 - t] for t in range(6)])
    found = estimate_motion(video).summary
    assert found.vx == pytest.approx(1.0, abs=0.05) and found.vy == pytest.approx(2.0, abs=0.05)
    assert found.direction == pytest.approx(math.degrees(math.atan2(2, 1)), abs=1.0)
    assert motion_class(found) == "down_right"
    # along "right" it moves 1 px/frame, along "up" -2, along a diagonal the projection; no drift target: None
    assert drift_along(found, get_motion("right")) == pytest.approx(1.0, abs=0.05)
    assert drift_along(found, get_motion("up_fast")) == pytest.approx(-2.0, abs=0.05)
    assert drift_along(found, get_motion("down_right")) == pytest.approx(3 / math.sqrt(2), abs=0.07)
    assert drift_along(found, get_motion("zoom_in")) is None


def test_psnr_ssim_reference_values():
    a = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[..., 0] = 10  # MSE = 100 / 3
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 3)))
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, b) < 1.0


# ------------------------------------------------------------------------------------------------ pretraining
def test_pretrain_smoke_resumes_exactly_and_loads_as_a_stock_pipeline(tmp_path):
    from diffusers import AnimateDiffPipeline

    from miva.world.pretrain import PretrainRecipe, pretrain

    small = dict(vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=1, frames=4, warmup=1, checkpoint_every=1)
    straight = pretrain(tmp_path / "a", PretrainRecipe(**small), log=lambda *_: None)

    def interrupt_at_first_unet_checkpoint(line):
        if line == "checkpoint unet 1":
            raise KeyboardInterrupt

    work = tmp_path / "b.work"
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "b", PretrainRecipe(**small), work=work, log=interrupt_at_first_unet_checkpoint)
    assert (work / "unet.pt").is_file() and not (tmp_path / "b").exists()
    resumed = pretrain(tmp_path / "b", PretrainRecipe(**small), work=work, log=lambda *_: None)
    assert not work.exists()  # a finished run removes its checkpoints
    pipe_a = AnimateDiffPipeline.from_pretrained(straight)
    pipe_b = AnimateDiffPipeline.from_pretrained(resumed)
    for name in ("unet", "vae"):
        sa, sb = getattr(pipe_a, name).state_dict(), getattr(pipe_b, name).state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)
    record = json.loads((straight / "pretrain_log.json").read_text())
    assert record["recipe"]["unet_steps"] == 2 and "vae_scaling_factor" in record
    from huggingface_hub import ModelCard

    card = ModelCard.load(straight / "README.md")
    assert card.data.pipeline_tag == "image-to-video" and "unet_steps" not in card.text
    assert "2 steps, batch 1 clips of 4 frames" in card.text


def test_pretrain_init_from_continues_the_unet_and_keeps_the_autoencoder(tmp_path):
    from diffusers import AnimateDiffPipeline
    from huggingface_hub import ModelCard

    from miva.world.pretrain import PretrainRecipe, pretrain

    small = dict(vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=1, frames=4, warmup=1, checkpoint_every=1)
    first = pretrain(tmp_path / "first", PretrainRecipe(**small), log=lambda *_: None)
    lines = []
    second = pretrain(
        tmp_path / "second",
        PretrainRecipe(**{**small, "unet_steps": 3, "seed": 1, "unet_lr": 1e-3, "init_from": str(first)}),
        log=lines.append,
    )
    assert not any(line.startswith("vae step") for line in lines)  # the autoencoder is not trained again
    assert sum(line.startswith("unet step") for line in lines) == 1 and "unet step 3/3" in lines[-3]
    pipe_a, pipe_b = AnimateDiffPipeline.from_pretrained(first), AnimateDiffPipeline.from_pretrained(second)
    for key, value in pipe_a.vae.state_dict().items():
        torch.testing.assert_close(pipe_b.vae.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert pipe_b.vae.config.scaling_factor == pipe_a.vae.config.scaling_factor
    changed = [k for k, v in pipe_a.unet.state_dict().items() if not torch.equal(pipe_b.unet.state_dict()[k], v)]
    assert changed, "the UNet did not train in the second stage"
    first_record = json.loads((first / "pretrain_log.json").read_text())
    record = json.loads((second / "pretrain_log.json").read_text())
    assert record["stages"] == [first_record] and record["vae_seconds"] == 0.0
    assert record["vae_scaling_factor"] == first_record["vae_scaling_factor"]
    assert record["command"].startswith("python -m miva.world.pretrain --out <folder> --init-from <earlier stage>")
    assert "--seed 1 --unet-steps 3 --unet-lr 0.001" in record["command"]
    card = ModelCard.load(second / "README.md").text
    assert "Earlier stages" in card and first_record["command"] in card and "autoencoder 2 steps" in card


# ------------------------------------------------------------------------------------------------ shipped model
@needs_weights
def test_shipped_weights_are_small_fp16_and_load_offline():
    from miva.world import load_pipeline

    size = sum(p.stat().st_size for p in BASE_PATH.rglob("*.safetensors"))
    assert size <= 20 * 2**20
    pipe = load_pipeline()
    assert pipe.unet.dtype == torch.float32 and pipe.vae_scale_factor == 4
    assert (BASE_PATH / "README.md").is_file()
    assert set(shipped_adapters()) >= {"right"}


@needs_weights
def test_shipped_adapters_load_act_and_score_on_unseen_scenes():
    """Every shipped adapter loads offline, keeps frame 0 (the given image) and changes frames 1..F-1; the
    evaluation of a held-out scene gives finite scores. (How well each one makes its motion is measured, not
    asserted: benchmarks/motion_world/README.md.)"""
    from miva.world import load_pipeline
    from miva.world.evaluate import animate_scene, evaluate_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = animate_scene(pipe, 3, num_frames=4, num_inference_steps=4)
    for name, folder in shipped_adapters().items():
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model"] == "miva-world"  # no machine path in shipped metadata
        pipe.load_adapters([str(folder)], adapter_names=[name])
        video = animate_scene(pipe, 3, num_frames=4, num_inference_steps=4)
        np.testing.assert_array_equal(video[0], base[0])
        assert np.abs(video[1:].astype(int) - base[1:].astype(int)).mean() > 0.5
        pipe.delete_adapters(name)
    pipe.load_adapters([str(shipped_adapters()["right"])], adapter_names=["right"])
    result = evaluate_pipeline(pipe, "right", scenes=1, num_frames=4, num_inference_steps=4)
    assert math.isfinite(result["psnr"]) and 0 <= result["direction_error"] <= 180


@needs_weights
def test_reference_videos_bracket_the_metric():
    """The target's ground truth through the shipped autoencoder moves exactly as the target, close to the truth;
    frame 0 repeated is static, with no direction error and a lower PSNR."""
    from miva.world import load_pipeline
    from miva.world.evaluate import HELDOUT_SCENES, VALIDATION_SCENE, evaluate_pipeline, reference_video

    pipe = load_pipeline()
    truth = evaluate_pipeline(pipe, "right", scenes=2, reference="ground_truth")
    assert truth["class_accuracy"] == 1.0 and truth["direction_error"] < 1.0
    assert truth["drift_along_target"] == pytest.approx(2.0, abs=0.05)
    assert 22.0 < truth["psnr"] < 35.0  # the autoencoder's loss, not a perfect copy
    still = evaluate_pipeline(pipe, "right", scenes=2, reference="still", num_frames=6)
    assert still["class_accuracy"] == 0.0 and still["static_fraction"] == 1.0
    assert still["direction_error"] is None and still["psnr"] < truth["psnr"] - 5.0
    video = reference_video(pipe, 0, get_motion("zoom_in"), "still", num_frames=3)
    assert video.shape == (3, 64, 64, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video[0], video[2])
    with pytest.raises(ValueError, match="reference must be one of ground_truth, still; got 'noise'"):
        evaluate_pipeline(pipe, "right", scenes=1, reference="noise")
    # the validation scenes follow the reported ones, and are scored as themselves
    validation = evaluate_pipeline(pipe, "right", scenes=1, reference="ground_truth", first_scene=VALIDATION_SCENE)
    [row] = validation["rows"]
    expected = evaluate_video(reference_video(pipe, VALIDATION_SCENE, get_motion("right"), "ground_truth"),
                              make_scene("heldout", VALIDATION_SCENE), get_motion("right"))
    assert row["scene"] == VALIDATION_SCENE == HELDOUT_SCENES and row["psnr"] == expected["psnr"]
    assert row["psnr"] not in [r["psnr"] for r in truth["rows"]]


@needs_weights
def test_world_demo_writes_videos_and_measured_motion(tmp_path):
    import PIL.Image

    from miva.demo import run_demo
    from miva.world.samples import LABEL_HEIGHT

    lines = []
    paths = run_demo(str(tmp_path), adapter="right", frames=6, steps=5, log=lines.append, base="unet")
    with PIL.Image.open(paths["side_by_side"]) as gif:
        assert gif.n_frames == 6 and gif.size == (2 * (3 * 64 + 2 * 2), 128 + LABEL_HEIGHT)  # captions on top
    motion = json.loads(open(paths["motion"]).read())
    assert set(motion) >= {"base", "right", "target", "prompt"}
    assert any("with 'right'" in line for line in lines)
    with pytest.raises(ValueError, match="not a shipped MotionWorld adapter"):
        run_demo(str(tmp_path), adapter="sideways", base="unet")


def test_world_id_names_the_shipped_base_in_configs():
    from miva.world import WORLD_ID, resolve_model_path

    assert resolve_model_path(WORLD_ID) == str(BASE_PATH)
    assert resolve_model_path(f"{WORLD_ID}/motion_adapter") == str(BASE_PATH / "motion_adapter")
    assert resolve_model_path("user/miva-worldly") == "user/miva-worldly"  # only the exact id or its subfolders
    assert resolve_model_path(None) is None


def test_side_by_side_captions_each_column_above_the_unchanged_videos():
    """Issue 27 item 7: the columns of side_by_side.gif / sample.gif are labelled (truth | base | adapter)."""
    from miva.world.samples import LABEL_HEIGHT, comparison_labels, side_by_side

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8) for _ in range(3)]
    plain = side_by_side(videos)
    labelled = side_by_side(videos, labels=comparison_labels("right"))
    assert plain.shape == (3, 128, 392, 3) and labelled.shape == (3, 128 + LABEL_HEIGHT, 392, 3)
    np.testing.assert_array_equal(labelled[:, LABEL_HEIGHT:], plain)  # the videos themselves are untouched
    strip = labelled[:, :LABEL_HEIGHT]
    assert (strip == strip[:1]).all()  # the same captions on every frame
    for left in (0, 132, 264):  # each 128-pixel column (gaps of 4) has dark caption pixels on white
        column = strip[0, :, left:left + 128]
        assert (column.min(axis=-1) < 100).sum() > 20 and (column == 255).all(axis=-1).mean() > 0.5
    assert (strip[0, :, 128:132] == 255).all()  # nothing drawn over the gaps
    assert comparison_labels("right") == ("ground truth", "base", "base + right")
    with pytest.raises(ValueError, match=r"^labels: 2 captions for 3 videos; give one per video$"):
        side_by_side(videos, labels=("a", "b"))

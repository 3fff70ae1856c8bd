"""MotionWorld, regional: masks, regional clips, the metric inside a mask, coherent length, the mask folders.

References are written out here and share no code with the renderer or the metric: masks from pixel-centre
geometry, shifted frames by slicing, PSNR orderings from hand-made errors."""

import dataclasses
import math

import numpy as np
import pytest

from miva.world import get_motion, make_scene, render_clip
from miva.world.evaluate import summarise
from miva.world.metrics import coherent_length, estimate_motion, evaluate_video, psnr, score_video
from miva.world.motions import Motion
from miva.world.regions import evaluate_regions, render_regional_clip
from miva.world.scenes import COLOURS, Scene, _Shape


def test_halves_masks_are_fixed_columns_and_each_half_shifts_by_its_own_motion():
    scene = make_scene("heldout", 2)
    clip = render_regional_clip(scene, "halves", ("right", "down"), num_frames=4, size=8)
    left = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=np.float32)
    assert clip.names == ("left", "right") and clip.masks.shape == (2, 4, 8, 8) and clip.masks.dtype == np.float32
    assert (clip.masks[0] == np.broadcast_to(left, (4, 8, 8))).all()
    assert (clip.masks[1] == 1.0 - clip.masks[0]).all() and (clip.mask("right") == clip.masks[1]).all()

    # at 64 px "right" and "down" move 2 px per frame: the left half is frame 0 shifted right, the right half down
    clip = render_regional_clip(scene, "halves", ("right", "down"), num_frames=4, size=64)
    frame0 = render_clip(scene, Motion(), 1, 64)[0]
    for t in range(1, 4):
        s = 2 * t
        assert (clip.frames[t, :, s:32] == frame0[:, : 32 - s]).all()
        assert (clip.frames[t, s:, 32:] == frame0[: 64 - s, 32:]).all()


def test_shape_mask_is_the_shapes_coverage_and_moves_with_it():
    disc = _Shape("disc", "red", (3.0, -2.0), 8.0, 0.0, 8.0)
    square = _Shape("square", "blue", (20.0, 20.0), 6.0, 0.3, 7.0)
    scene = Scene(seed=0, background_name="grey", waves=(), shapes=(disc, square))
    clip = render_regional_clip(scene, "shape", ("right", "down"), num_frames=4, size=64)
    centres = np.arange(64) + 0.5 - 32.0
    px, py = np.meshgrid(centres, centres, indexing="xy")
    for t in range(4):
        # "right": the disc's centre is (3 + 2t, -2); one pixel of anti-aliasing at 64 px
        expected = np.clip(8.0 - np.hypot(px - 3.0 - 2 * t, py + 2.0) + 0.5, 0.0, 1.0)
        np.testing.assert_allclose(clip.masks[0, t], expected, atol=1e-6)
        np.testing.assert_allclose(clip.masks[1, t], 1.0 - expected, atol=1e-6)
        inside = expected == 1.0
        stripes = np.sin(2.0 * math.pi * (px - 3.0 - 2 * t) / 8.0)
        fill = np.rint(np.asarray(COLOURS["red"], dtype=np.float64) * (0.8 + 0.2 * stripes[..., None]))
        assert inside.sum() > 150 and (clip.frames[t][inside] == fill[inside]).all()
        # far from the disc: the background under "down" (flat grey, no waves) and the square moved down 2t px
        assert (clip.frames[t][np.hypot(px - 3.0 - 2 * t, py + 2.0) > 10][:1] == [127, 127, 127]).all()


def test_a_regional_clip_scores_perfectly_per_region_and_badly_against_swapped_truths():
    for layout, index in (("halves", 0), ("shape", 3)):
        scene = make_scene("heldout", index)
        clip = render_regional_clip(scene, layout, ("right", "down"))
        # each region's truth given to the other (the same masks); for halves also the clip rendered swapped
        swaps = [dataclasses.replace(clip, motions=clip.motions[::-1])]
        if layout == "halves":
            swaps.append(render_regional_clip(scene, layout, ("down", "right")))
            assert (swaps[1].masks == clip.masks).all()
        own = evaluate_regions(clip.frames, clip)
        for name in clip.names:
            assert own[name]["class_correct"] and own[name]["direction_error"] < 3.0, (layout, name, own[name])
            assert own[name]["psnr"] == math.inf and own[name]["coherent_length"] == 8
        for swapped in swaps:
            other = evaluate_regions(clip.frames, swapped)
            for name in clip.names:
                assert not other[name]["class_correct"] and other[name]["direction_error"] > 80.0, (layout, name)
        if layout == "halves":
            assert other["left"]["psnr"] < 20.0 and other["right"]["psnr"] < 20.0


def test_a_mask_of_all_ones_gives_exactly_the_unmasked_scores():
    scene, target = make_scene("heldout", 5), get_motion("down_right")
    truth = render_clip(scene, target, 6)
    noise = np.random.default_rng(0).integers(-25, 26, truth.shape)
    video = np.clip(truth.astype(int) + noise, 0, 255).astype(np.uint8)
    ones = np.ones(truth.shape[:3], dtype=np.float32)
    masked, plain = score_video(video, truth, target, weights=ones), evaluate_video(video, scene, target)
    assert masked.pop("ssim") == pytest.approx(plain.pop("ssim"), abs=1e-6)
    plain.pop("own_coherent_length")  # evaluate_video's own (it needs the scene to render the fitted motion)
    assert masked == plain  # class, direction error, speed, PSNR, coherent length, the fitted motion: exact
    a, b = estimate_motion(video), estimate_motion(video, weights=ones[0])
    assert (a.shifts == b.shifts).all() and (a.residual == b.residual).all()
    assert psnr(video, truth, ones) == psnr(video, truth)
    # a mask that is not all ones changes the scores (the weights are used)
    half = ones.copy()
    half[:, :, 32:] = 0.0
    assert psnr(video, truth, half) != psnr(video, truth)


def test_weighted_psnr_counts_pixels_by_weight():
    a = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 30  # one pixel off by 30 in every channel
    w = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    assert psnr(a, b, w) == pytest.approx(10 * math.log10(255**2 / 900.0))
    assert psnr(a, b, 1.0 - w) == math.inf
    assert psnr(a, b, np.full((1, 2, 2), 0.5)) == pytest.approx(10 * math.log10(255**2 / 225.0))


def test_coherent_length_is_the_first_frame_no_better_than_a_still_one():
    truth = np.stack([np.full((4, 4, 3), 100 + 10 * t, dtype=np.uint8) for t in range(5)])  # the still is 10t off

    def video(errors):
        return np.stack([truth[t].astype(int) + e for t, e in enumerate(errors)]).astype(np.uint8)

    assert coherent_length(video([0, 3, 8, 12, 30]), truth) == 5  # always closer than the still: the whole clip
    assert coherent_length(video([0, 3, 25, 5, 5]), truth) == 2  # 25 off at frame 2, the still 20
    assert coherent_length(video([0, 3, 20, 5, 5]), truth) == 2  # equal to the still's counts as fallen
    assert coherent_length(video([0, 12, 0, 0, 0]), truth) == 1
    assert coherent_length(truth, truth) == 5 and coherent_length(np.repeat(truth[:1], 5, 0), truth) == 1
    # the still defaults to the video's own frame 0; a given still frame replaces it
    assert coherent_length(video([5, 3, 18, 5, 5]), truth) == 2  # its frame 0 is 105: the still is 10t - 5 off
    assert coherent_length(video([5, 3, 18, 5, 5]), truth, still=truth[0]) == 5  # this still is 10t off
    # per region: a region whose pixels are all close stays coherent
    bad = video([0, 3, 25, 5, 5])
    bad[2, :, 2:] = truth[2, :, 2:]
    left, right = np.zeros((4, 4)), np.zeros((4, 4))
    left[:, :2], right[:, 2:] = 1.0, 1.0
    assert coherent_length(bad, truth, weights=left) == 2 and coherent_length(bad, truth, weights=right) == 5
    with pytest.raises(ValueError, match=r"video and truth must both have shape \(frames, height, width, 3\), got "
                                         r"\(5, 4, 4, 3\) and \(4, 4, 4, 3\)"):
        coherent_length(truth, truth[:4])


def test_own_coherent_length_reads_the_scene_against_the_videos_own_motion():
    """A video that keeps the scene while it moves otherwise than the target (what a base alone does) is coherent for
    the whole clip against its own fitted motion, though not against the target's truth."""
    from miva.world.motions import get_motion
    from miva.world.scenes import make_scene, render_clip

    for index in range(2):
        scene = make_scene("heldout", index)
        for name in ("left", "zoom_out", "rotate_ccw"):
            row = evaluate_video(render_clip(scene, get_motion(name), 9, 64), scene, get_motion("right"))
            assert row["own_coherent_length"] == 9, (index, name)
            if name == "left":
                assert row["coherent_length"] == 1


def test_the_summary_reports_coherent_length():
    rows = [{"direction": None, "speed": 0.0, "class_correct": False, "class": "static", "direction_error": None,
             "speed_error": 1.0, "drift_along_target": 0.0, "zoom_error": 0.0, "turn_error": 0.0, "psnr": 15.0,
             "ssim": 0.3, "frame0_psnr": 25.0, "coherent_length": n, "own_coherent_length": n + 1} for n in (1, 4, 8)]
    old = dict(rows[0])
    del old["coherent_length"], old["own_coherent_length"]  # a row scored before the fields existed
    summary = summarise(rows + [old])
    assert summary["coherent_length"] == pytest.approx(13 / 3) and summary["coherent_length_range"] == [1, 8]
    assert summary["own_coherent_length"] == pytest.approx(16 / 3)


def test_bad_layouts_motions_and_weights_name_the_field():
    scene = make_scene("heldout", 0)
    with pytest.raises(ValueError, match=r"^layout='diagonal' must be one of halves, shape$"):
        render_regional_clip(scene, "diagonal", ("right", "down"))
    with pytest.raises(ValueError, match=r"^layout 'halves' needs 2 motions \(left, right\), got 'right'$"):
        render_regional_clip(scene, "halves", "right")
    clip = render_regional_clip(scene, "halves", ("right", "down"), num_frames=2, size=8)
    with pytest.raises(ValueError, match=r"^region 'shape' is not in layout 'halves'; its regions: left, right$"):
        clip.mask("shape")
    with pytest.raises(ValueError, match=r"^weights must have shape \(8, 8\) or \(2, 8, 8\) to match the video, "
                                         r"got \(4, 4\)$"):
        estimate_motion(clip.frames, weights=np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"^weights must be finite and in \[0, 1\], got values in \[0.0, 2.0\]$"):
        estimate_motion(clip.frames, weights=clip.masks[0] * 2)


def test_regional_clips_and_masks_round_trip_through_the_trainers_reader(tmp_path):
    from miva.training.data import read_clip
    from miva.world.data import write_regional_clips

    paths = write_regional_clips(tmp_path / "regional", "shape", ("right", "down"), num_clips=2, num_frames=3,
                                 size=16, first_scene=4)
    root = tmp_path / "regional"
    assert paths == {"clips": root / "clips", "shape": root / "masks" / "shape",
                     "background": root / "masks" / "background"}
    assert sorted(p.name for p in (root / "clips").iterdir()) == ["clip_000", "clip_000.txt", "clip_001",
                                                                  "clip_001.txt"]
    for i in range(2):
        clip = render_regional_clip(make_scene("train", 4 + i), "shape", ("right", "down"), num_frames=3, size=16)
        assert (read_clip(root / "clips" / f"clip_{i:03d}") == clip.frames).all()
        assert (root / "clips" / f"clip_{i:03d}.txt").read_text() == make_scene("train", 4 + i).prompt + "\n"
        for r, name in enumerate(clip.names):
            mask = read_clip(paths[name] / f"clip_{i:03d}")  # grey PNGs read as RGB: every channel the mask
            assert mask.shape == (3, 16, 16, 3)
            assert (mask[..., 0] == np.rint(clip.masks[r] * 255)).all() and (mask[..., 2] == mask[..., 0]).all()
    assert not (tmp_path / "regional.partial").exists()


def test_the_regional_evaluation_animates_each_clips_frame_0_and_scores_each_region():
    """A stand-in pipeline that returns the regional ground truth of the image it is given scores perfectly."""
    from types import SimpleNamespace

    from miva.world.evaluate import evaluate_regional_pipeline

    truths = {}
    for index in (2, 3):
        clip = render_regional_clip(make_scene("heldout", index), "shape", ("left", "up"))
        truths[clip.frames[0].tobytes()] = clip.frames
        # the shape drawn on top changes frame 0 here: the scene's own frame 0 would not be found below
        assert (clip.frames[0] != render_clip(make_scene("heldout", index), Motion(), 1)[0]).any()
    seen = []

    def pipe(image, prompt, generator, output_type, **kwargs):
        frames = truths[np.asarray(image).tobytes()]  # the clip's own frame 0, or a KeyError
        seen.append((prompt, kwargs["num_frames"], output_type))
        return SimpleNamespace(frames=[frames / 255.0])

    result = evaluate_regional_pipeline(pipe, "shape", ("left", "up"), scenes=2, first_scene=2, num_frames=8)
    assert [p for p, _, _ in seen] == [make_scene("heldout", i).prompt for i in (2, 3)] and seen[0][1:] == (8, "np")
    assert [row["scene"] for row in result["rows"]] == [2, 3]
    for name, target in (("shape", "left"), ("background", "up")):
        summary = result["regions"][name]
        assert summary["videos"] == 2 and summary["class_accuracy"] == 1.0 and summary["direction_error"] < 6.0
        assert summary["coherent_length"] == 8 and [r[name]["target_class"] for r in result["rows"]] == [target] * 2

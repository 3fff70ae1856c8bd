"""Few-shot clip data: reading, frame sampling, resize / crop / flip, reproducibility and error messages."""

from __future__ import annotations

import re

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from miva.training.data import ClipDataset, collate_clips, natural_sort_key, read_clip
from miva.training.synthetic import MOTIONS, clip_seed, make_synthetic_clip, write_synthetic_dataset


def _write_frames(folder, frames):
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        iio.imwrite(folder / f"frame_{i}.png", frame)  # unpadded names: natural order must be used
    return folder


def _index_clip(num_frames, height=16, width=16, step=10):
    """Frame i is constant ``i * step``: the pixel value tells which source frame was sampled."""
    return np.stack([np.full((height, width, 3), i * step, dtype=np.uint8) for i in range(num_frames)])


def _to_uint8(pixel_values):
    return ((pixel_values + 1.0) * 127.5).round().to(torch.int64)


def test_synthetic_clip_deterministic_and_moving():
    for motion in MOTIONS:
        clip = make_synthetic_clip(num_frames=6, height=32, width=48, motion=motion, seed=3)
        assert clip.shape == (6, 32, 48, 3) and clip.dtype == np.uint8
        assert np.array_equal(clip, make_synthetic_clip(num_frames=6, height=32, width=48, motion=motion, seed=3))
        assert np.abs(np.diff(clip.astype(np.int16), axis=0)).mean() > 1.0  # it moves
    assert not np.array_equal(make_synthetic_clip(seed=0), make_synthetic_clip(seed=1))
    with pytest.raises(ValueError, match="sideways"):
        make_synthetic_clip(motion="sideways")


@pytest.mark.parametrize("motion,sign", [("right", 1), ("left", -1)])
def test_synthetic_translation_direction(motion, sign):
    clip = make_synthetic_clip(num_frames=2, height=64, width=64, motion=motion, seed=0).astype(np.float64)
    # Content moves 1-2 px per frame (background at half the speed of the shapes) in the given direction.
    errors = {s: np.abs(clip[1][:, 8 + s : 56 + s] - clip[0][:, 8:56]).mean() for s in range(-3, 4)}
    assert min(errors, key=errors.get) in (sign, 2 * sign)


@pytest.mark.parametrize("fmt", ["mp4", "gif", "frames"])
def test_items_shape_range_dtype(tmp_path, fmt):
    paths = write_synthetic_dataset(
        tmp_path, num_clips=2, num_frames=12, height=32, width=48, fmt=fmt, prompt="clouds drifting right"
    )
    assert len(paths) == 2 and all((tmp_path / f"clip_00{i}.txt").is_file() for i in range(2))
    ds = ClipDataset(tmp_path, num_frames=4, sample_frame_rate=2, height=24, width=40, seed=0)
    assert len(ds) == 2 and ds.clips == paths
    batch = collate_clips([ds[0], ds[1]])
    x = batch["pixel_values"]
    assert x.shape == (2, 4, 3, 24, 40) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.1
    assert batch["prompts"] == ["clouds drifting right"] * 2
    assert batch["paths"] == [str(p) for p in paths]


def test_mp4_and_gif_round_trip_close(tmp_path):
    original = make_synthetic_clip(num_frames=12, height=32, width=48, seed=clip_seed(0, 0))
    for fmt, tolerance in [("mp4", 10.0), ("gif", 10.0), ("frames", 0.0)]:
        (path,) = write_synthetic_dataset(tmp_path / fmt, num_clips=1, num_frames=12, height=32, width=48, fmt=fmt)
        frames = read_clip(path)
        assert frames.shape == original.shape and frames.dtype == np.uint8
        assert np.abs(frames.astype(np.float64) - original).mean() <= tolerance, fmt


def test_read_clip_natural_order_gray_and_alpha(tmp_path):
    frames = _index_clip(12)
    folder = _write_frames(tmp_path / "clip", frames)
    assert [p.name for p in sorted(folder.iterdir(), key=natural_sort_key)][:3] == [
        "frame_0.png",
        "frame_1.png",
        "frame_2.png",
    ]
    assert np.array_equal(read_clip(folder)[:, 0, 0, 0], np.arange(12) * 10)
    gray = _write_frames(tmp_path / "gray", frames[..., 0])
    rgba = _write_frames(tmp_path / "rgba", np.concatenate([frames, np.full_like(frames[..., :1], 128)], -1))
    for f in (gray, rgba):
        out = read_clip(f)
        assert out.shape == (12, 16, 16, 3) and np.array_equal(out, frames)


def test_frame_stride_respected(tmp_path):
    _write_frames(tmp_path / "clip", _index_clip(25))
    ds = ClipDataset(
        [tmp_path / "clip"],
        prompt="p",
        num_frames=5,
        sample_frame_rate=3,
        height=16,
        width=16,
        random_flip=False,
        seed=1,
    )
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        values = _to_uint8(ds[0]["pixel_values"])
        assert (values == values[:, :1, :1, :1]).all()  # each frame stays constant
        idx = values[:, 0, 0, 0] // 10
        assert torch.equal(idx, idx[0] + 3 * torch.arange(5))
        assert 0 <= idx[0] <= 25 - 1 - 4 * 3
        starts.add(int(idx[0]))
    assert len(starts) > 1


def test_frame_stride_range_clamped_to_clip(tmp_path):
    _write_frames(tmp_path / "clip", _index_clip(10))
    ds = ClipDataset(
        [tmp_path / "clip"], prompt="p", num_frames=4, sample_frame_rate=(2, 8), height=16, width=16, seed=0
    )
    rates = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        idx = _to_uint8(ds[0]["pixel_values"])[:, 0, 0, 0] // 10
        steps = idx[1:] - idx[:-1]
        assert (steps == steps[0]).all() and idx[-1] <= 9
        rates.add(int(steps[0]))
    assert rates == {2, 3}  # 3 is the largest stride that fits 4 frames into 10


def test_too_short_clip_error(tmp_path):
    _write_frames(tmp_path / "short_clip", _index_clip(10))
    _write_frames(tmp_path / "long_clip", _index_clip(20))
    with pytest.raises(ValueError) as e:
        ClipDataset(tmp_path, prompt="p", num_frames=4, sample_frame_rate=4, height=16, width=16)
    msg = str(e.value)
    assert "short_clip" in msg and "10 frames" in msg and "13" in msg and "long_clip" not in msg
    with pytest.raises(
        ValueError, match=r"short_clip.*10 frames.*13"
    ):  # a range fails only if its minimum does not fit
        ClipDataset(tmp_path, prompt="p", num_frames=4, sample_frame_rate=(4, 6), height=16, width=16)
    ClipDataset(tmp_path, prompt="p", num_frames=4, sample_frame_rate=(3, 6), height=16, width=16)
    uncached = ClipDataset(
        [tmp_path / "short_clip"], prompt="p", num_frames=4, sample_frame_rate=3, height=16, width=16, cache_clips=False
    )
    assert uncached[0]["pixel_values"].shape == (4, 3, 16, 16)


def test_unreadable_and_missing_clip_errors(tmp_path):
    bad = tmp_path / "broken_clip.mp4"
    bad.write_bytes(b"definitely not a video")
    with pytest.raises(ValueError, match="broken_clip.mp4"):
        read_clip(bad)
    with pytest.raises(ValueError, match="broken_clip.mp4"):
        ClipDataset(tmp_path, prompt="p")
    with pytest.raises(ValueError, match="broken_clip.mp4"):
        ClipDataset(tmp_path, prompt="p", cache_clips=False)
    with pytest.raises(FileNotFoundError, match="nowhere.gif"):
        read_clip(tmp_path / "nowhere.gif")
    with pytest.raises(FileNotFoundError, match="nowhere.gif"):
        ClipDataset([tmp_path / "nowhere.gif"], prompt="p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no clips"):
        ClipDataset(tmp_path / "empty", prompt="p")


def test_same_seed_epoch_index_identical(tmp_path):
    write_synthetic_dataset(tmp_path, num_clips=2, num_frames=16, height=32, width=32, fmt="frames")
    kwargs = dict(num_frames=4, sample_frame_rate=(1, 4), height=32, width=32)
    a, b = ClipDataset(tmp_path, seed=7, **kwargs), ClipDataset(tmp_path, seed=7, cache_clips=False, **kwargs)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(2):
            assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"])  # cached == decoded, any order
    a.set_epoch(0)
    first = [a[i]["pixel_values"] for i in range(2)]
    resumed = ClipDataset(tmp_path, seed=7, **kwargs)  # a fresh dataset, as after a resume
    assert all(torch.equal(resumed[i]["pixel_values"], first[i]) for i in range(2))
    items = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        items.add(a[0]["pixel_values"].numpy().tobytes())
    assert len(items) > 1  # epochs differ
    c = ClipDataset(tmp_path, seed=8, **kwargs)
    assert any(not torch.equal(c[i]["pixel_values"], first[i]) for i in range(2))


def test_flip_consistent_across_clip(tmp_path):
    frames = _index_clip(12, width=16)
    frames[:, :, :5] = 255  # bright left edge in every frame
    _write_frames(tmp_path / "clip", frames)
    kwargs = dict(prompt="p", num_frames=4, sample_frame_rate=2, height=16, width=16, seed=0)
    flipping, plain = (
        ClipDataset(tmp_path, random_flip=True, **kwargs),
        ClipDataset(tmp_path, random_flip=False, **kwargs),
    )
    seen = set()
    for epoch in range(20):
        flipping.set_epoch(epoch)
        plain.set_epoch(epoch)
        x, ref = flipping[0]["pixel_values"], plain[0]["pixel_values"]
        flipped = torch.equal(x, ref.flip(-1))
        assert flipped or torch.equal(x, ref)  # the whole clip, or nothing
        seen.add(flipped)
    assert seen == {True, False}


def test_sidecar_prompt_overrides_global(tmp_path):
    clip = _index_clip(8)
    _write_frames(tmp_path / "a", clip)
    _write_frames(tmp_path / "b", clip)
    (tmp_path / "a.txt").write_text("  a waterfall falling \n")
    ds = ClipDataset(tmp_path, prompt="global prompt", num_frames=2, height=16, width=16)
    assert ds.prompts == ["a waterfall falling", "global prompt"] and ds[0]["prompt"] == "a waterfall falling"
    with pytest.raises(ValueError, match=f"no prompt for clip\\(s\\) {re.escape(str(tmp_path / 'b'))}:"):
        ClipDataset(tmp_path, num_frames=2, height=16, width=16)


@pytest.mark.parametrize("src_hw,out_hw", [((64, 128), (32, 32)), ((64, 64), (30, 50)), ((40, 30), (37, 61))])
def test_resize_center_crop_exact_size(tmp_path, src_hw, out_hw):
    h, w = src_hw
    frames = np.zeros((4, h, w, 3), dtype=np.uint8)
    frames[:, :, w // 4 : w - w // 4] = 200  # bright centre half (columns)
    _write_frames(tmp_path / "clip", frames)
    ds = ClipDataset(tmp_path, prompt="p", num_frames=2, sample_frame_rate=1, height=out_hw[0], width=out_hw[1])
    x = ds[0]["pixel_values"]
    assert x.shape == (2, 3, *out_hw)
    if src_hw == (64, 128):  # cover-resize to 32x64 and centre-crop keeps exactly the bright centre half
        assert torch.allclose(_to_uint8(x[..., 1:-1]).float(), torch.tensor(200.0), atol=1)

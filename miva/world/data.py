"""MotionWorld training clips on disk, in the layout `miva train` reads (a folder of clips + prompt sidecars), and
regional clips with a mask folder per region (``mask_root``, a mask per clip named as the clip)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .architecture import FRAME_SIZE
from .motions import Motion, get_motion
from .scenes import make_scene, render_clip

__all__ = ["write_regional_clips", "write_world_clips"]


@contextmanager
def _atomic_folder(folder: Path):
    """Yield a temporary sibling of ``folder`` to write into; it replaces ``folder`` only when the block succeeds,
    so an interrupted call never leaves a partial dataset under ``folder``."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    """``frames`` ``(F, H, W, 3)`` or ``(F, H, W)`` ``uint8`` -> ``folder/frame_0000.png ...`` (lossless)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{t:04d}.png")


def _check_count(num_clips) -> None:
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips={num_clips!r} must be an integer >= 1")


def write_world_clips(
    folder: str | Path,
    motion: str | Motion,
    num_clips: int = 10,
    num_frames: int = 8,
    first_scene: int = 0,
    size: int = FRAME_SIZE,
) -> list[Path]:
    """Write ``num_clips`` clips of training scenes ``first_scene, first_scene + 1, ...`` under ``motion`` as frame
    folders ``clip_000/frame_0000.png ...`` (lossless), each with a ``clip_000.txt`` sidecar holding the scene's
    prompt (which never names the motion). Returns the clip folders.

    The folder is written under a temporary name and renamed at the end, so an interrupted call never leaves a
    partial dataset under ``folder``.
    """
    _check_count(num_clips)
    target = get_motion(motion) if isinstance(motion, str) else motion
    folder = Path(folder)
    with _atomic_folder(folder) as tmp:
        for i in range(num_clips):
            scene = make_scene("train", first_scene + i)
            _write_frames(tmp / f"clip_{i:03d}", render_clip(scene, target, num_frames, size))
            (tmp / f"clip_{i:03d}.txt").write_text(scene.prompt + "\n", encoding="utf-8")
    return sorted(p for p in folder.iterdir() if p.is_dir())


def write_regional_clips(
    folder: str | Path,
    layout: str,
    motions: Sequence[str | Motion],
    num_clips: int = 10,
    num_frames: int = 8,
    first_scene: int = 0,
    size: int = FRAME_SIZE,
    split: str = "train",
) -> dict[str, Path]:
    """Write ``num_clips`` regional clips (:func:`miva.world.regions.render_regional_clip`, region ``i`` moved by
    ``motions[i]``) of scenes ``first_scene, ...`` of ``split`` and their ground-truth masks::

        folder/clips/clip_000/frame_0000.png ...          the clip (a frame folder, as write_world_clips)
        folder/clips/clip_000.txt                          the scene's prompt
        folder/masks/<region>/clip_000/frame_0000.png ...  that region's mask, 8-bit grey (255 = 1.0)

    so ``data_root = folder/clips`` with ``mask_root = folder/masks/<region>`` gives every clip its region's mask
    video under the clip's own name. Returns ``{"clips": folder/clips, <region>: folder/masks/<region>, ...}``.
    Written atomically, as :func:`write_world_clips`.
    """
    from .regions import render_regional_clip

    _check_count(num_clips)
    folder = Path(folder)
    with _atomic_folder(folder) as tmp:
        for i in range(num_clips):
            scene = make_scene(split, first_scene + i)
            clip = render_regional_clip(scene, layout, motions, num_frames, size)
            _write_frames(tmp / "clips" / f"clip_{i:03d}", clip.frames)
            (tmp / "clips" / f"clip_{i:03d}.txt").write_text(scene.prompt + "\n", encoding="utf-8")
            for name, mask in zip(clip.names, clip.masks):
                _write_frames(tmp / "masks" / name / f"clip_{i:03d}", np.rint(mask * 255.0).astype(np.uint8))
    return {"clips": folder / "clips", **{name: folder / "masks" / name for name in clip.names}}

"""MotionWorld training clips on disk, in the layout `miva train` reads (a folder of clips + prompt sidecars)."""

from __future__ import annotations

from pathlib import Path

from .architecture import FRAME_SIZE
from .motions import Motion, get_motion
from .scenes import make_scene, render_clip

__all__ = ["write_world_clips"]


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
    import os
    import shutil

    from PIL import Image

    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips={num_clips!r} must be an integer >= 1")
    target = get_motion(motion) if isinstance(motion, str) else motion
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i in range(num_clips):
        scene = make_scene("train", first_scene + i)
        clip = tmp / f"clip_{i:03d}"
        clip.mkdir()
        for t, frame in enumerate(render_clip(scene, target, num_frames, size)):
            Image.fromarray(frame).save(clip / f"frame_{t:04d}.png")
        (tmp / f"clip_{i:03d}.txt").write_text(scene.prompt + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return sorted(p for p in folder.iterdir() if p.is_dir())

"""Loading the frozen base parts that MIVA adapters sit on."""

from __future__ import annotations

import os

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def load_motion_adapter(path: str, dtype=None):
    """A diffusers `MotionAdapter` from a Hub id or folder, or an AnimateDiff `.ckpt`/`.safetensors` single file."""
    from diffusers import MotionAdapter

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if os.path.isfile(path) and path.lower().endswith(SINGLE_FILE_SUFFIXES):
        return MotionAdapter.from_single_file(path, **kwargs)
    return MotionAdapter.from_pretrained(path, **kwargs)

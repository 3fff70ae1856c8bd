"""MotionWorld: a small world where motion is known exactly, and a base model pretrained on it that ships with miva.

- :mod:`~miva.world.scenes` / :mod:`~miva.world.motions`: procedural scenes rendered analytically under any
  similarity motion (8 directions x 3 speeds, zoom, turn, sums), train and held-out splits.
- :mod:`~miva.world.metrics`: the motion of a video (fit of the motion family), its class, errors against a target,
  PSNR/SSIM against the ground truth.
- :mod:`~miva.world.pretrain`: the seeded recipe of the shipped base (``python -m miva.world.pretrain``).
- :func:`load_pipeline`, :func:`shipped_adapters`, :func:`scene_image`: the shipped model, offline.

```python
from miva.world import load_pipeline, scene_image, shipped_adapters

pipe = load_pipeline()
pipe.load_adapters([str(shipped_adapters()["right"])], adapter_names=["right"])
video = pipe(image=scene_image(0), prompt="...", num_frames=8, height=64, width=64).frames[0]
```
"""

from __future__ import annotations

from pathlib import Path

from .motions import NAMED_MOTIONS, Motion, get_motion
from .scenes import Scene, make_scene, render_clip

__all__ = [
    "BASE_PATH",
    "WORLD_ID",
    "NAMED_MOTIONS",
    "Motion",
    "Scene",
    "get_motion",
    "load_pipeline",
    "make_scene",
    "render_clip",
    "resolve_model_path",
    "scene_image",
    "shipped_adapters",
    "base_fingerprint",
]

from ..base_registry import WORLD_ID, WORLD_PATH, resolve_base_path

WEIGHTS = WORLD_PATH.parent
BASE_PATH = WORLD_PATH  # the shipped base's folder; configs and adapter metadata call it WORLD_ID ("miva-world")
ADAPTERS_PATH = WEIGHTS / "adapters"
resolve_model_path = resolve_base_path  # "miva-world[/<subfolder>]" -> the shipped folder; the registry's rule


def load_pipeline(dtype=None, scheduler=None, path=None):
    """The shipped MotionWorld base (or the base folder ``path``, e.g. a new pretraining run) as a
    :class:`~miva.MIVAPipeline`: ``miva.load_base("miva-world")`` (offline, float32 by default: the weights are stored
    in fp16). 64x64 frames, up to 24 of them."""
    import torch

    from ..loaders.base_models import load_base

    if path is not None and not (Path(path) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no MotionWorld base in {path}; rebuild the shipped one with `python -m miva.world.pretrain --out {path}`"
        )
    pipe = load_base(WORLD_ID if path is None else str(path), dtype=dtype or torch.float32)
    if scheduler is not None:
        pipe.scheduler = scheduler
    return pipe


def base_fingerprint(folder: str | Path | None = None) -> str:
    """The first 12 hex digits of the SHA-256 of a base's UNet and motion-module weights (default: the shipped base).
    Adapters and benchmark results record it: they are only valid for the base they were trained on."""
    import hashlib

    folder = Path(folder) if folder else BASE_PATH
    digest = hashlib.sha256()
    for part in ("unet", "motion_adapter"):
        for file in sorted((folder / part).glob("*.safetensors")):
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def shipped_adapters() -> dict[str, Path]:
    """``{name: native adapter folder}`` of the adapters trained on MotionWorld that ship with miva."""
    if not ADAPTERS_PATH.is_dir():
        return {}
    return {p.name: p for p in sorted(ADAPTERS_PATH.iterdir()) if (p / "adapter_config.json").is_file()}


def scene_image(index: int = 0, size: int = 64, split: str = "heldout"):
    """Frame 0 of MotionWorld scene ``index`` (held-out by default) as a PIL image; its prompt is
    ``make_scene(split, index).prompt``."""
    from PIL import Image

    return Image.fromarray(render_clip(make_scene(split, index), Motion(), 1, size)[0])

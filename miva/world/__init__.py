"""MotionWorld: a small world where motion is known exactly, and a base model pretrained on it that ships with miva.

- :mod:`~miva.world.scenes` / :mod:`~miva.world.motions`: procedural scenes rendered analytically under any
  similarity motion (8 directions x 3 speeds, zoom, turn, sums), train and held-out splits.
- :mod:`~miva.world.metrics`: the motion of a video (fit of the motion family), its class, errors against a target,
  PSNR/SSIM against the ground truth.
- :mod:`~miva.world.pretrain`: the seeded recipe of the shipped base (``python -m miva.world.pretrain``).
- :func:`load_pipeline`, :func:`shipped_adapters`, :func:`scene_image`: the shipped models, offline. Two bases
  (docs/motionworld.md#two-bases): ``base="unet"`` (``miva-world``, AnimateDiff UNet, the default) and ``base="wan"``
  (``miva-world-wan``, Wan2.1 DiT, :mod:`~miva.world.pretrain_wan`).

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
    "WORLD_BASES",
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
    "adapters_path",
    "base_fingerprint",
    "world_base",
]

from ..base_registry import WORLD_ID, WORLD_PATH, WORLD_WAN_ID, known_base, resolve_base_path

WEIGHTS = WORLD_PATH.parent
BASE_PATH = WORLD_PATH  # the shipped base's folder; configs and adapter metadata call it WORLD_ID ("miva-world")
ADAPTERS_PATH = WEIGHTS / "adapters"
WAN_ADAPTERS_PATH = WEIGHTS / "wan_adapters"  # adapters trained on the Wan base (miva-world-wan)
resolve_model_path = resolve_base_path  # "miva-world[/<subfolder>]" -> the shipped folder; the registry's rule
# The two MotionWorld bases by their short names (`--base unet|wan`) -> their registry names.
WORLD_BASES = {"unet": WORLD_ID, "wan": WORLD_WAN_ID}


def world_base(base: str) -> str:
    """``"unet"`` / ``"wan"`` -> the registry name of that MotionWorld base; a clear error for anything else."""
    if base not in WORLD_BASES:
        raise ValueError(f"base={base!r} is not a MotionWorld base; choose one of {sorted(WORLD_BASES)}")
    return WORLD_BASES[base]


def adapters_path(base: str = "unet") -> Path:
    """The folder of the adapters shipped for MotionWorld base ``base`` (``"unet"`` / ``"wan"``)."""
    world_base(base)
    return ADAPTERS_PATH if base == "unet" else WAN_ADAPTERS_PATH


def load_pipeline(dtype=None, scheduler=None, path=None, base: str = "unet"):
    """A MotionWorld base, offline, float32 by default (the weights are stored in fp16): ``base="unet"`` the shipped
    AnimateDiff one as a :class:`~miva.MIVAPipeline` (``miva.load_base("miva-world")``, 64x64 frames, up to 24 of
    them), ``base="wan"`` the Wan2.1 one as a :class:`~miva.MIVAWanPipeline` (``miva.load_base("miva-world-wan")``,
    1 + 4k frames); or the base folder ``path`` (either architecture, e.g. a new pretraining run)."""
    import torch

    from ..loaders.base_models import load_base

    name = world_base(base)
    if path is not None and not (Path(path) / "model_index.json").is_file():
        command = "pretrain_wan" if base == "wan" else "pretrain"
        raise FileNotFoundError(
            f"no MotionWorld base in {path}; build one with `python -m miva.world.{command} --out {path}`"
        )
    pipe = load_base(name if path is None else str(path), dtype=dtype or torch.float32)
    if scheduler is not None:
        pipe.scheduler = scheduler
    return pipe


def base_fingerprint(folder: str | Path | None = None, base: str = "unet") -> str:
    """The first 12 hex digits of the SHA-256 of a base's denoiser weights: the UNet and motion module, or a Wan
    base's transformer (default folder: MotionWorld base ``base``'s). Adapters and benchmark results record it: they
    are only valid for the base they were trained on."""
    import hashlib

    folder = Path(folder) if folder else known_base(world_base(base)).folder
    digest = hashlib.sha256()
    for part in ("unet", "motion_adapter", "transformer"):  # a folder has the first two or the third
        for file in sorted((folder / part).glob("*.safetensors")):
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def shipped_adapters(base: str = "unet") -> dict[str, Path]:
    """``{name: native adapter folder}`` of the adapters trained on MotionWorld base ``base`` that ship with miva."""
    folder = adapters_path(base)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "adapter_config.json").is_file()}


def scene_image(index: int = 0, size: int = 64, split: str = "heldout"):
    """Frame 0 of MotionWorld scene ``index`` (held-out by default) as a PIL image; its prompt is
    ``make_scene(split, index).prompt``."""
    from PIL import Image

    return Image.fromarray(render_clip(make_scene(split, index), Motion(), 1, size)[0])

"""The base model behind `miva app`: the shipped MotionWorld (`--base world`), the offline tiny model (`--base tiny`)
or an SD1.5 diffusers folder / Hub id with an AnimateDiff motion adapter (`--base <repo or folder>`).

A `Base` knows how to build a fresh `MIVAPipeline` (the Animate tab keeps one; each training run gets its own, so
training never touches the weights the Animate tab samples with), which adapters ship with it, a few example
images, and the sampling defaults the form starts from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..base_registry import TINY_ID, WORLD_ID, known_base

WORLD_MODULE = "miva.world"


def load_base(name_or_path, motion_adapter=None, **kwargs):
    """`miva.loaders.base_models.load_base`, imported when a base is built (the app page starts without torch)."""
    from ..loaders.base_models import load_base as load

    return load(name_or_path, motion_adapter, **kwargs)


class BaseUnavailable(RuntimeError):
    """The chosen base cannot be built here; the message is one line meant for the terminal."""


@dataclass(frozen=True)
class SamplingDefaults:
    """What the Animate form starts from (and the training resolution)."""

    height: int = 64
    width: int = 64
    num_frames: int = 16
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    prompt: str = ""


@dataclass(frozen=True)
class Base:
    """A base model: `label` names it in the page; `load()` returns a fresh `MIVAPipeline` (progress bar off)."""

    label: str
    load: Callable[[], object]
    defaults: SamplingDefaults
    shipped_adapters: dict[str, Path] = field(default_factory=dict)
    example_images: Callable[[], list] = list  # () -> PIL images shown as examples under the image input
    # What a trained adapter records as its base (TrainConfig's model paths); None: the tiny model (`tiny: true`).
    train_model_path: str | None = None
    train_motion_path: str | None = None


def _world_base() -> Base:
    try:
        world = importlib.import_module(WORLD_MODULE)
        adapters, scene = world.shipped_adapters, world.scene_image
    except (ImportError, AttributeError) as e:
        raise BaseUnavailable(
            f"--base world needs {WORLD_MODULE} (the shipped MotionWorld base), which this install lacks ({e}); "
            "try --base tiny"
        ) from e
    return Base(
        label="MotionWorld (shipped)",
        load=lambda: load_base(WORLD_ID),
        defaults=SamplingDefaults(num_frames=8, num_inference_steps=25, guidance_scale=1.0),  # as trained
        shipped_adapters={name: Path(path) for name, path in adapters().items()},
        example_images=lambda: [scene(seed) for seed in range(3)],
        train_model_path=WORLD_ID,  # "miva-world": load_base resolves it to the shipped folder
        train_motion_path=f"{WORLD_ID}/motion_adapter",
    )


def _tiny_base() -> Base:
    from ..tiny import make_test_image

    return Base(
        label="tiny (random offline weights)",
        load=lambda: load_base(TINY_ID),
        defaults=SamplingDefaults(num_frames=8, num_inference_steps=4, guidance_scale=1.0, prompt="a waterfall"),
        example_images=lambda: [make_test_image(64, 64, seed) for seed in range(3)],
    )


def _pretrained_base(path: str, motion_adapter: str | None) -> Base:
    if not motion_adapter:
        raise BaseUnavailable(
            f"--base {path}: an SD1.5 base needs --motion-adapter (a MotionAdapter folder, Hub id or AnimateDiff "
            "file), e.g. --motion-adapter guoyww/animatediff-motion-adapter-v1-5-3"
        )

    def load():
        import torch

        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
        pipe = load_base(path, motion_adapter, dtype=dtype)
        return pipe.to("cuda") if torch.cuda.is_available() else pipe

    return Base(
        label=path,
        load=load,
        defaults=SamplingDefaults(height=320, width=512, num_frames=16, num_inference_steps=25, guidance_scale=7.5),
        train_model_path=path,
        train_motion_path=motion_adapter,
    )


def resolve_base(name: str, motion_adapter: str | None = None) -> Base:
    """`name` is "world" / "miva-world", "tiny", or an SD1.5 diffusers folder / Hub id (then `motion_adapter` is required).

    Raises `BaseUnavailable` (one line) when the base cannot be used here; nothing heavy is loaded yet."""
    known = known_base(name)  # the registry's names and aliases ("world" = "miva-world", "tiny")
    if known is not None and known.name == WORLD_ID:
        return _world_base()
    if known is not None and known.name == TINY_ID:
        return _tiny_base()
    return _pretrained_base(name, motion_adapter)


def fresh_pipeline(base: Base):
    """A new `MIVAPipeline` of `base` with its progress bar off (the app reports progress itself)."""
    pipe = base.load()
    pipe.set_progress_bar_config(disable=True)
    return pipe

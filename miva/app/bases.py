"""The base model behind `miva app`: the shipped MotionWorld (`--base world`), its Wan2.1-architecture counterpart
(`--base world-wan`), the offline tiny model (`--base tiny`) or an SD1.5 diffusers folder / Hub id with an AnimateDiff
motion adapter (`--base <repo or folder>`).

A `Base` knows how to build a fresh `MIVAPipeline` (the Animate tab keeps one; each training run gets its own, so
training never touches the weights the Animate tab samples with), which adapters ship with it, a few example
images, and the sampling defaults the form starts from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..base_registry import TINY_ID, WORLD_ID, WORLD_WAN_ID, known_base

WORLD_MODULE = "miva.world"


def load_base(name_or_path, motion_adapter=None, **kwargs):
    """`miva.loaders.base_models.load_base`, imported when a base is built (the app page starts without torch)."""
    from ..loaders.base_models import load_base as load

    return load(name_or_path, motion_adapter, **kwargs)


class BaseUnavailable(RuntimeError):
    """The chosen base cannot be built here; the message is one line meant for the terminal."""


@dataclass(frozen=True)
class SamplingDefaults:
    """What the Animate form starts from (and the training resolution). `sampling`: the research options of
    `MIVAPipeline.__call__` this base samples with (`use_adain_norm`, `first_frame_cond_type`, ...); the others keep
    the pipeline's defaults."""

    height: int = 64
    width: int = 64
    num_frames: int = 16
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    prompt: str = ""
    sampling: dict = field(default_factory=dict)
    # Frame counts the base makes are 2.. in steps of `frame_step` from `min_frames` (a Wan base: 1 + k * its VAE's
    # temporal factor); `research_options`: the research sampling options its pipeline takes (None: all of them).
    min_frames: int = 2
    frame_step: int = 1
    research_options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainDefaults:
    """What the Train form starts from. `recipe(rank)`: the base's own training recipe as `TrainConfig` fields (the
    adapter's settings under "adapter"), which the form's values then override; None: the config's defaults.
    `rank` None: `MIVAAdapterConfig`'s default rank."""

    learning_rate: float = 1e-4
    rank: int | None = None
    steps: int = 100
    num_frames: int = 8
    stride: int = 1
    random_flip: bool = True
    parts: tuple[str, ...] = ("i2v", "motion_lora")
    recipe: Callable[[int], dict] | None = None
    min_frames: int = 2  # frame counts of a training sample: min_frames, min_frames + frame_step, ...
    frame_step: int = 1


@dataclass(frozen=True)
class Base:
    """A base model: `label` names it in the page; `load()` returns a fresh `MIVAPipeline` (progress bar off)."""

    label: str
    load: Callable[[], object]
    defaults: SamplingDefaults
    shipped_adapters: dict[str, Path] = field(default_factory=dict)
    train_defaults: TrainDefaults = field(default_factory=TrainDefaults)
    # Shipped adapter name -> a short note the pickers show beside it (e.g. that it does not make its motion yet).
    adapter_notes: dict[str, str] = field(default_factory=dict)
    example_images: Callable[[], list] = list  # () -> PIL images shown as examples under the image input
    example_prompts: Callable[[], list] = list  # () -> their prompts (empty: the form's prompt is kept)
    # What a trained adapter records as its base (TrainConfig's model paths); None: the tiny model (`tiny: true`).
    train_model_path: str | None = None
    train_motion_path: str | None = None


def _world_base(kind: str = "unet") -> Base:
    """A MotionWorld base of `miva.world`: `kind` "unet" (miva-world) or "wan" (miva-world-wan), with its shipped
    adapters, its sampling defaults (`miva.world.evaluate.BASE_SAMPLING`) and its adapter recipe for the Train tab."""
    flag = "world" if kind == "unet" else "world-wan"
    try:
        world = importlib.import_module(WORLD_MODULE)
        adapters, scene = world.shipped_adapters, world.scene_image
    except (ImportError, AttributeError) as e:
        raise BaseUnavailable(
            f"--base {flag} needs {WORLD_MODULE} (the shipped MotionWorld base), which this install lacks ({e}); "
            "try --base tiny"
        ) from e
    from ..world.adapters import world_train_config
    from ..world.evaluate import sampling_defaults

    name = WORLD_ID if kind == "unet" else WORLD_WAN_ID
    known = known_base(name)
    if kind == "wan" and not (known.folder / "model_index.json").is_file():
        raise BaseUnavailable(f"--base {flag}: no base in {known.folder}; build it with `{known.rebuild}`")
    sampling = sampling_defaults(kind)
    shipped = {name: Path(path) for name, path in adapters(kind).items()}
    wan = {}
    if kind == "wan":  # 1 + k * the VAE's temporal factor (1 on the world Wan VAE: any count >= 2)
        step = _temporal_factor(known.folder)
        wan = {"frame_step": step, "min_frames": 1 + step, "research_options": WAN_RESEARCH_OPTIONS}
    return Base(
        label="MotionWorld (shipped)" if kind == "unet" else "MotionWorld Wan2.1 (miva-world-wan)",
        load=lambda: load_base(name),
        defaults=SamplingDefaults(  # how the world's videos (the README's GIF, its benchmark) are sampled
            num_frames=sampling["num_frames"],
            num_inference_steps=sampling["num_inference_steps"],
            guidance_scale=sampling["guidance_scale"],
            sampling={k: v for k, v in sampling.items() if k not in _PLAIN_SAMPLING},
            **wan,
        ),
        shipped_adapters=shipped,
        train_defaults=_recipe_defaults(
            lambda rank=None: world_train_config(".", ".", adapter_name="app", world=kind,
                                                 **({"rank": rank} if rank else {})),
            **({"min_frames": 5, "frame_step": 4} if kind == "wan" else {}),  # miva train on Wan: 4k + 1 frames
        ),
        adapter_notes={name: note for name, path in shipped.items() if (note := motion_note(path))},
        example_images=lambda: [scene(seed) for seed in range(3)],
        example_prompts=lambda: [world.make_scene("heldout", seed).prompt for seed in range(3)],  # scene_image's
        train_model_path=name,  # a registry name: load_base resolves it to the shipped folder
        train_motion_path=f"{WORLD_ID}/motion_adapter" if kind == "unet" else None,
    )


def _temporal_factor(folder: Path) -> int:
    """The temporal compression of a Wan base folder's VAE (`scale_factor_temporal` of `vae/config.json`)."""
    import json

    config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(config.get("scale_factor_temporal", 4))


# The research sampling options MIVAWanPipeline takes (no AdaIN, no CIL); `max_sequence_length` is a call setting.
WAN_RESEARCH_OPTIONS = ("shared_noise_ratio", "first_frame_cond_type", "use_dct_init", "dct_cutoff_ratio",
                        "dct_cutoff_shape")
_PLAIN_SAMPLING = ("num_frames", "num_inference_steps", "guidance_scale", "height", "width")
# A shipped adapter "makes its motion" when most of its validation videos do (the recorded class accuracy).
MAKES_MOTION = 0.5
NOT_YET = "does not make its motion yet"


def _recipe_defaults(recipe: Callable, **frames) -> TrainDefaults:
    """The Train form's defaults read from a recipe (`recipe(rank=None)`: `TrainConfig` fields, as
    `miva.world.adapters.world_train_config` returns them)."""
    from .parts import parts_of

    config = recipe()
    return TrainDefaults(
        learning_rate=config["learning_rate"],
        rank=config["adapter"]["motion_lora_rank"],
        steps=config["max_train_steps"],
        num_frames=config["num_frames"],
        stride=config["sample_frame_rate"],
        random_flip=config["random_flip"],
        parts=tuple(parts_of(config["adapter"])),
        recipe=recipe,
        **frames,
    )


def motion_note(folder: Path) -> str:
    """A short note on a shipped adapter from the `training.json` recorded with it: empty when its validation shows
    it makes its motion (class accuracy of the shipped seed >= `MAKES_MOTION`), else says that it does not yet."""
    import json

    record_path = Path(folder) / "training.json"
    if not record_path.is_file():
        return ""  # not a shipped MotionWorld adapter: nothing recorded, nothing claimed
    record = json.loads(record_path.read_text(encoding="utf-8"))
    scores = (record.get("validation") or {}).get(str(record.get("seed")))
    if scores is None:
        return "motion not validated"
    accuracy = scores["class_accuracy"]
    if accuracy >= MAKES_MOTION:
        return ""
    return f"{NOT_YET}: {accuracy:.0%} of validation videos make it"


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
    """`name` is "world" / "miva-world", "world-wan" / "miva-world-wan", "tiny", or an SD1.5 diffusers folder / Hub id
    (then `motion_adapter` is required).

    Raises `BaseUnavailable` (one line) when the base cannot be used here; nothing heavy is loaded yet."""
    known = known_base(name)  # the registry's names and aliases ("world" = "miva-world", "tiny")
    if known is not None and known.name == WORLD_ID:
        return _world_base("unet")
    if known is not None and known.name == WORLD_WAN_ID:
        return _world_base("wan")
    if known is not None and known.name == TINY_ID:
        return _tiny_base()
    return _pretrained_base(name, motion_adapter)


def fresh_pipeline(base: Base):
    """A new `MIVAPipeline` of `base` with its progress bar off (the app reports progress itself)."""
    pipe = base.load()
    pipe.set_progress_bar_config(disable=True)
    return pipe

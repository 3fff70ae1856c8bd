"""The base models miva knows by name: the one registry behind `load_base`, model cards and path resolution.

A known name (or one of its aliases) never reaches the Hugging Face Hub: `"miva-world"` is the MotionWorld base that
ships inside the package (`"miva-world/<subfolder>"` one of its components), `"miva-world-wan"` its Wan2.1-architecture
counterpart (docs/motionworld.md#two-bases), `"tiny"` the offline `miva.tiny` test model built in memory. Anything else is a local path or a Hub id, for diffusers' `from_pretrained`.

This module imports nothing heavy (no torch, no diffusers) so that configs, cards and `miva.world` can consult it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .backbones.declared import UNET, WAN

__all__ = ["KNOWN_BASES", "TINY_ID", "TINY_RECORDED", "TINY_WAN_ID", "WORLD_ID", "WORLD_PATH", "WORLD_WAN_ID",
           "WORLD_WAN_PATH", "KnownBase", "base_backbone", "known_base", "resolve_base_path"]

WORLD_ID = "miva-world"
TINY_ID = "tiny"
TINY_WAN_ID = "tiny-wan"
TINY_RECORDED = "miva.tiny"  # what `--tiny` runs record as their base model and motion adapter
# The shipped MotionWorld base: a diffusers AnimateDiffPipeline folder inside the package (fp16 safetensors).
WORLD_PATH = Path(__file__).resolve().parent / "world" / "weights" / "base"
# The MotionWorld Wan base: a diffusers WanPipeline folder beside it (fp16 safetensors), `miva.world.pretrain_wan`.
WORLD_WAN_ID = "miva-world-wan"
WORLD_WAN_PATH = WORLD_PATH.parent / "wan_base"

_WORLD_USAGE = """\
from diffusers.utils import export_to_gif
from miva.world import load_pipeline, make_scene, scene_image
from miva.world.evaluate import SAMPLING  # 8 frames, 25 DDIM steps: what the shipped adapters were measured with

pipe = load_pipeline()  # the MotionWorld base shipped inside miva: offline, float32 on the CPU
pipe.load_adapters("{where}", adapter_names="{name}")  # shipped ones: str(miva.world.shipped_adapters()["{name}"])
video = pipe(image=scene_image(0), prompt=make_scene("heldout", 0).prompt, height=64, width=64, **SAMPLING).frames[0]
export_to_gif(video, "output.gif")"""

_WORLD_WAN_USAGE = """\
from diffusers.utils import export_to_gif
from miva.world import load_pipeline, make_scene, scene_image
from miva.world.evaluate import sampling_defaults

pipe = load_pipeline(base="wan")  # the MotionWorld Wan base (miva-world-wan): offline, float32 on the CPU
pipe.load_adapters("{where}", adapter_names="{name}")  # shipped ones: str(miva.world.shipped_adapters("wan")["{name}"])
video = pipe(image=scene_image(0), prompt=make_scene("heldout", 0).prompt, height=64, width=64,
             output_type="pil", **sampling_defaults("wan")).frames[0]  # 9 frames, 25 flow-matching steps
export_to_gif(video, "output.gif")"""

_TINY_USAGE = """\
from miva import load_base
from miva.tiny import make_test_image

pipe = load_base("tiny")  # random offline test weights: checks plumbing, not quality
pipe.load_adapters("{where}", adapter_names="{name}")
video = pipe(image=make_test_image(64, 64), prompt="{prompt}", num_frames=8, height=64, width=64,
             num_inference_steps=4).frames[0]"""


_TINY_WAN_USAGE = """\
from miva import load_base
from miva.tiny import make_test_image

pipe = load_base("tiny-wan")  # a MIVAWanPipeline with random offline test weights: checks plumbing, not quality
pipe.load_adapters("{where}", adapter_names="{name}")
video = pipe(image=make_test_image(16, 16), prompt="{prompt}", num_frames=9, height=16, width=16,
             num_inference_steps=2, max_sequence_length=16).frames[0]"""


@dataclass(frozen=True)
class KnownBase:
    """A base model miva resolves by name, offline.

    `folder`: its diffusers pipeline folder (None: built in memory from `miva.tiny`); `dtype`: the torch dtype name it
    loads in when the caller gives none; `usage`: the model-card snippet of an adapter trained on it (`{where}`,
    `{name}` and `{prompt}` are filled in); `rebuild`: the command that makes `folder` when an install lacks it;
    `backbone`: the id of its architecture in `miva.backbones.declared`."""

    name: str
    description: str
    folder: Path | None
    usage: str
    aliases: tuple[str, ...] = field(default=())
    dtype: str = "float32"
    rebuild: str = ""  # how to make `folder` when an install lacks it
    license: str = "apache-2.0"  # of the weights (miva's own license for both shipped bases); adapters inherit it
    backbone: str = UNET.id

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


KNOWN_BASES: tuple[KnownBase, ...] = (
    KnownBase(
        name=WORLD_ID,
        description="the MotionWorld base shipped inside miva (64x64 frames, docs/motionworld.md)",
        folder=WORLD_PATH,
        usage=_WORLD_USAGE,
        aliases=("world",),  # `miva app --base world`
        rebuild=f"python -m miva.world.pretrain --out {WORLD_PATH}",
    ),
    KnownBase(
        name=WORLD_WAN_ID,
        description="the MotionWorld Wan2.1-architecture base (64x64 frames, 9-frame clips, docs/motionworld.md)",
        folder=WORLD_WAN_PATH,
        usage=_WORLD_WAN_USAGE,
        aliases=("world-wan",),  # `miva app --base world-wan`
        rebuild=f"python -m miva.world.pretrain_wan --out {WORLD_WAN_PATH}",
        backbone=WAN.id,
    ),
    KnownBase(
        name=TINY_ID,
        description="the offline miva.tiny test model (random weights, built in memory)",
        folder=None,
        usage=_TINY_USAGE,
        aliases=(TINY_RECORDED,),
    ),
    KnownBase(
        name=TINY_WAN_ID,
        description="the offline tiny Wan2.1 test model (random weights, built in memory by miva.backbones.wan.tiny)",
        folder=None,
        usage=_TINY_WAN_USAGE,
        backbone=WAN.id,
    ),
)
# diffusers pipeline / transformer classes whose folders are Wan2.1 bases (`model_index.json`).
_WAN_CLASSES = ("WanPipeline", "MIVAWanPipeline", "WanTransformer3DModel")


def known_base(name) -> KnownBase | None:
    """The registry entry named `name` (or one of its aliases); None for anything else (a path, a Hub id, None)."""
    if not isinstance(name, str):
        return None
    return next((base for base in KNOWN_BASES if name in base.names), None)


def resolve_base_path(value):
    """`"miva-world"` -> the shipped folder, `"miva-world/<subfolder>"` -> that subfolder (as `str`); any other value
    (a path, a Hub id, None, the in-memory `tiny`) unchanged. Lets configs and adapter metadata name a shipped base
    without a machine's absolute path."""
    if not isinstance(value, str):
        return value
    base = known_base(value)
    if base is not None:
        return value if base.folder is None else str(base.folder)
    for base in KNOWN_BASES:  # subfolders by the main name only: "world/unet" may well be a local path
        if base.folder is not None and value.startswith(base.name + "/"):
            return str(base.folder / value[len(base.name) + 1 :])
    return value


def base_backbone(name_or_path) -> str:
    """The backbone id (`miva.backbones.declared`) of a base: a known name's own; a local pipeline folder (or a Hub
    id whose `model_index.json` is in the local cache) whose `model_index.json` names a Wan pipeline or transformer
    class is `"wan2.1-dit"`; anything else the AnimateDiff UNet (`"animatediff-unet"`)."""
    import json

    known = known_base(name_or_path)
    if known is not None:
        return known.backbone
    if not isinstance(name_or_path, str):
        return UNET.id
    index = Path(name_or_path) / "model_index.json"
    if not index.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "model_index.json")
        except Exception:  # not a repo id
            cached = None
        index = Path(cached) if isinstance(cached, str) else None
    if index is None:
        return UNET.id
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return UNET.id
    classes = [data.get("_class_name")] + [v[1] for v in data.values() if isinstance(v, list) and len(v) == 2]
    return WAN.id if any(c in _WAN_CLASSES for c in classes) else UNET.id

"""Loading the frozen base that MIVA adapters sit on: `load_base`, the one way the CLI, the app, the trainer and
`miva.world` build a base pipeline.

A name in the registry (`miva.base_registry.KNOWN_BASES`: `"miva-world"`, `"tiny"`, ...) is resolved offline; anything else
is a local folder or a Hub id and goes to diffusers' `from_pretrained` unchanged.
"""

from __future__ import annotations

import os

from ..backbones.declared import WAN
from ..base_registry import base_backbone, known_base, resolve_base_path

__all__ = ["SINGLE_FILE_SUFFIXES", "load_base", "load_motion_adapter"]

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def load_motion_adapter(path: str, dtype=None):
    """A diffusers `MotionAdapter` from a Hub id or folder, an AnimateDiff `.ckpt`/`.safetensors` single file, or a
    known base's subfolder (`"miva-world/motion_adapter"`)."""
    from diffusers import MotionAdapter

    path = resolve_base_path(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if os.path.isfile(path) and path.lower().endswith(SINGLE_FILE_SUFFIXES):
        return MotionAdapter.from_single_file(path, **kwargs)
    return MotionAdapter.from_pretrained(path, **kwargs)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _missing_folder(known) -> FileNotFoundError:
    return FileNotFoundError(
        f"{known.name}: no base in {known.folder} ({known.description}); rebuild it with `{known.rebuild}`"
    )


def _load_wan_base(known, name_or_path, motion_adapter, dtype, components):
    """A `MIVAWanPipeline`: the in-memory `tiny-wan`, a known base's folder (`miva-world-wan`), or a Wan pipeline
    folder / Hub id."""
    from ..pipelines.pipeline_miva_wan import MIVAWanPipeline

    if motion_adapter is not None:
        raise ValueError(f"motion_adapter={motion_adapter!r}: the base {name_or_path!r} is a {WAN.id} "
                         f"({WAN.description}), which has no motion adapter; leave it unset")
    if known is not None and known.folder is None:  # built in memory
        from ..backbones.wan.tiny import tiny_wan_components

        pipe = MIVAWanPipeline(**{**tiny_wan_components(seed=0), **components})
        return pipe.to(dtype=dtype) if dtype != _dtype(known.dtype) else pipe
    if known is not None and not (known.folder / "model_index.json").is_file():
        raise _missing_folder(known)
    kwargs = {**components, **({"dtype": dtype} if dtype is not None else {})}
    path = known.folder if known is not None else resolve_base_path(name_or_path)
    return MIVAWanPipeline.from_pretrained(path, **kwargs)


def load_base(name_or_path, motion_adapter=None, *, dtype=None, **components):
    """A `MIVAPipeline` (no adapters yet) of the base `name_or_path`; a `MIVAWanPipeline` when the base is a Wan2.1
    one (`"tiny-wan"`, `"miva-world-wan"`, a folder whose `model_index.json` names a Wan pipeline: `base_registry.base_backbone`).

    Args:
        name_or_path: a known name (`"miva-world"`, `"tiny"`, `"tiny-wan"`, their aliases: never the Hub), a diffusers pipeline
            folder, or a Hub id (diffusers' `from_pretrained`, e.g. an SD1.5 repo).
        motion_adapter: a `MotionAdapter` source for `load_motion_adapter` (folder, Hub id, AnimateDiff file,
            `"miva-world/motion_adapter"`); None keeps the base's own (a known base, a saved MIVA pipeline folder).
            The in-memory `tiny` base takes none but its own (`"tiny"` / `"miva.tiny"`).
        dtype: torch dtype of the weights; None: the known base's own (float32 for both shipped ones), else diffusers'
            default.
        components: further pipeline components (e.g. `image_encoder=`, `feature_extractor=`).

    Raises:
        FileNotFoundError: a known base whose folder is missing from this install.
        ValueError: a foreign motion adapter for the `tiny` base.
    """
    from ..pipelines.pipeline_miva import MIVAPipeline

    known = known_base(name_or_path)
    if known is not None and dtype is None:
        dtype = _dtype(known.dtype)
    if base_backbone(name_or_path) == WAN.id:
        return _load_wan_base(known, name_or_path, motion_adapter, dtype, components)
    if known is not None and known.folder is None:  # built in memory
        if motion_adapter is not None and known_base(motion_adapter) is not known:
            raise ValueError(
                f"motion_adapter={motion_adapter!r}: the {known.name!r} base brings its own motion adapter "
                f"(leave it unset, or use one of {list(known.names)})"
            )
        from ..tiny import tiny_components

        pipe = MIVAPipeline(**{**tiny_components(seed=0), **components})
        return pipe.to(dtype=dtype) if dtype != _dtype(known.dtype) else pipe
    if known is not None and not (known.folder / "model_index.json").is_file():
        raise _missing_folder(known)
    path = resolve_base_path(name_or_path)
    kwargs = dict(components)
    if motion_adapter is not None:
        kwargs["motion_adapter"] = load_motion_adapter(motion_adapter, dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return MIVAPipeline.from_pretrained(path, **kwargs)

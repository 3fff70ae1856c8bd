"""Where and when each adapter acts, in a run config: mask files and per-frame schedules per adapter name.

Keys of `validation_data` (they become `MIVAPipeline(adapter_masks=, adapter_schedules=)`, see docs/config.md)::

    adapter_masks: {water: masks/left.png}          # adapter -> mask image, for every image of the config
    image_masks: {lake: {water: masks/lake.png}}    # image name (its stem) -> {adapter -> mask}: that image only
    adapter_schedules: {pan: [1, 1, 0.5, 0]}        # adapter -> one weight per frame (video_length of them)

An `image_masks` entry replaces the `adapter_masks` one of its adapter for that image; `null` there means "no mask"
(the adapter acts everywhere in that image). Mask paths are read like `image_path`: relative to the working folder.
`miva infer --mask NAME=PATH --schedule NAME=v1,v2,...` set the same keys (:func:`flag_overrides`), so one set of
checks covers both. Pure data: reading the mask images is `miva.commands.regions`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .fields import ConfigError, fail, suggest

MASK_HINT = "a mask image path (white: the adapter acts, black: it does not) or null"


def _name(path: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: key {name!r} must be a non-empty adapter name")
    return name


def _mask_path(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(path, value, f"must be {MASK_HINT}")
    return value


def mask_map(path: str, value: Any) -> dict[str, str | None]:
    """`adapter_masks`: `{adapter name: mask image path or None}`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(path, value, f"must be a mapping of adapter name -> {MASK_HINT}, e.g. {{water: masks/water.png}}")
    return {_name(path, k): _mask_path(f"{path}.{k}", v) for k, v in value.items()}


def image_mask_map(path: str, value: Any) -> dict[str, dict[str, str | None]]:
    """`image_masks`: `{image name: {adapter name: mask image path or None}}`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(path, value, "must be a mapping of image name -> {adapter name: mask image}, "
                                "e.g. {lake: {water: masks/lake_water.png}}")
    out = {}
    for image, masks in value.items():
        where = f"{path}.{_name(path, image)}"
        if not isinstance(masks, Mapping):
            raise fail(where, masks, f"must be a mapping of adapter name -> {MASK_HINT}")
        out[image] = mask_map(where, masks)
    return out


def _weight(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(path, value, "must be a finite number (the adapter's weight in that frame)")
    return float(value)


def schedule_map(path: str, value: Any) -> dict[str, list[float]]:
    """`adapter_schedules`: `{adapter name: [one weight per frame]}` (lengths are checked against `video_length`
    by :func:`check_schedule_lengths`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(path, value, "must be a mapping of adapter name -> a list of per-frame weights, "
                                "e.g. {pan: [1, 1, 0.5, 0]}")
    out = {}
    for name, weights in value.items():
        where = f"{path}.{_name(path, name)}"
        if not isinstance(weights, (list, tuple)) or not weights:
            raise fail(where, weights, "must be a list of per-frame weights (one per frame, video_length of them)")
        out[name] = [_weight(f"{where}[{i}]", w) for i, w in enumerate(weights)]
    return out


def check_schedule_lengths(v) -> None:
    """Every schedule of `validation_data` `v` has one weight per frame."""
    for name, weights in v.adapter_schedules.items():
        if len(weights) != v.video_length:
            raise ConfigError(
                f"validation_data.adapter_schedules.{name}: {len(weights)} weights for video_length "
                f"{v.video_length}; give one weight per frame"
            )


def check_adapter_names(v, names: list[str]) -> None:
    """Every adapter a mask or a schedule names is one of the config's adapters (`MIVAConfig.names()`)."""
    named = [(f"adapter_masks.{n}", n) for n in v.adapter_masks]
    named += [(f"image_masks.{image}.{n}", n) for image, masks in v.image_masks.items() for n in masks]
    named += [(f"adapter_schedules.{n}", n) for n in v.adapter_schedules]
    for where, name in named:
        if name not in names:
            raise ConfigError(f"validation_data.{where}: no adapter named {name!r}; the adapters are {names} "
                              f"(adapter_names){suggest(name, names)}")


def masks_for(v, image: str, images: list[str]) -> dict[str, tuple[str, str]]:
    """`{adapter name: (key path, mask path)}` for input image `image` (its stem) of `validation_data` `v`:
    `adapter_masks` with that image's `image_masks` entries over them (a None there drops the adapter's mask).
    `images`: the stems of every input (an `image_masks` key must be one of them)."""
    for name in v.image_masks:
        if name not in images:
            raise ConfigError(f"validation_data.image_masks.{name}: no input image named {name!r}; the images are "
                              f"{images} (image file names without suffix){suggest(name, images)}")
    paths = {n: (f"validation_data.adapter_masks.{n}", p) for n, p in v.adapter_masks.items()}
    paths.update({n: (f"validation_data.image_masks.{image}.{n}", p) for n, p in v.image_masks.get(image, {}).items()})
    return {n: (where, p) for n, (where, p) in paths.items() if p is not None}


# ------------------------------------------------------------------------------------------- miva infer flags
def _split(flag: str, item: str, form: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip() or "." in name:
        raise ConfigError(f"{flag} {item!r}: expected {form} (an adapter name without dots)")
    return name.strip(), value.strip()


def flag_overrides(masks: list[str] | None, schedules: list[str] | None) -> list[str]:
    """`--set` items for `miva infer --mask NAME=PATH` and `--schedule NAME=v1,v2,...` (each repeatable): they set
    `validation_data.adapter_masks.NAME` and `validation_data.adapter_schedules.NAME`, which are then checked as
    if the YAML had them. A malformed flag raises `ConfigError` naming it."""
    items, seen = [], set()
    for flag, entries, form in (("--mask", masks, "NAME=PATH, e.g. water=masks/water.png"),
                                ("--schedule", schedules, "NAME=v1,v2,... (one weight per frame), e.g. pan=1,1,0.5,0")):
        for item in entries or []:
            name, value = _split(flag, item, form)
            if (flag, name) in seen:
                raise ConfigError(f"{flag} {item!r}: adapter {name!r} is given twice; give one {flag} per adapter")
            seen.add((flag, name))
            if flag == "--mask":
                items.append(f"validation_data.adapter_masks.{name}={json.dumps(value)}")
                continue
            weights = []
            for text in value.split(","):
                try:
                    weights.append(float(text))
                except ValueError:
                    raise ConfigError(f"{flag} {item!r}: {text.strip()!r} is not a number; expected {form}") from None
            items.append(f"validation_data.adapter_schedules.{name}={json.dumps(weights)}")
    return items

"""The Animate tab's region and schedule per adapter row: the painted layer of the row's image editor becomes the
adapter's mask, the row's schedule text its per-frame weights; both become `MIVAPipeline(adapter_masks=,
adapter_schedules=)` (the names the pipeline gave the adapters). Nothing painted, nothing typed: no argument.

Schedule text: one weight per frame (`1, 1, 0.5, 0`), or a ramp from the first frame's weight to the last's
(`1 -> 0`, linear). Masks are fitted to the video like the input image (`miva.commands.regions.fit_mask`).
"""

from __future__ import annotations

import math

import numpy as np

from .registry import AppInputError

SCHEDULE_HINT = "one weight per frame (e.g. 1, 1, 0.5, 0) or a ramp (e.g. 1 -> 0)"
RAMP = "->"


def mask_from_editor(value) -> np.ndarray | None:
    """An `ImageEditor` value (`{"background", "layers", "composite"}`, PIL images) -> `(H, W)` float32 mask:
    1 where any layer has paint, else 0 (a painted pixel is the region, however opaque the brush); None when
    nothing is painted (or there is no value)."""
    layers = (value.get("layers") or []) if isinstance(value, dict) else []
    alphas = [np.asarray(layer.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0 for layer in layers
              if layer is not None]
    if not alphas or all(a.max() == 0 for a in alphas):
        return None
    return (np.maximum.reduce(alphas) > 0).astype(np.float32)


def check_schedule(weights: list[float], num_frames: int, label: str) -> list[float]:
    """`weights` has one finite number per frame; else `AppInputError` naming `label` (the form's field)."""
    if len(weights) != num_frames:
        raise AppInputError(f"{label}: {len(weights)} weights for {num_frames} frames; give {SCHEDULE_HINT}")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise AppInputError(f"{label}: {bad[0]} is not a finite number; give {SCHEDULE_HINT}")
    return weights


def parse_schedule(text: str, num_frames: int, label: str) -> list[float] | None:
    """The schedule field's `text` -> `num_frames` weights (None when empty); bad text raises `AppInputError`
    naming `label`, the text and what is valid."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(RAMP)] if RAMP in text else [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise AppInputError(f"{label}: {text!r} is not a list of numbers; give {SCHEDULE_HINT}") from None
    if RAMP in text:
        if len(numbers) != 2:
            raise AppInputError(f"{label}: {text!r}: a ramp is two numbers, first -> last frame (e.g. 1 -> 0)")
        numbers = [float(w) for w in np.linspace(numbers[0], numbers[1], num_frames)]
    return check_schedule(numbers, num_frames, label)


def region_arguments(picks, height: int, width: int) -> dict:
    """`adapter_masks` / `adapter_schedules` for `picks` (`[(name in the pipeline, AdapterPick)]`), only those
    some row sets."""
    from ..commands.regions import fit_mask

    masks = {name: fit_mask(p.mask, height, width) for name, p in picks if p.mask is not None}
    schedules = {name: list(p.schedule) for name, p in picks if p.schedule is not None}
    return {**({"adapter_masks": masks} if masks else {}), **({"adapter_schedules": schedules} if schedules else {})}


def editor_value(image) -> dict | None:
    """What each row's image editor shows for the input `image`: the image to paint on, nothing painted yet (a new
    image clears the regions painted on the previous one)."""
    if image is None or not hasattr(image, "convert"):
        return None
    return {"background": image, "layers": [], "composite": image}

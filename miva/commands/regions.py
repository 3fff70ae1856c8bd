"""Mask images and schedules as `MIVAPipeline(adapter_masks=, adapter_schedules=)` arguments, for `miva infer`
(from the config keys of `miva.config.regions`) and the app (from its painted layers).

A mask image reads as: its transparency where it has any (an RGBA / LA PNG, or a painted layer: opaque = the
adapter acts), else its brightness (white = acts, black = does not), scaled to [0, 1]. It is then scaled to cover
and center-cropped to the video's `height` x `width` exactly like the input image (`preprocess_image`), so it
stays aligned with the image whatever the file's size.
"""

from __future__ import annotations

import os

import numpy as np

from ..config import ConfigError
from ..config.regions import masks_for


def mask_array(image) -> np.ndarray:
    """A PIL image -> `(H, W)` float32 in [0, 1]: its alpha channel when it has transparency, else its luminance."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min() < 1.0:  # a layer with transparency: opaque pixels are the region
            return alpha
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(H, W)` mask in [0, 1] -> `(height, width)` float32, scaled to cover and center-cropped as the pipeline
    does to the input image (`miva.pipelines.inputs.preprocess_image`, the one place of that geometry)."""
    import torch

    from ..pipelines.inputs import preprocess_image

    grey = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None].expand(3, -1, -1)
    fitted = preprocess_image(grey, height, width)[0, 0]  # in [-1, 1]
    # Rounded: the float32 round trip through [-1, 1] would leave 1 - 1e-7 where the mask is 1.
    return np.round(((fitted + 1) / 2).clamp(0, 1).numpy(), 5).astype(np.float32)


def load_mask(path: str, height: int, width: int, where: str) -> np.ndarray:
    """The mask image at `path` as a `(height, width)` float32 array in [0, 1]; `where` (the key path or flag
    that named it) starts every error line."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ConfigError(f"{where}: mask image {path!r} not found (paths are relative to the working folder)")
    try:
        with Image.open(path) as image:
            mask = mask_array(image)
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{where}: {path!r} is not an image file ({type(e).__name__}); use a PNG, "
                          "white where the adapter acts") from None
    return fit_mask(mask, height, width)


def config_region_kwargs(config, item, images: list[str]) -> dict:
    """`adapter_masks` / `adapter_schedules` for input `item` (an `InputItem`) of `config`, only those set (a
    config without masks or schedules adds no argument). `images`: the names of every input of the config."""
    v = config.validation_data
    kwargs = {}
    masks = {name: load_mask(path, v.height, v.width, where)
             for name, (where, path) in masks_for(v, item.name, images).items()}
    if masks:
        kwargs["adapter_masks"] = masks
    if v.adapter_schedules:
        kwargs["adapter_schedules"] = {name: list(weights) for name, weights in v.adapter_schedules.items()}
    return kwargs

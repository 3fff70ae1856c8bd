"""Per-adapter masks and schedules of one call (docs/regions.md): validated and normalised once, read per layer.

`miva_call(..., adapter_masks=..., adapter_schedules=...)` builds one `CallGates` for the call. Each adapter's gate
is `mask(f, y, x) * frame_schedule(f)` (a `(F or 1, H, W)` float field) times its step schedule at the current
denoising step. What is constant folds into the adapter's scalar weight (`scale`, read by
`MIVAContext.active_adapters`): a gate constant everywhere changes only the weight, and a zero one removes the
adapter's branches from the call, so an all-ones mask is no mask, an all-zero mask is the adapter not active and a
constant schedule c is the weight c, exactly. Only a field that varies reaches the processors, resized to each layer's
recorded level and laid out as that layer's tokens (`spatial`, `temporal`, `tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

__all__ = ["CallGates", "set_denoising_step", "temporal_level"]

_SCHEDULE_KEYS = ("frames", "steps")


def _array(label: str, value: Any) -> torch.Tensor:
    """A mask or schedule given as a PIL image (L or RGB: luminance / 255), numpy array or tensor -> float64 CPU
    (float64 so that a constant folds into the weight as the very number given: a schedule 0.6 is the weight 0.6)."""
    if isinstance(value, PIL.Image.Image):
        return torch.from_numpy(np.asarray(value.convert("L"), dtype=np.float64) / 255.0)
    if torch.is_tensor(value):
        return value.detach().to("cpu", torch.float64)
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.from_numpy(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{label} cannot be read as numbers ({error}); give a PIL image, a numpy array or a "
                             "tensor") from None
    raise ValueError(f"{label} is a {type(value).__name__}; give a PIL image, a numpy array or a torch tensor")


def _check_values(label: str, values: torch.Tensor, unit: bool) -> None:
    if torch.isnan(values).any():
        raise ValueError(f"{label} contains NaN; give {'values in [0, 1]' if unit else 'finite numbers'}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{label} contains an infinite value; give {'values in [0, 1]' if unit else 'finite numbers'}")
    if unit and values.numel() and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"{label} has values in [{float(values.min()):g}, {float(values.max()):g}]; give soft "
                         "values in [0, 1] (a PIL image is read as luminance / 255)")


def normalise_mask(label: str, value: Any, num_frames: int | None) -> torch.Tensor:
    """One mask -> `(1, H, W)` (whole video) or `(F, H, W)` (per frame), float64 in [0, 1]."""
    field = _array(label, value)
    if field.ndim == 2:
        field = field[None]
    elif field.ndim != 3:
        raise ValueError(f"{label} has shape {tuple(field.shape)}; give (H, W) for the whole video or (F, H, W) per "
                         "frame (a PIL image is (H, W))")
    if field.shape[1] == 0 or field.shape[2] == 0:
        raise ValueError(f"{label} has shape {tuple(field.shape)}: an empty image; give at least 1x1 pixels")
    if field.shape[0] != 1 and num_frames is not None and field.shape[0] != num_frames:
        raise ValueError(f"{label} has {field.shape[0]} frames (shape {tuple(field.shape)}) but the call has "
                         f"num_frames={num_frames}; give (H, W) or ({num_frames}, H, W)")
    _check_values(label, field, unit=True)
    return field


def _sequence(label: str, value: Any, length: int | None, what: str) -> tuple[float, ...]:
    """A per-frame or per-step schedule: a sequence of `length` numbers or a callable(index) -> float."""
    if length is None:
        raise ValueError(f"{label}: the call does not know its number of {what}; open it with "
                         f"miva_call(..., {'num_frames' if what == 'frames' else 'num_steps'}=...)")
    if callable(value):
        values = []
        for index in range(length):
            try:
                values.append(float(value(index)))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{label}({index}) did not return a number ({error}); a schedule callable maps "
                                 f"a {what[:-1]} index to a float") from None
        values = torch.tensor(values, dtype=torch.float64)
    else:
        values = _array(label, value)
        if values.ndim != 1 or values.shape[0] != length:
            raise ValueError(f"{label} has {values.shape[0] if values.ndim == 1 else tuple(values.shape)} values but "
                             f"the call has {length} {what}; give {length} numbers or a callable(index) -> float")
    _check_values(label, values, unit=False)
    return tuple(float(v) for v in values)


def normalise_schedule(label: str, value: Any, num_frames: int | None, num_steps: int | None):
    """One schedule -> `(frame factors (F,) or None, step factors or None)`. A sequence or callable is per frame;
    `{"frames": ..., "steps": ...}` gives either or both."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _SCHEDULE_KEYS]
        if unknown:
            raise ValueError(f"{label} has keys {unknown}; a schedule dict takes {list(_SCHEDULE_KEYS)}")
        frames, steps = value.get("frames"), value.get("steps")
    else:
        frames, steps = value, None
    frames = None if frames is None else _sequence(f"{label}['frames']" if isinstance(value, Mapping) else label,
                                                    frames, num_frames, "frames")
    steps = None if steps is None else _sequence(f"{label}['steps']", steps, num_steps, "steps")
    return frames, steps


class CallGates:
    """The gates of one call. `scale(name)`: the scalar factor of adapter `name`'s weight at the current `step`;
    `spatial` / `temporal` / `tokens`: its varying gate `(rows, tokens, 1)` in a layer's token layout (None when it
    has none: then it acts everywhere with its scaled weight)."""

    def __init__(self, masks: Mapping | None, schedules: Mapping | None, *, active: list[str],
                 num_frames: int | None, num_steps: int | None):
        self.step = 0  # the denoising step (`set_denoising_step`)
        self.num_steps = num_steps
        self.fields: dict[str, torch.Tensor] = {}  # name -> (F or 1, H, W) varying gate
        self.constants: dict[str, float] = {}  # name -> the constant value of a gate that does not vary
        self.steps: dict[str, tuple[float, ...]] = {}  # name -> per-step factors
        self._levels: dict = {}  # (name, frames, size) -> the gate at that level (CPU, float64)
        self._placed_gates: dict = {}  # (layout, name, ..., device, dtype) -> the gate in a layer's token layout
        for kind, given in (("adapter_masks", masks), ("adapter_schedules", schedules)):
            if given is not None and not isinstance(given, Mapping):
                raise ValueError(f"{kind}={type(given).__name__}; give a dict keyed by active adapter name")
            for name in given or {}:
                if name not in active:
                    raise ValueError(f"{kind}[{name!r}]: {name!r} is not an active adapter; the active adapters are "
                                     f"{active}")
        masks = {name: mask for name, mask in (masks or {}).items() if mask is not None}  # None: no mask
        schedules = {name: schedule for name, schedule in (schedules or {}).items() if schedule is not None}
        fields = {name: normalise_mask(f"adapter_masks[{name!r}]", mask, num_frames) for name, mask in masks.items()}
        for name, schedule in schedules.items():
            frames, steps = normalise_schedule(f"adapter_schedules[{name!r}]", schedule, num_frames, num_steps)
            if steps is not None:
                self.steps[name] = steps
            if frames is not None:
                factor = torch.tensor(frames, dtype=torch.float64).view(-1, 1, 1)
                fields[name] = factor * fields[name] if name in fields else factor
        for name, field in fields.items():
            if bool((field == field.flatten()[0]).all()):  # constant: folds into the weight
                self.constants[name] = float(field.flatten()[0])
            else:
                self.fields[name] = field

    @property
    def names(self) -> set[str]:
        return set(self.fields) | set(self.constants) | set(self.steps)

    def scale(self, name: str) -> float:
        """The factor of adapter `name`'s weight now: its constant gate times its factor at the current step."""
        factor = self.constants.get(name, 1.0)
        if name in self.steps:
            steps = self.steps[name]
            if not 0 <= self.step < len(steps):
                raise ValueError(f"adapter_schedules[{name!r}]['steps'] has {len(steps)} values but the call is at "
                                 f"denoising step {self.step}")
            factor *= steps[self.step]
        return factor

    def level(self, name: str, frames: int, size: tuple[int, int]) -> torch.Tensor | None:
        """Adapter `name`'s varying gate at a level of `frames` frames (1: the same for all) and `size` (h, w):
        `(frames or 1, h, w)`, or None when it has none."""
        field = self.fields.get(name)
        if field is None:
            return None
        key = (name, frames, tuple(size))
        if key not in self._levels:
            self._levels[key] = _resize(_to_frames(field, frames, name), size)
        return self._levels[key]

    def spatial(self, name: str, *, frames: int, size: tuple[int, int], rows: int,
                window: tuple[int, int] | None, like: torch.Tensor) -> torch.Tensor | None:
        """UNet spatial layout `(rows, h*w, 1)`, rows = batch*frames (frame inner), or the `window` of them that
        FreeNoise split inference hands this call."""
        if name not in self.fields:
            return None

        def build():
            gate = self.level(name, frames, size).flatten(1)[..., None]  # (frames or 1, h*w, 1)
            start, stop = window if window is not None else (0, rows)
            index = torch.arange(start, stop) % frames if gate.shape[0] > 1 else torch.zeros(stop - start,
                                                                                              dtype=torch.long)
            return gate[index]

        return self._placed(("spatial", name, frames, tuple(size), rows, window), build, like)

    def temporal(self, name: str, *, frames: int, size: tuple[int, int], rows: int, window_frames: int,
                 like: torch.Tensor, window: tuple[int, int] | None = None) -> torch.Tensor | None:
        """UNet temporal layout `(rows, window_frames, 1)`, rows = batch*h*w (pixel inner); `window`: the rows
        `[start, stop)` of them that split inference hands this call (None: all)."""
        if name not in self.fields:
            return None

        def build():
            gate = self.level(name, frames, size).flatten(1).T  # (h*w, frames or 1)
            if gate.shape[1] == 1:
                gate = gate.expand(-1, window_frames)
            elif window_frames != frames:
                raise ValueError(f"adapter_masks / adapter_schedules[{name!r}]: a gate that varies over frames "
                                 f"cannot act on FreeNoise's {window_frames}-frame windows of {frames} frames at "
                                 "temporal attention; give an (H, W) mask and no frame schedule, or run without "
                                 "enable_free_noise")
            return gate.repeat(rows // gate.shape[0], 1)[..., None]

        gate = self._placed(("temporal", name, frames, tuple(size), rows, window_frames), build, like)
        return gate if window is None else gate[window[0]:window[1]]

    def tokens(self, name: str, *, grid: tuple[int, int, int], batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """DiT layout `(batch, f*h*w, 1)`, frame-major, for the token `grid` (f, h, w)."""
        if name not in self.fields:
            return None

        def build():
            gate = self.level(name, grid[0], grid[1:]).expand(grid[0], -1, -1).reshape(1, -1, 1)
            return gate.expand(batch, -1, -1)

        return self._placed(("tokens", name, tuple(grid), batch), build, like)

    def _placed(self, key: tuple, build, like: torch.Tensor) -> torch.Tensor:
        """`build()` on `like`'s device and dtype, once per call for each layout (layers of a level share it)."""
        key = (*key, like.device, like.dtype)
        if key not in self._placed_gates:
            self._placed_gates[key] = build().to(like.device, like.dtype)
        return self._placed_gates[key]


def _to_frames(field: torch.Tensor, frames: int, name: str) -> torch.Tensor:
    """`(F or 1, H, W)` -> `(frames or 1, H, W)`. F video frames map onto fewer latent frames the way a causal video
    VAE groups them (Wan: latent frame 0 is frame 0, latent frame k the mean of the t frames before it and itself,
    t = (F - 1) / (frames - 1))."""
    count = field.shape[0]
    if count in (1, frames):
        return field
    if frames > 1 and (count - 1) % (frames - 1) == 0:
        t = (count - 1) // (frames - 1)
        rest = field[1:].view(frames - 1, t, *field.shape[1:]).mean(dim=1)
        return torch.cat([field[:1], rest])
    raise ValueError(f"adapter_masks / adapter_schedules[{name!r}] has {count} frames, which do not map onto this "
                     f"layer's {frames} frames; give (H, W) or one value per video frame")


def _resize(field: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(frames, H, W)` -> `(frames, h, w)`. Area averaging when the level is smaller (each token gets the mean of
    the mask pixels it covers, its covered share: no aliasing, and a binary edge on token boundaries stays binary);
    bilinear when the level is larger than the mask (area would be a blocky nearest copy)."""
    h, w = size
    if tuple(field.shape[1:]) == (h, w):
        return field
    if field.shape[1:] == (1, 1):
        return field.expand(-1, h, w)
    shrink = h <= field.shape[1] and w <= field.shape[2]
    resized = F.interpolate(field[:, None], size=(h, w), mode="area" if shrink else "bilinear",
                            **({} if shrink else {"align_corners": False}))
    return resized[:, 0]


def temporal_level(sizes: Mapping[str, tuple[int, int]], layer_name: str, pixels: int | None) -> tuple[int, int]:
    """`(h, w)` of the level a UNet temporal layer runs at, from the spatial sizes the call recorded: the one level
    of its block's spatial transformers (`down_blocks.1.motion_modules.0...` -> `down_blocks.1.attentions...`; a
    block's resampler comes after them), else any recorded level of `pixels` (h*w) pixels."""
    prefix = layer_name.split(".motion_modules.")[0] + "."
    found = list({size for layer, size in sizes.items() if layer.startswith(prefix)})
    if len(found) != 1 and pixels is not None:
        found = [size for size in sizes.values() if size[0] * size[1] == pixels]
    if not found or len(set(found)) > 1:
        raise ValueError(f"{layer_name}: the level size of its {pixels} pixels was not recorded (or is ambiguous: "
                         f"{sorted(set(found))}); run the whole UNet so that the MIVA hooks record the level sizes")
    return found[0]


def set_denoising_step(state: Any, index: int) -> None:
    """Tell the call `state` (a `CallState`) which denoising step runs now (per-step schedules)."""
    if getattr(state, "gates", None) is not None:
        state.gates.step = index

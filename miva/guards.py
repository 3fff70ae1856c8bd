"""Checks for values where they enter miva (config constructors, loaders, pipeline arguments, trainer state).

Each check raises one `TypeError` (wrong kind of value) or `ValueError` (right kind, bad value) whose message
starts with the name of the argument, key or file, shows the value and says what would be valid, so a user can fix
the input from the message alone. They return the value (normalised where said) so callers can write
`x = check_int("num_frames", x, minimum=2)`.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
from typing import Any

import torch

__all__ = [
    "MAX_RANK",
    "check_finite_tensor",
    "check_float",
    "check_int",
    "did_you_mean",
    "read_json_object",
]

# Ranks far beyond any attention width only reach the allocator; SD1.5's widest layer has 1280 channels.
MAX_RANK = 4096


def did_you_mean(word: Any, options, *, cutoff: float = 0.6) -> str:
    """`"; did you mean 'x'?"` for the option closest to `word` (a case slip first, then difflib), or `""`.

    The one "did you mean" of miva: config keys and values, adapter config fields, PE modes, trainer settings.
    """
    names = [str(o) for o in options]
    by_case = {n.lower(): n for n in names}
    close = [by_case[str(word).lower()]] if str(word).lower() in by_case and str(word) not in names else []
    close = close or difflib.get_close_matches(str(word), names, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An `int` (not a bool) within `[minimum, maximum]`; numpy / torch integer scalars are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={_show(value)} must be an int, got {type(value).__name__}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = " and ".join(
            b
            for b in (f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else "")
            if b
        )
        raise ValueError(f"{name}={value!r} must be an int {bounds}")
    return value


def check_float(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_low: bool = False,
) -> float:
    """A finite real number (not a bool) within the bounds (`open_low`: strictly above `minimum`); returns a float.

    NaN and infinity are refused: one of them in a weight or scale turns every output frame into NaN.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
            value = value.item()
        else:
            raise TypeError(f"{name}={_show(value)} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number (not NaN or infinity)")
    low_ok = minimum is None or (value > minimum if open_low else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if open_low else '>='} {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        raise ValueError(f"{name}={value!r} must be {' and '.join(bounds)}")
    return value


def check_finite_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor without NaN or infinity (integer tensors always pass)."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name}: {bad} of {tensor.numel()} values are NaN or infinite (shape {tuple(tensor.shape)}); "
            "pass finite values"
        )
    return tensor


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """The JSON object (a dict) stored in `path` as UTF-8; `ValueError` naming the file for anything else
    (not UTF-8, not JSON, a list or null at the top)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise ValueError(f"{os.fspath(path)}: is a folder, expected a {what}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text (byte {e.start}), so not a valid {what}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)} is not valid JSON ({what}): {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: holds a JSON {type(data).__name__}, expected an object of keys ({what})")
    return data

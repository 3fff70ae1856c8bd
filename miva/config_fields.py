"""Typed, checked config sections: the small machinery behind `miva.config`.

A section is a dataclass whose fields are declared with :func:`key`; each carries a *check*, a function
`check(path, value) -> value` that returns the normalised value or raises :class:`ConfigError` with a one-line
message that starts with the dotted key path (`unet_additional_kwargs.ca_pe_mode: ...`) and, where it helps, the
closest valid key or value (difflib).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

Check = Callable[[str, Any], Any]
# Names other research / AnimateDiff / LAMP configs use for one of our keys (for the "did you mean" hint).
RESEARCH_ALIASES = {
    "seed": "global_seed",
    "video_path": "video_root",
    "video_folder": "video_root",
    "sample_n_frames": "n_sample_frames",
    "sample_stride": "sample_frame_rate",
    "n_prompt": "negative_prompt",
    "mixed_precision_training": "mixed_precision",
}


class ConfigError(ValueError):
    """A bad config key or value; the message is one line and starts with the key path."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def suggest(word: Any, options) -> str:
    """`"; did you mean 'x'?"` for the closest of `options` to `word`, or `""`."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def key(default: Any = None, check: Check | None = None, help: str = "", dest: str = "", factory=None):
    """A section field: its default (or `factory`), its check, what it means and where it acts."""
    metadata = {"check": check or (lambda path, value: value), "help": help, "dest": dest}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_section(cls, data: Any, prefix: str = ""):
    """Build section dataclass `cls` from the mapping `data`, checking every key; `prefix` is the section's path."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            alias = RESEARCH_ALIASES.get(name)
            hint = f"; did you mean {alias!r}?" if alias in fields else suggest(name, fields)
            raise ConfigError(f"{path}: unknown key{hint or f'; valid keys: {sorted(fields)}'}")
        values[name] = fields[name].metadata["check"](path, value)
    parsed = cls(**values)
    object.__setattr__(parsed, EXPLICIT_KEYS, frozenset(values))  # which keys the YAML set (the rest: defaults)
    return parsed


EXPLICIT_KEYS = "_explicit_keys"


def explicit_keys(parsed) -> frozenset[str]:
    """The keys of a section that its YAML (or `--set`) gave, as recorded by `parse_section`."""
    return getattr(parsed, EXPLICIT_KEYS, frozenset())


def section(cls) -> Check:
    return lambda path, value: parse_section(cls, value, path)


def section_to_dict(obj) -> dict[str, Any]:
    """A section (nested sections included) back to plain YAML-able data."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = section_to_dict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------- checks
def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {value!r} must be true or false")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(path, value):
        ok = not isinstance(value, bool) and isinstance(value, int)
        if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bound = f" >= {minimum}" if minimum is not None else ""
            bound += f"{' and' if bound else ''} <= {maximum}" if maximum is not None else ""
            raise ConfigError(f"{path}: {value!r} must be an integer{bound}")
        return value

    return check


def number(minimum: float | None = None, maximum: float | None = None, open_low: bool = False) -> Check:
    def check(path, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and minimum is not None:
            ok = value > minimum if open_low else value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            bounds = []
            if minimum is not None:
                bounds.append(f"{'>' if open_low else '>='} {minimum}")
            if maximum is not None:
                bounds.append(f"<= {maximum}")
            raise ConfigError(
                f"{path}: {value!r} must be a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
            )
        return float(value)

    return check


def string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {value!r} must be a string")
    return value


def path_value(path: str, value: Any) -> str | None:
    """A file/folder/Hub id; `""` and null mean unset (AnimateDiff configs write `""`)."""
    if value is None or value == "":
        return None
    return string(path, value)


def optional(check: Check) -> Check:
    return lambda path, value: None if value is None else check(path, value)


def choice(values, aliases: Mapping[Any, Any] | None = None) -> Check:
    """One of `values`; `aliases` maps other accepted spellings to one of them (e.g. YAML's `on` -> True)."""

    def check(path, value):
        for alias, target in (aliases or {}).items():
            if _same(value, alias):
                return target
        if not any(_same(value, v) for v in values):
            raise ConfigError(f"{path}: {value!r} is not one of {list(values)}{suggest(value, values)}")
        return value

    return check


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (so YAML's `true` is not the integer 1)."""
    return type(a) is type(b) and a == b


def fixed(accepted: list, reason: str) -> Check:
    """A research key that must keep one of its research values; anything else is rejected with `reason`."""

    def check(path, value):
        if not any(_same(value, a) for a in accepted):
            shown = accepted[0] if len(accepted) == 1 else accepted
            raise ConfigError(f"{path}: {value!r} is not supported (accepted: {shown!r}): {reason}")
        return value

    return check


def list_of(check: Check, min_length: int = 0) -> Check:
    def run(path, value):
        if not isinstance(value, (list, tuple)) or len(value) < min_length:
            raise ConfigError(
                f"{path}: {value!r} must be a list" + (f" of >= {min_length} entries" if min_length else "")
            )
        return [check(f"{path}[{i}]", v) for i, v in enumerate(value)]

    return run


def one_or_list(check: Check) -> Check:
    """A single value, or a list of them (one per adapter)."""
    return lambda path, value: (
        list_of(check, 1)(path, value) if isinstance(value, (list, tuple)) else check(path, value)
    )


def mapping(path: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: {value!r} must be a mapping")
    return dict(value)

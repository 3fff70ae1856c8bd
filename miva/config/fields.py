"""Typed, checked config sections: the small machinery behind `miva.config` (both layouts use it).

A section is a dataclass whose fields are declared with :func:`key`; each carries
- a *check*, a function `check(path, value) -> value` that returns the normalised value or raises
  :class:`ConfigError` naming the dotted key path, the value and what is valid (and, where it helps, the closest
  valid key or value: `miva.guards.did_you_mean`). Every rule is one check here, used by every layout;
- `feeds`: the target fields it sets (`"MIVAAdapterConfig.ca_lora_rank"`, `"TrainConfig.num_frames"`), read by
  :func:`fed_values`, so a mapping onto a target is a declaration, not a copied argument list.

Messages render the subject as a YAML key path (`validation_data.width: 100 must be ...`) or, for the Python API
(`TrainConfig(width=100)`), as a keyword (`width=100 must be ...`): :meth:`ConfigError.as_keyword`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from ..guards import did_you_mean

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
    """A bad config key or value; the message is one line and starts with the key path.

    Raised by :func:`fail` or :func:`missing` it also keeps `path`, `value` and `problem`, so one rule can be shown
    in the keyword form of the Python API (:meth:`as_keyword`) or for the YAML key that feeds a field
    (:meth:`renamed`)."""

    def __init__(self, message: str, *, path: str | None = None, value: Any = None, problem: str | None = None):
        super().__init__(" ".join(str(message).split()))
        self.path, self.value, self.problem = path, value, problem

    def renamed(self, path: str) -> ConfigError:
        """The same error for key path `path` (`"<path>: <value!r> <problem>"` / `"<path>: required ..."`)."""
        if self.problem is None:
            return self
        if self.value is _MISSING:
            return missing(path, self.problem)
        return fail(path, self.value, self.problem)

    def as_keyword(self) -> ConfigError:
        """The same error with the subject written `name=value` (a keyword argument) instead of `path: value`."""
        if self.problem is None:
            return self
        subject = f"{self.path} is required" if self.value is _MISSING else f"{self.path}={self.value!r}"
        return ConfigError(f"{subject} {self.problem}", path=self.path, value=self.value, problem=self.problem)


_MISSING = object()


def fail(path: str, value: Any, problem: str) -> ConfigError:
    """The error of one rule: `"<path>: <value!r> <problem>"` (see :meth:`ConfigError.as_keyword`)."""
    return ConfigError(f"{path}: {value!r} {problem}", path=path, value=value, problem=problem)


def missing(path: str, problem: str) -> ConfigError:
    """A required key is unset: `"<path>: required <problem>"` (keyword form `"<path> is required <problem>"`)."""
    return ConfigError(f"{path}: required {problem}", path=path, value=_MISSING, problem=problem)


suggest = did_you_mean  # the one "did you mean" (miva.guards), under its config name


def key(default: Any = None, check: Check | None = None, help: str = "", *, feeds: str | tuple = (), factory=None,
        convert: Callable | None = None, per_adapter: bool = False):
    """A section field: its default (or `factory`), its check, what it means (`help`) and the target fields it
    sets (`feeds`: `"Target.field"` or a tuple of them; `convert` maps the value for them; `per_adapter`: a list
    holds one value per adapter)."""
    metadata = {"check": check or (lambda path, value: value), "help": help,
                "feeds": (feeds,) if isinstance(feeds, str) else tuple(feeds), "convert": convert,
                "per_adapter": per_adapter}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def fed_values(obj, target: str, prefix: str = "") -> dict[str, tuple[str, Any, bool]]:
    """`{target field: (key path, value, per_adapter)}` for every field of section `obj` (nested sections
    included) whose `feeds` names `target` (e.g. `"TrainConfig"`); values pass through the field's `convert`."""
    found = {}
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found.update(fed_values(value, target, f"{path}."))
        for dest in f.metadata.get("feeds", ()):
            owner, _, name = dest.partition(".")
            if owner == target:
                convert = f.metadata.get("convert")
                found[name] = (path, convert(value) if convert else value, f.metadata.get("per_adapter", False))
    return found


def unknown_key(path: str, name: Any, valid) -> ConfigError:
    """`<path>: unknown key; did you mean 'x'?` (or the valid keys); research aliases are suggested too."""
    alias = RESEARCH_ALIASES.get(name)
    hint = f"; did you mean {alias!r}?" if alias in valid else suggest(name, valid)
    return ConfigError(f"{path}: unknown key{hint or f'; valid keys: {sorted(valid)}'}")


def check_fields(obj, prefix: str = "") -> None:
    """Run the declared check of every field of dataclass `obj` in place (the Python API's validation); errors
    name the field as a keyword (`width=100 must be ...`)."""
    for f in dataclasses.fields(obj):
        if "check" in f.metadata:
            try:
                setattr(obj, f.name, f.metadata["check"](f"{prefix}{f.name}", getattr(obj, f.name)))
            except ConfigError as e:
                raise e.as_keyword() from None


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
            raise unknown_key(path, name, fields)
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
        raise fail(path, value, "must be true or false")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(path, value):
        ok = not isinstance(value, bool) and isinstance(value, int)
        if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bound = f" >= {minimum}" if minimum is not None else ""
            bound += f"{' and' if bound else ''} <= {maximum}" if maximum is not None else ""
            raise fail(path, value, f"must be an integer{bound}")
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
            raise fail(path, value, "must be a finite number" + (f" {' and '.join(bounds)}" if bounds else ""))
        return float(value)

    return check


def string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise fail(path, value, "must be a string")
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
            raise fail(path, value, f"is not one of {list(values)}{suggest(value, values)}")
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
            raise fail(path, value, f"is not supported (accepted: {shown!r}): {reason}")
        return value

    return check


def list_of(check: Check, min_length: int = 0) -> Check:
    def run(path, value):
        if not isinstance(value, (list, tuple)) or len(value) < min_length:
            raise fail(path, value, "must be a list" + (f" of >= {min_length} entries" if min_length else ""))
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
        raise fail(path, value, "must be a mapping")
    return dict(value)


def multiple_of_8(path: str, value: Any) -> int:
    """An image side: an integer in [8, 8192] divisible by 8."""
    integer(8, 8192)(path, value)
    if value % 8:
        raise fail(path, value, "must be a multiple of 8 (the VAE downsamples by 8)")
    return value


def frame_rate(path: str, value: Any) -> int | list[int]:
    """`sample_frame_rate`: a stride >= 1, or an inclusive `[min, max]` pair of them."""
    if isinstance(value, (list, tuple)):
        ok = len(value) == 2 and all(not isinstance(r, bool) and isinstance(r, int) and r >= 1 for r in value)
        if not ok or value[0] > value[1]:
            raise fail(path, value, "must be an int >= 1 or a [min, max] pair with min <= max")
        return list(value)
    return integer(1)(path, value)


def word(path: str, value: Any) -> str:
    """A single token: a non-empty string without spaces."""
    if not isinstance(value, str) or not value.strip() or " " in value.strip():
        raise fail(path, value, "must be a single word without spaces")
    return value


def local_path(path: str, value: Any) -> str:
    """A non-empty file or folder path (`str` or `os.PathLike`), returned as `str`."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise fail(path, value, "must be a non-empty path")
    return str(value)


# ---------------------------------------------------------------------------------------------------- overrides
def apply_overrides(data: Mapping, overrides: list[str] | None) -> dict[str, Any]:
    """The one override parser (`--set`): `key.path=value` items merged into `data` as an OmegaConf dotlist.

    Values are YAML scalars or lists (`true`, `1e-4`, `[0.5,0.5]`, `null`); anything else stays a string.
    Returns a new plain dict; a malformed item raises `ConfigError` naming it and the expected form.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(data, Mapping):
        if overrides:
            raise ConfigError(f"config: expected a mapping of keys, got {type(data).__name__} {data!r}")
        return data
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item!r}: an override looks like key.path=value (or key=value; e.g. "
                              "validation_data.width=64)")
    try:
        base = OmegaConf.create(dict(data or {}))
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_container(base, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """The plain data of a YAML file (`${...}` interpolations are resolved after overrides, by `apply_overrides`).

    Raises `FileNotFoundError` ("config file not found: ...") or `ConfigError` ("<path>: not valid YAML: ...", or
    "<path>: not a text (YAML) file: ..." for binary data). Every command reads its config through here.
    """
    import yaml
    from omegaconf import OmegaConf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {os.fspath(path)}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")  # what OmegaConf.load reads it as; checked first for a message naming the file
    except UnicodeDecodeError as e:
        raise ConfigError(f"{os.fspath(path)}: not a text (YAML) file: byte 0x{raw[e.start]:02x} at position "
                          f"{e.start} is not UTF-8") from None
    if "\x00" in text:  # valid UTF-8 but binary (e.g. zero-filled)
        raise ConfigError(f"{os.fspath(path)}: not a text (YAML) file: NUL byte at position {text.index(chr(0))}")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except yaml.YAMLError as e:
        raise ConfigError(f"{os.fspath(path)}: not valid YAML: {e}") from None

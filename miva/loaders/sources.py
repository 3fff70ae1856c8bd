"""Resolve an adapter *source* to tensors and a config, reading files safely.

A source is one of:

- a local folder with `adapter_config.json` + `miva_adapter.safetensors` (the native layout, see `adapter_io.py`);
- a single `.safetensors` file: a native adapter file (its config is in the safetensors metadata `miva_config`,
  or in an `adapter_config.json` beside it) or a research full-UNet checkpoint (`model.safetensors`, docs/research.md#research-checkpoints);
- a single `.pt` file: a research adapter checkpoint (`adapter.pt`, `combined.pt`, one of the split files);
- a Hub repo id (`"user/miva-waterfall"`), resolved with `hf_hub_download` (revision, subfolder, cache, token,
  offline mode);
- a dict of research split checkpoints `{"adapter_i2v_path": ..., "adapter_lora_path": ..., "ca_lora_path": ...}`
  (any may be None), optionally with `"config"` (a `MIVAAdapterConfig` or a dict of its fields) and
  `"adapter_index"` (which adapter of a multi-adapter research state dict). Lists as values (the research yaml's
  multi-adapter form) stand for one adapter per position: see :func:`expand_sources`.

Safety: safetensors first; `.pt` only through `torch.load(weights_only=True)`. A pickle that needs anything beyond
tensors and containers is refused before any of its code runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import recover_folder
from ..attention_processors.adapter_config import MIVAAdapterConfig
from ..backbones.declared import UNET, check_recorded_backbone
from ..guards import read_json_object
from .research_keys import RESEARCH_ADAPTER_MARKERS, needed_base_key

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "miva_adapter.safetensors"
SAMPLE_NAME = "sample.gif"
HUB_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")
RESEARCH_PATH_KEYS = ("adapter_i2v_path", "adapter_lora_path", "ca_lora_path")
RESEARCH_DICT_KEYS = (*RESEARCH_PATH_KEYS, "config", "adapter_index")
# Substrings that mark a research UNet key as adapter state (everything else is the frozen base).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class AdapterSource:
    """What one source holds, read from disk.

    `kind="native"`: `tensors` has native keys (`<layer>.<part>`, `text_embeddings.<token>`) and `config` is set.
    `kind="research"`: `tensors` has research UNet keys of adapter state only, `base` the research base weights the
    conversion may need (attn2 `to_out.0`, attn1 `to_q/k/v`; empty for split checkpoints), `config` is the explicit
    config or None (then inferred from tensor shapes with defaults for the rest).
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    config: MIVAAdapterConfig | None
    origin: str
    default_name: str
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    adapter_index: int | None = None
    sample: Path | None = None


# ---------------------------------------------------------------------------------------------------- file readers


def read_safetensors(path: str | os.PathLike, keys=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`(tensors, metadata)` of a safetensors file; `keys` (a predicate on key names) reads only matching tensors.

    A truncated or corrupt file raises `ValueError` naming the file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            names = [k for k in f.keys() if keys is None or keys(k)]
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    return tensors, metadata


def read_torch_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `{key: tensor}` dict from a `.pt`/`.ckpt`/`.bin`, loaded with `torch.load(weights_only=True)` only.

    Accepts a bare dict or `{"state_dict": {...}}` (as the research loaders do). Anything that needs arbitrary code
    to unpickle is refused with `ValueError` before any of it runs.
    """
    try:
        data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Refused: a well-formed pickle that asks for more than tensors and containers, or a damaged file.
        from .pickle_check import pickle_is_damaged

        if pickle_is_damaged(path):
            raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt?)") from None
        reason = next((line for line in str(e).splitlines() if "unsupported" in line.lower()), type(e).__name__)
        raise ValueError(
            f"{path} needs arbitrary code to load (it is not a plain dict of tensors) and was refused: miva loads "
            f"`.pt` files only with torch.load(weights_only=True). Convert it to safetensors in a trusted "
            f"environment. Unpickler said: {reason.strip()}"
        ) from None
    except Exception as e:  # zip, storage and unpickler errors of a damaged file come in many types
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {e!r:.300}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a dict of tensors (or {{'state_dict': ...}})")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(
            f"{path}: entry {bad[0]!r} is not a tensor keyed by a string (got {type(data[bad[0]]).__name__})"
        )
    return data


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (by extension) or of a torch pickle (weights only)."""
    if os.fspath(path).endswith(".safetensors"):
        return read_safetensors(path)[0]
    return read_torch_file(path)


# ---------------------------------------------------------------------------------------------------- helpers


def check_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = [k for k in kwargs if k not in HUB_KWARGS]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; valid: {list(HUB_KWARGS)} (and config=)")
    return {k: v for k, v in kwargs.items() if v is not None}


def sanitize_name(text: str) -> str:
    """A valid adapter name (letters, digits, '_' or '-') from a file or repo name."""
    name = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")
    return name or "adapter"


def unet_config(data: Any, where: str) -> MIVAAdapterConfig:
    """A UNet adapter's `MIVAAdapterConfig` from the dict of its fields; an adapter recorded for another backbone
    (a Wan folder) is refused first, naming both (`miva.backbones.declared`)."""
    check_recorded_backbone(data, UNET, where)
    return MIVAAdapterConfig.from_dict(data)


def _unet_config_file(path) -> MIVAAdapterConfig:
    check_recorded_backbone(read_json_object(path, ADAPTER_CONFIG_NAME), UNET, os.fspath(Path(path).parent))
    return MIVAAdapterConfig.from_json_file(path)


def _as_config(value: Any, where: str) -> MIVAAdapterConfig | None:
    if value is None or isinstance(value, MIVAAdapterConfig):
        return value
    if isinstance(value, dict):
        return unet_config(value, where)
    raise TypeError(f"{where}: config must be a MIVAAdapterConfig or a dict of its fields, got {type(value).__name__}")


def is_research_source(source: Any) -> bool:
    return isinstance(source, dict)


def expand_sources(sources: Any) -> list[Any]:
    """A single source or a list -> a flat list; a research dict whose paths are lists (the research yaml's
    multi-adapter form, e.g. `{"adapter_lora_path": [a1, a2], "ca_lora_path": [c1, c2]}`) -> one dict per adapter."""
    if isinstance(sources, (str, os.PathLike, dict)):
        sources = [sources]
    if not isinstance(sources, (list, tuple)):
        raise TypeError(
            f"sources={sources!r:.80} must be an adapter source (a path, a Hub repo id or a research checkpoint "
            "dict) or a list of them"
        )
    out = []
    for source in sources:
        if not isinstance(source, dict):
            out.append(source)
            continue
        unknown = [k for k in source if k not in RESEARCH_DICT_KEYS]
        if unknown:
            raise ValueError(
                f"research checkpoint dict has unknown key {unknown[0]!r}; valid: {list(RESEARCH_DICT_KEYS)}"
            )
        lengths = {len(v) for k, v in source.items() if k in RESEARCH_PATH_KEYS and isinstance(v, (list, tuple))}
        if not lengths:
            out.append(source)
            continue
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in source.items() if isinstance(v, (list, tuple))}
            raise ValueError(f"research checkpoint lists must have equal lengths (one entry per adapter), got {sizes}")
        (n,) = lengths
        for i in range(n):
            item = {
                k: (v[i] if isinstance(v, (list, tuple)) and k in RESEARCH_PATH_KEYS else v) for k, v in source.items()
            }
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------- resolution


def resolve_source(source: Any, *, config: MIVAAdapterConfig | dict | None = None, **hub_kwargs) -> AdapterSource:
    """Read `source` (see the module docstring) into an :class:`AdapterSource`.

    `config` is used for research sources only (native adapters carry their own); `hub_kwargs` are
    `revision`, `subfolder`, `cache_dir`, `token`, `local_files_only`, `force_download`.
    """
    hub_kwargs = check_hub_kwargs(hub_kwargs)
    config = _as_config(config, "config=")
    if isinstance(source, dict):
        return _resolve_research_dict(source, config)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"adapter source must be a path, a Hub repo id or a research checkpoint dict, got {source!r}")
    path = Path(source)
    if not path.exists():
        with contextlib.suppress(OSError):  # a folder a crash left renamed aside mid-write (`atomic.py`)
            recover_folder(path)
    if hub_kwargs.get("subfolder") and path.is_dir():
        path = path / hub_kwargs["subfolder"]
    if path.is_dir():
        return _resolve_folder(path)
    if path.is_file():
        return _resolve_file(path, config)
    if isinstance(source, str) and _HUB_ID.match(source):
        return _resolve_hub(source, hub_kwargs)
    raise FileNotFoundError(
        f"adapter source {os.fspath(source)!r} is neither an existing folder or file nor a Hub repo id ('user/name')"
    )


def _read_native_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from .integrity import verify_checksum

    tensors, metadata = read_safetensors(path)
    fmt = metadata.get("format")
    if fmt not in (None, "miva"):
        raise ValueError(f"{path}: safetensors metadata format={fmt!r}, expected 'miva' (a MIVA adapter file)")
    verify_checksum(path, tensors, metadata)
    return tensors, metadata


def _resolve_folder(folder: Path) -> AdapterSource:
    config_path, weights_path = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(
            f"{folder} is not a MIVA adapter folder: {missing} missing (found {present}); "
            f"a native adapter has {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}"
        )
    tensors, metadata = _read_native_weights(weights_path)
    config = _unet_config_file(config_path)
    _warn_if_config_differs(config, metadata, config_path)
    sample = folder / SAMPLE_NAME
    return AdapterSource(
        "native",
        tensors,
        config,
        os.fspath(folder),
        sanitize_name(folder.resolve().name),
        sample=sample if sample.is_file() else None,
    )


def _warn_if_config_differs(config: MIVAAdapterConfig, metadata: dict[str, str], config_path: Path) -> None:
    """The weights file keeps a checksummed copy of the config it was saved with: say so when the folder's
    `adapter_config.json` now differs (edited by hand, or damaged)."""
    try:
        saved = MIVAAdapterConfig.from_dict(json.loads(metadata["miva_config"])).to_dict()
    except Exception:  # no copy (older files) or an unreadable one: nothing to compare
        return
    changed = {k: (saved[k], v) for k, v in config.to_dict().items() if saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        logger.warning(f"{config_path} differs from the config saved in {ADAPTER_WEIGHTS_NAME} ({detail}); using it")


def _resolve_file(path: Path, config: MIVAAdapterConfig | None) -> AdapterSource:
    name = sanitize_name(path.stem)
    if path.suffix != ".safetensors":  # a research .pt (adapter.pt, combined.pt, one split file)
        return _research_source(read_torch_file(path), {}, config, os.fspath(path), name)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata, keys = dict(f.metadata() or {}), list(f.keys())
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    sibling = path.parent / ADAPTER_CONFIG_NAME
    if metadata.get("format") == "miva" or sibling.is_file():
        tensors, metadata = _read_native_weights(path)
        if "miva_config" in metadata:
            try:
                native_config = unet_config(json.loads(metadata["miva_config"]), os.fspath(path))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: safetensors metadata 'miva_config' is not valid JSON: {e}") from None
            except (TypeError, ValueError) as e:
                raise type(e)(f"{path}: safetensors metadata 'miva_config': {e}") from None
        elif sibling.is_file():
            native_config = _unet_config_file(sibling)
        else:
            raise ValueError(
                f"{path} has no 'miva_config' in its safetensors metadata and no {ADAPTER_CONFIG_NAME} "
                "beside it, so its adapter config is unknown"
            )
        return AdapterSource("native", tensors, native_config, os.fspath(path), name)
    research_layout = any(m in key for key in keys for m in (".processor.", "i2v_adapter", "temporal_transformer"))
    if research_layout and any(marker in key for key in keys for marker in RESEARCH_ADAPTER_MARKERS):
        tensors, _ = read_safetensors(
            path, keys=lambda k: any(m in k for m in RESEARCH_ADAPTER_MARKERS) or needed_base_key(k)
        )
        adapter = {k: v for k, v in tensors.items() if any(m in k for m in RESEARCH_ADAPTER_MARKERS)}
        base = {k: v for k, v in tensors.items() if k not in adapter}
        return _research_source(adapter, base, config, os.fspath(path), name)
    raise ValueError(
        f"{path} is neither a MIVA adapter file (safetensors metadata format='miva', or an "
        f"{ADAPTER_CONFIG_NAME} beside it) nor a research UNet checkpoint (no adapter keys such as "
        f"'...attn2.processor.to_k_lora.down.weight')"
    )


def _research_source(tensors, base, config, origin, name, adapter_index=None) -> AdapterSource:
    adapter = {k: v for k, v in tensors.items() if any(m in k for m in RESEARCH_ADAPTER_MARKERS)}
    if not adapter:
        raise ValueError(
            f"{origin} holds no research adapter keys (keys containing one of "
            f"{list(RESEARCH_ADAPTER_MARKERS)}); first keys: {list(tensors)[:3]}"
        )
    return AdapterSource("research", adapter, config, origin, name, base=base, adapter_index=adapter_index)


def _resolve_research_dict(source: dict, config: MIVAAdapterConfig | None) -> AdapterSource:
    unknown = [k for k in source if k not in RESEARCH_DICT_KEYS]
    if unknown:
        raise ValueError(f"research checkpoint dict has unknown key {unknown[0]!r}; valid: {list(RESEARCH_DICT_KEYS)}")
    paths = {k: source.get(k) for k in RESEARCH_PATH_KEYS if source.get(k) is not None}
    if not paths:
        raise ValueError(f"research checkpoint dict names no file: give at least one of {list(RESEARCH_PATH_KEYS)}")
    merged: dict[str, torch.Tensor] = {}
    for role, path in paths.items():
        if isinstance(path, (list, tuple)):
            raise ValueError(f"{role} is a list: pass the dict through load_adapters (one adapter per list entry)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{role}={os.fspath(path)!r} does not exist")
        for key, value in read_checkpoint(path).items():
            if key in merged and not torch.equal(merged[key], value):
                raise ValueError(f"key {key!r} appears in two research checkpoints with different values ({role})")
            merged[key] = value
    config = _as_config(source.get("config"), "research dict 'config'") or config
    first = Path(next(iter(paths.values())))
    index = source.get("adapter_index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise ValueError(f"adapter_index={index!r} must be a non-negative int")
    origin = ", ".join(f"{k}={os.fspath(v)}" for k, v in paths.items())
    return _research_source(merged, {}, config, origin, sanitize_name(first.stem), adapter_index=index)


def _resolve_hub(repo_id: str, hub_kwargs: dict[str, Any]) -> AdapterSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        config_path = hf_hub_download(repo_id, ADAPTER_CONFIG_NAME, **hub_kwargs)
        weights_path = hf_hub_download(repo_id, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
    except Exception as e:  # the Hub client raises many kinds (offline, not found, auth); keep its message
        where = f"{repo_id}" + (f" (subfolder {hub_kwargs['subfolder']!r})" if hub_kwargs.get("subfolder") else "")
        raise OSError(
            f"could not get the MIVA adapter files {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME} of the "
            f"Hub repo {where}: {type(e).__name__}: {e}"
        ) from e
    try:
        sample = Path(hf_hub_download(repo_id, SAMPLE_NAME, **hub_kwargs))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        sample = None
    tensors, _ = _read_native_weights(Path(weights_path))
    return AdapterSource(
        "native",
        tensors,
        _unet_config_file(config_path),
        repo_id,
        sanitize_name(repo_id.split("/")[-1]),
        sample=sample,
    )

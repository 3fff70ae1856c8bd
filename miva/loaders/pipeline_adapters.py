"""The MIVA adapters of a whole pipeline folder: what `MIVAPipeline.save_pretrained` writes beside the stock
components and what `from_pretrained` (also through `custom_pipeline` and from the Hub) loads back.

Layout of a saved pipeline folder (the components exactly as diffusers writes them, the UNet stock):

    model_index.json, unet/, vae/, ...        diffusers' own files; the UNet holds no adapter tensors
    miva_adapters/miva_adapters.json          {"adapters": [...], "active": [[name, weight], ...],
                                               "parallel_mode": ..., "enabled": ...}
    miva_adapters/<name>/                     each adapter as a native adapter folder (`adapter_io.py`)

Why beside and not inside the UNet: the processors' adapter modules would otherwise land in the UNet's safetensors
under processor keys, which a stock `UNetMotionModel` does not know (it warns and drops them on every load).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..attention_processors.composition import check_not_fused
from .adapter_io import save_miva_adapter

logger = logging.getLogger(__name__)

ADAPTERS_DIR = "miva_adapters"
MANIFEST_NAME = "miva_adapters.json"


def _check_folder_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name == MANIFEST_NAME:
        raise ValueError(f"adapter name {name!r} cannot be a folder of {ADAPTERS_DIR}/; rename it before "
                         "save_pretrained (a name without '/' or '\\')")


def save_pipeline_adapters(unet, save_directory, *, text_encoder=None, tokenizer=None,
                           base_model: str | None = None) -> Path | None:
    """Write `save_directory/miva_adapters/` for the adapters loaded on `unet` (and remove a stale one); returns
    the folder, or None when no adapter is loaded."""
    target = Path(save_directory) / ADAPTERS_DIR
    context = getattr(unet, "miva_context", None)
    names = list(context.configs) if context is not None else []
    if context is not None:  # the UNet must be saved stock
        check_not_fused(context, "save_pretrained")
    for name in names:
        _check_folder_name(name)
    if target.exists():
        shutil.rmtree(target)  # an older save's adapters must not come back with this pipeline
    if not names:
        return None
    for name in names:
        save_miva_adapter(unet, name, target / name, text_encoder=text_encoder, tokenizer=tokenizer,
                          base_model=base_model)
    manifest = {
        "adapters": names,
        "active": [[name, float(weight)] for name, weight in context.active],
        "parallel_mode": context.parallel_mode,
        "enabled": context.enabled,
    }
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def find_pipeline_adapters(source) -> Path | None:
    """The `miva_adapters/` folder of a pipeline source: a local folder, or a Hub repo id (its default revision,
    fetched with huggingface_hub, from the cache when offline); None when it has none."""
    if source is None:
        return None
    local = Path(os.fspath(source))
    if local.is_dir():
        return local / ADAPTERS_DIR if (local / ADAPTERS_DIR / MANIFEST_NAME).is_file() else None
    from .model_card import is_hub_id

    if not isinstance(source, str) or not is_hub_id(source):
        return None
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        hf_hub_download(source, f"{ADAPTERS_DIR}/{MANIFEST_NAME}")
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError) as error:
        logger.debug("%s has no %s/%s: %s", source, ADAPTERS_DIR, MANIFEST_NAME, error)
        return None
    return Path(snapshot_download(source, allow_patterns=[f"{ADAPTERS_DIR}/*"])) / ADAPTERS_DIR


def load_pipeline_adapters(pipe, folder) -> list[str]:
    """Load the adapters of a `miva_adapters/` folder into `pipe` and restore which are active, their weights,
    the composition mode and whether adapters are enabled. Returns the loaded names."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    names = list(manifest["adapters"])
    for name in names:
        _check_folder_name(name)
    pipe.load_adapters([folder / name for name in names], adapter_names=names)
    active = manifest.get("active", [])
    pipe.set_adapters([name for name, _ in active], [float(w) for _, w in active],
                      parallel_mode=manifest.get("parallel_mode"))
    if not manifest.get("enabled", True):
        pipe.disable_adapters()
    return names

"""The adapter verbs of `MIVAWanPipeline` (`load_adapters`, `set_adapters`, `save_adapter`, ...), on the shared
mechanisms: `miva.attention_processors`' verbs on the transformer, the one native format, the official importer.

`MIVALoaderMixin` (the UNet pipeline's verbs) is written against `pipe.unet`; until the loader redesign makes it
backbone-neutral, these verbs do the same on `pipe.transformer` with the same names and arguments.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..attention_processors import (
    delete_miva_adapter,
    enable_miva_adapters,
    fuse_miva_adapters,
    set_miva_adapters,
    unfuse_miva_adapters,
)
from ..attention_processors.composition import check_not_fused
from ..backbones.wan.config import WanAdapterConfig
from ..backbones.wan.install import add_wan_adapter, install_miva_wan
from ..backbones.wan.io import load_official_wan_adapter, load_wan_adapter, save_wan_adapter
from ..loaders.model_card import is_hub_id
from ..loaders.pipeline_adapters import ADAPTERS_DIR, MANIFEST_NAME, find_pipeline_adapters, load_pipeline_adapters
from ..loaders.sources import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, check_hub_kwargs, sanitize_name

__all__ = ["WanAdapterVerbsMixin"]


def _hub_folder(repo_id: str, hub_kwargs: dict) -> Path:
    """The local folder (in the Hub cache) holding a native adapter's two files from `repo_id`."""
    from huggingface_hub import hf_hub_download

    hub_kwargs = check_hub_kwargs(hub_kwargs)
    try:
        hf_hub_download(repo_id, ADAPTER_CONFIG_NAME, **hub_kwargs)
        return Path(hf_hub_download(repo_id, ADAPTER_WEIGHTS_NAME, **hub_kwargs)).parent
    except OSError as error:  # huggingface_hub's messages do not name the repo
        raise OSError(f"adapter source {repo_id!r}: no Wan adapter ({ADAPTER_CONFIG_NAME} + {ADAPTER_WEIGHTS_NAME}) "
                      f"found on the Hub or in its cache: {error}") from None


class WanAdapterVerbsMixin:
    """Adapter verbs on `self.transformer` (a `WanTransformer3DModel` with MIVA installed)."""

    @property
    def miva_context(self):
        return install_miva_wan(self.transformer)

    def add_adapter(self, adapter_name: str, config: WanAdapterConfig | None = None, *, activate: bool = True):
        """A fresh, zero-initialised adapter (a no-op until trained); active alone when `activate`."""
        add_wan_adapter(self.transformer, adapter_name, config or WanAdapterConfig())
        if activate:
            self.set_adapters([adapter_name])

    def load_adapters(self, sources, adapter_names=None, weights=None, *, official_config: Mapping | None = None,
                      research_exact_first: bool = False, parallel_mode: str | None = None, **hub_kwargs) -> list[str]:
        """Load adapters and make them the active set. `sources`: native Wan adapter folders or Hub repo ids
        (`hub_kwargs`: `revision`, `subfolder`, `cache_dir`, `local_files_only`, `token` of `hf_hub_download`), or
        official MIVA-Wan checkpoints (a `.pt` / `.safetensors` file or a tensor dict) with `official_config` (the
        run's YAML as a dict, or its `dit_kwargs`). Default names: the folder's or repo's name. All or nothing: on
        an error, the adapters loaded by this call are removed."""
        sources = [sources] if isinstance(sources, (str, os.PathLike, Mapping)) else list(sources)
        if adapter_names is None:
            adapter_names = [sanitize_name(Path(os.fspath(s)).name) if not isinstance(s, Mapping) else f"adapter_{i}"
                             for i, s in enumerate(sources)]
        sources = [_hub_folder(s, hub_kwargs) if isinstance(s, str) and is_hub_id(s) else s for s in sources]
        adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(adapter_names) != len(sources):
            raise ValueError(f"adapter_names={adapter_names} has {len(adapter_names)} names for {len(sources)} "
                             "sources")
        loaded = []
        try:
            for source, name in zip(sources, adapter_names):
                if isinstance(source, Mapping) or os.path.isfile(source):
                    if official_config is None:
                        raise ValueError(f"source {source if not isinstance(source, Mapping) else '<tensors>'!s:.80}"
                                         " is an official MIVA-Wan checkpoint: pass official_config= (its YAML or "
                                         "dit_kwargs)")
                    load_official_wan_adapter(self.transformer, name, source, official_config,
                                              research_exact_first=research_exact_first)
                else:
                    load_wan_adapter(self.transformer, source, name)
                loaded.append(name)
            self.set_adapters(adapter_names, weights, parallel_mode=parallel_mode)
        except BaseException:
            for name in loaded:
                delete_miva_adapter(self.transformer, name)
            raise
        return adapter_names

    def set_adapters(self, adapter_names, weights=None, parallel_mode: str | None = None) -> None:
        set_miva_adapters(self.transformer, adapter_names, weights, parallel_mode=parallel_mode)

    def get_active_adapters(self) -> list[str]:
        return [name for name, _ in self.miva_context.active]

    def get_list_adapters(self) -> list[str]:
        return list(self.miva_context.configs)

    def disable_adapters(self) -> None:
        self.miva_context.enabled = False

    def enable_adapters(self) -> None:
        enable_miva_adapters(self.transformer)

    def delete_adapters(self, adapter_names) -> None:
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            delete_miva_adapter(self.transformer, name)

    def fuse_adapters(self, adapter_names=None) -> list[tuple[str, float]]:
        """Merge the active adapters' LoRA deltas (MotionLoRA, CA-LoRA) into the transformer's projections with
        their weights (the shared `fuse_miva_adapters`); the branch and implicit prompts keep running."""
        return fuse_miva_adapters(self.transformer, adapter_names)

    def unfuse_adapters(self) -> list[tuple[str, float]]:
        """Restore the projections bit-exactly (`unfuse_miva_adapters`)."""
        return unfuse_miva_adapters(self.transformer)

    def save_adapter(self, adapter_name: str, save_directory, **kwargs):
        """Save adapter `adapter_name` as a native Wan adapter folder; returns the folder."""
        return save_wan_adapter(self.transformer, adapter_name, save_directory, **kwargs)

    def push_adapter_to_hub(self, adapter_name: str, repo_id: str, *, private: bool | None = None, token=None,
                            commit_message: str | None = None):
        """Create (or reuse) the Hub repo `repo_id` and upload adapter `adapter_name` as a native Wan adapter
        folder with its model card; returns `huggingface_hub.upload_folder`'s commit info."""
        import tempfile

        from huggingface_hub import create_repo, upload_folder

        repo = create_repo(repo_id, private=private, token=token, exist_ok=True)
        repo_id = getattr(repo, "repo_id", None) or repo_id
        with tempfile.TemporaryDirectory() as tmp:
            save_wan_adapter(self.transformer, adapter_name, tmp, repo_id=repo_id)
            return upload_folder(repo_id=repo_id, folder_path=tmp, token=token,
                                 commit_message=commit_message or f"Upload MIVA Wan adapter {adapter_name}")

    # Whole pipeline folders: the transformer saved stock, the adapters beside it (`loaders/pipeline_adapters.py`).
    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained` with the transformer saved stock (no adapter tensors in its files); the
        loaded adapters go beside it into `miva_adapters/` (native folders and a manifest of which are active, their
        weights, the composition mode) and come back with `MIVAWanPipeline.from_pretrained(folder)`."""
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        context = self.miva_context
        check_not_fused(context, "save_pretrained")
        target = Path(save_directory) / ADAPTERS_DIR
        if target.exists():
            shutil.rmtree(target)  # an older save's adapters must not come back with this pipeline
        if context.configs:
            for name in context.configs:
                save_wan_adapter(self.transformer, name, target / name)
            manifest = {"adapters": list(context.configs), "active": [[n, float(w)] for n, w in context.active],
                        "parallel_mode": context.parallel_mode, "enabled": context.enabled}
            (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        attentions = [a for block in self.transformer.blocks for a in (block.attn1, block.attn2)]
        for attn in attentions:
            attn.set_processor(WanAttnProcessor())
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            install_miva_wan(self.transformer)  # ours back, adapters and all

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' `from_pretrained`, then the adapters of the folder's `miva_adapters/` (when it has one)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = find_pipeline_adapters(pretrained_model_name_or_path)
        if folder is not None:
            load_pipeline_adapters(pipe, folder)
        return pipe


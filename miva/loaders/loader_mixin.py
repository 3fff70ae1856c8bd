"""`MIVALoaderMixin`: the adapter lifecycle verbs of a MIVA pipeline (diffusers/PEFT names).

First in `MIVAPipeline`'s MRO, it owns every adapter verb: MIVA adapter names are handled here, diffusers LoRA
names go on to diffusers (`super()`). The verbs are the only code that changes the adapter fields of
`unet.miva_context` (through `attention_processors/install.py`). The mixin works on `self.unet` and, for learned
words, `self.text_encoder` / `self.tokenizer` when the class has them. File formats and sources: `adapter_io.py`,
`sources.py`, `research.py`; a pipeline folder's adapters: `pipeline_adapters.py`.
"""

from __future__ import annotations

from diffusers.utils import USE_PEFT_BACKEND

from ..attention_processors import (
    MIVAAdapterConfig,
    add_miva_adapter,
    delete_miva_adapter,
    enable_miva_adapters,
    get_miva_context,
    install_miva_processors,
    set_miva_adapters,
)
from ..attention_processors.composition import check_not_fused
from ..attention_processors.install import disable_miva_adapters, uninstall_miva_processors
from ..attention_processors.parts import check_same_query_layout
from .adapter_io import (
    apply_text_embeddings,
    check_text_embeddings,
    load_prepared_adapter,
    prepare_adapter,
    push_miva_adapter_to_hub,
    save_miva_adapter,
)
from .model_card import is_hub_id
from .pipeline_adapters import find_pipeline_adapters, load_pipeline_adapters, save_pipeline_adapters
from .sources import check_hub_kwargs, expand_sources, resolve_source
from .transaction import adapter_transaction


def remove_miva_processors(unet) -> None:
    """Make `unet` stock again: unfuse, then `uninstall_miva_processors` (every MIVA adapter, processor and hook
    gone, `unet.miva_context` removed)."""
    from ..attention_processors.fusing import unfuse_miva_adapters

    if getattr(unet, "miva_context", None) is None:
        return
    unfuse_miva_adapters(unet)
    uninstall_miva_processors(unet)


def _name_list(argument: str, names) -> list[str]:
    """A name or a list of names -> a list; `TypeError` naming `argument` for anything else."""
    if isinstance(names, str):
        return [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{argument}={names!r:.80} must be an adapter name or a list of adapter names")
    return list(names)


class MIVALoaderMixin:
    """Mixed into `MIVAPipeline`; works on `self.unet` (a `UNetMotionModel`)."""

    @property
    def miva_context(self):
        return get_miva_context(self.unet)

    def _text_parts(self):
        return getattr(self, "text_encoder", None), getattr(self, "tokenizer", None)

    # ------------------------------------------------------------------------------------------ create / load
    def add_adapter(self, adapter_name: str, config: MIVAAdapterConfig | None = None, *, activate: bool = True):
        """Add a fresh, zero-initialised adapter (a no-op until trained or loaded); activate it alone by default.

        All or nothing: when activation fails (e.g. adapters are fused) the new adapter is removed again."""
        config = MIVAAdapterConfig() if config is None else config
        with adapter_transaction(self.unet):
            add_miva_adapter(self.unet, adapter_name, config)
            if activate:
                self.set_adapters([adapter_name])

    def load_adapters(
        self,
        sources,
        adapter_names: str | list[str] | None = None,
        weights: float | list[float] | None = None,
        parallel_mode: str | None = None,
        **kwargs,
    ) -> list[str]:
        """Load one or several adapters and activate them (alone, in this order) with `weights` (default 1 each).

        Args:
            sources: a source or a list: native folders or `.safetensors` files, Hub repo ids, research checkpoints
                (a dict with `adapter_i2v_path` / `adapter_lora_path` / `ca_lora_path`, a research `.pt`, a research
                full-UNet `.safetensors`); see `miva.loaders.sources`.
            adapter_names: one name per source (default: the folder, file or repo name).
            weights, parallel_mode: as in `set_adapters`.
            kwargs: `config` (a `MIVAAdapterConfig` for research sources: LoRA alphas, STQ and PE settings that the
                checkpoint does not hold) and the Hub options `revision`, `subfolder`, `cache_dir`, `token`,
                `local_files_only`, `force_download`.

        All or nothing: on any error (unreadable or unsafe file, missing/unexpected keys, wrong shapes, adapters
        that disagree on spatiotemporal Q / PE, name clashes) no adapter of this call remains and the previously
        loaded adapters, their activation and the text encoder are unchanged. Returns the adapter names.
        """
        config = kwargs.pop("config", None)
        hub_kwargs = check_hub_kwargs(kwargs)
        sources = expand_sources(sources)
        if not sources:
            raise ValueError("sources is empty: give at least one adapter source")
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        if adapter_names is not None and len(adapter_names) != len(sources):
            raise ValueError(f"adapter_names has {len(adapter_names)} entries but there are {len(sources)} sources")
        if isinstance(weights, (list, tuple)) and len(weights) != len(sources):
            raise ValueError(f"weights has {len(weights)} entries but there are {len(sources)} sources")
        context = install_miva_processors(self.unet)  # no-op unless the adapters were unloaded (the first adapter)
        prepared = [prepare_adapter(self.unet, resolve_source(s, config=config, **hub_kwargs)) for s in sources]
        names = list(adapter_names) if adapter_names is not None else [p.default_name for p in prepared]
        self._check_new_adapters(context, names, prepared)
        text_encoder, tokenizer = self._text_parts()
        actions = [check_text_embeddings(p.text_embeddings, text_encoder, tokenizer) for p in prepared]
        words = [word for group in actions for word, _ in group]
        if len(set(words)) != len(words):
            raise ValueError(f"adapters {names} ship the same learned word twice ({words})")
        with adapter_transaction(self.unet):
            for name, item in zip(names, prepared):
                try:
                    base = getattr(self, "name_or_path", None)  # set by from_pretrained
                    load_prepared_adapter(self.unet, name, item.config, item.tensors, str(base) if base else None)
                except ValueError as e:  # name the file or repo: the user has to find it
                    raise ValueError(f"{item.origin}: {e}") from None
            self.set_adapters(names, weights, parallel_mode=parallel_mode)
            for group in actions:
                apply_text_embeddings(group, text_encoder, tokenizer)
        return names

    @staticmethod
    def _check_new_adapters(context, names, prepared) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be distinct, got {names}; pass adapter_names=[...]")
        taken = [n for n in names if n in context.configs]
        if taken:
            raise ValueError(
                f"an adapter named {taken[0]!r} already exists; loaded adapters: {list(context.configs)} "
                "(pass adapter_names=[...] or delete_adapters first)"
            )
        check_same_query_layout({name: item.config.spatiotemporal_key for name, item in zip(names, prepared)
                                 if item.config.has_cross_attention_part})

    # ------------------------------------------------------------------------------------------- activation
    # diffusers' LoRA verbs have the same names (`set_adapters`, `get_active_adapters`, `get_list_adapters`,
    # `delete_adapters`); this mixin comes first in the pipeline's MRO and sends each name to its owner: MIVA
    # adapter names here, LoRA adapter names (`load_lora_weights`) to diffusers (`super()`), so mixed lists work.
    def _lora_verb(self, verb: str):
        """diffusers' LoRA verb `verb` when this class has one and PEFT is installed (LoRA needs it), else None."""
        method = getattr(super(), verb, None)
        return method if method is not None and USE_PEFT_BACKEND else None

    def _miva_names(self) -> list[str]:
        context = getattr(self.unet, "miva_context", None)
        return list(context.configs) if context is not None else []

    def _lora_adapter_names(self) -> list[str]:
        listed = self._lora_verb("get_list_adapters")
        listed = listed() if listed is not None else {}
        return list(dict.fromkeys(name for names in listed.values() for name in names))

    def _split_adapter_names(self, adapter_names, verb: str) -> tuple[list[str], list[str], list[int], list[int]]:
        """`(miva names, lora names, their positions)`; unknown names raise naming both kinds."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        miva, lora = self._miva_names(), self._lora_adapter_names()
        unknown = [n for n in names if n not in miva and n not in lora]
        if unknown:
            raise ValueError(f"pipe.{verb}: unknown adapter {unknown[0]!r}; MIVA adapters: {miva}, diffusers LoRA "
                             f"adapters: {lora}")
        miva_at = [i for i, n in enumerate(names) if n in miva]
        lora_at = [i for i, n in enumerate(names) if n not in miva]
        return [names[i] for i in miva_at], [names[i] for i in lora_at], miva_at, lora_at

    def set_adapters(self, adapter_names: str | list[str], adapter_weights=None, parallel_mode: str | None = None, *,
                     weights=None) -> None:
        """Activate adapters by name, MIVA and diffusers LoRA mixed, with one weight each (default 1;
        `adapter_weights` is diffusers' name, `weights` the MIVA one).

        MIVA names become the active MIVA adapters, in this order (the order of per-adapter prompts), with
        `parallel_mode` if given; LoRA names go to diffusers' `set_adapters` with their weights. A kind that the
        call does not name keeps its state, except that `set_adapters([])` deactivates every MIVA adapter.
        """
        if weights is not None and adapter_weights is not None:
            raise ValueError("pipe.set_adapters: give adapter_weights or weights, not both")
        weights = adapter_weights if weights is None else weights
        lora_verb = self._lora_verb("set_adapters")
        if lora_verb is None:  # a class without diffusers LoRA: MIVA adapters only
            with adapter_transaction(self.unet):
                set_miva_adapters(self.unet, adapter_names, weights, parallel_mode=parallel_mode)
            return
        miva, lora, miva_at, lora_at = self._split_adapter_names(adapter_names, "set_adapters")
        count = len(miva) + len(lora)
        if isinstance(weights, (list, tuple)):
            if len(weights) != count:
                raise ValueError(f"pipe.set_adapters: adapter_weights has {len(weights)} entries for {count} adapters")
            miva_weights, lora_weights = [weights[i] for i in miva_at], [weights[i] for i in lora_at]
        else:
            miva_weights = lora_weights = weights
        # MIVA first (its checks refuse bad weights before anything changes), undone if diffusers then refuses
        with adapter_transaction(self.unet):
            if miva or not lora:
                set_miva_adapters(self.unet, miva, miva_weights, parallel_mode=parallel_mode)
            if lora:
                lora_verb(lora, lora_weights)

    def get_active_adapters(self) -> list[str]:
        """The active adapters: the MIVA ones in order ([] when disabled), then diffusers' active LoRA adapters."""
        context = getattr(self.unet, "miva_context", None)
        miva = [name for name, _ in context.active] if context is not None and context.enabled else []
        lora_verb = self._lora_verb("get_active_adapters")
        return miva + (list(lora_verb()) if lora_verb is not None and self._lora_adapter_names() else [])

    def get_list_adapters(self) -> dict[str, list[str]] | list[str]:
        """diffusers' `{component: [LoRA adapter names]}` with the MIVA adapters under `"miva"` when any; on a
        class without diffusers' LoRA verbs, the list of MIVA adapter names."""
        lora_verb = self._lora_verb("get_list_adapters")
        if lora_verb is None and getattr(super(), "get_list_adapters", None) is None:
            return self._miva_names()
        listed = dict(lora_verb()) if lora_verb is not None else {}
        if self._miva_names():
            listed["miva"] = self._miva_names()
        return listed

    def disable_adapters(self) -> None:
        disable_miva_adapters(self.unet)

    def enable_adapters(self) -> None:
        enable_miva_adapters(self.unet)

    def fuse_adapters(self, adapter_names: str | list[str] | None = None,
                      lora_scale: float = 1.0) -> list[tuple[str, float]]:
        """Merge the active adapters' LoRA deltas (default: all active) into the base weights ("weights" mode).

        `lora_scale` multiplies the fused adapters' weights, as in diffusers' `fuse_lora`; their unfusable parts
        (cross-frame branch, motion embedding, spatiotemporal Q) run with the same scaled weights, and
        `unfuse_adapters()` puts the weights from before back."""
        from ..attention_processors.fusing import fuse_miva_adapters

        with adapter_transaction(self.unet):
            return fuse_miva_adapters(self.unet, adapter_names, scale=lora_scale)

    def unfuse_adapters(self) -> list[tuple[str, float]]:
        """Restore the base weights bit-exactly; the adapters run unfused again (with their weights from before
        `fuse_adapters(lora_scale=...)`)."""
        from ..attention_processors.fusing import unfuse_miva_adapters

        return unfuse_miva_adapters(self.unet)

    # ------------------------------------------------------------------------------------------ remove
    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove the named adapters, MIVA and diffusers LoRA mixed; the MIVA ones all or nothing (an unknown or
        fused name removes none)."""
        names = _name_list("adapter_names", adapter_names)
        lora_verb = self._lora_verb("delete_adapters")
        if lora_verb is not None:
            names, lora, _, _ = self._split_adapter_names(names, "delete_adapters")
            if names:
                self._delete_miva_adapters(names)
            if lora:
                lora_verb(lora)
            return
        self._delete_miva_adapters(names)

    def _delete_miva_adapters(self, names: list[str]) -> None:
        context = get_miva_context(self.unet)
        check_not_fused(context, "delete_adapters", names)
        with adapter_transaction(self.unet):
            for name in names:
                delete_miva_adapter(self.unet, name)

    def unload_adapters(self) -> None:
        """Remove every MIVA adapter and processor: the UNet is stock diffusers again (unfused first)."""
        remove_miva_processors(self.unet)

    # -------------------------------------------------------------------------------------------- files
    def register_to_config(self, **kwargs):
        """diffusers calls this with `_name_or_path` at the end of `from_pretrained`, also for `custom_pipeline`
        (which never calls a pipeline class's own `from_pretrained`): the one moment a pipeline learns its folder, so
        the folder's saved MIVA adapters are loaded then, unless the UNet already has adapters (`from_pipe` shares
        the UNet of a pipeline that loaded them)."""
        super().register_to_config(**kwargs)
        source = kwargs.get("_name_or_path")
        unet = vars(self).get("unet")  # not getattr: before register_modules sets it, that reads the config
        if source is None or unet is None or getattr(getattr(unet, "miva_context", None), "configs", None):
            return
        folder = find_pipeline_adapters(source)
        if folder is not None:
            load_pipeline_adapters(self, folder)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' `save_pretrained` (and `push_to_hub=True`) with the loaded MIVA adapters beside the stock
        components in `miva_adapters/` (native folders plus which are active, their weights and the composition
        mode); they come back with `MIVAPipeline.from_pretrained(folder)` or `custom_pipeline`. Fused adapters are
        refused (unfuse first). See `miva.loaders.pipeline_adapters`."""
        text_encoder, tokenizer = self._text_parts()
        save_pipeline_adapters(self.unet, save_directory, text_encoder=text_encoder, tokenizer=tokenizer,
                               base_model=self._base_model_id())  # first: push_to_hub uploads the whole folder
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _base_model_id(self) -> str | None:
        name = getattr(self, "name_or_path", None)
        return name if isinstance(name, str) and is_hub_id(name) else None

    def save_adapter(
        self,
        adapter_name: str,
        save_directory,
        sample_gif=None,
        *,
        base_model: str | None = None,
        repo_id: str | None = None,
    ):
        """Save adapter `adapter_name` as a native adapter folder (config, safetensors, model card, sample GIF);
        the learned word's embedding is included when the pipeline has a text encoder and tokenizer."""
        text_encoder, tokenizer = self._text_parts()
        return save_miva_adapter(
            self.unet,
            adapter_name,
            save_directory,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            sample_gif=sample_gif,
            base_model=base_model or self._base_model_id(),
            repo_id=repo_id,
        )

    def push_adapter_to_hub(
        self,
        adapter_name: str,
        repo_id: str,
        private: bool | None = None,
        token=None,
        commit_message: str | None = None,
        sample_gif=None,
    ):
        """Create the Hub repo `repo_id` if needed and upload adapter `adapter_name` with its model card."""
        text_encoder, tokenizer = self._text_parts()
        return push_miva_adapter_to_hub(
            self.unet,
            adapter_name,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            sample_gif=sample_gif,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            base_model=self._base_model_id(),
        )

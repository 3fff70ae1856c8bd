"""The seed's YAML config layout, typed and checked: `load_config(path_or_dict, overrides) -> MIVAConfig`.

Layout (the research config README, `docs/config.md` has the full table)::

    output_dir / pretrained_model_path / motion_module_path / use_ip_adapter / ip_ckpt / image_encoder_path /
    textemb_checkpoint_path / global_seed                                          # header: base checkpoints
    load_from_adapter_ckpt / unet_checkpoint_path / adapter_i2v_path / adapter_lora_path / ca_lora_path
    word_to_learn / initializer_token / split_ckpt / trainable_modules / train_data / learning_rate / ...
    unet_additional_kwargs: {use_ca_lora, ca_lora_rank, q_downsample, ca_pe_mode, ..., motion_module_kwargs: {...}}
    validation_data: {image_path, prompt_path, prompts, video_length, use_dct_init, ...}
    noise_scheduler_kwargs: {...DDIMScheduler arguments...}

Every key is checked when loading: unknown keys and bad values raise :class:`ConfigError`, one line naming the key
path and the closest valid key or value. Keys declare the target fields they set (`feeds`, see `fields`; keys that
set a `TrainConfig` field take its declaration through the key map of `training`); the methods map them onto their
targets: `adapter_configs()`
(`MIVAAdapterConfig` per adapter), `adapter_sources()` (what `load_adapters` gets), `pipeline_kwargs()`
(`MIVAPipeline.__call__`), `scheduler()`, `train_config()` (`TrainConfig`), `ip_adapter_kwargs()`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..attention_processors.adapter_config import MIVAAdapterConfig
from .fields import (
    ConfigError,
    apply_overrides,
    boolean,
    explicit_keys,
    fed_values,
    key,
    one_or_list,
    optional,
    parse_section,
    path_value,
    section,
    section_to_dict,
    string,
)
from .inputs import InputItem, resolve_inputs
from .mask_keys import mask_branch_inputs
from .regions import check_adapter_names
from .sections import (
    ADAPTER_PATH_KEYS,
    DDIM_KWARGS,
    TrainData,
    UNetAdditionalKwargs,
    ValidationData,
    check_scheduler_kwargs,
)
from .trainer import both_or_neither
from .training import DDPM_KWARGS, dit_adapter_fields, research_key, to_train_config, training_keys

__all__ = ["DDIM_KWARGS", "AdapterSpec", "ConfigError", "InputItem", "MIVAConfig", "load_config", "resolve_inputs"]
# `MIVAPipeline.__call__` arguments about the adapters (left out by `pipeline_kwargs(include_adapters=False)`).
ADAPTER_CALL_ARGS = ("adapter_weights", "batch_prompt", "word_to_replace", "text_emb_dir", "ca_map_resolutions")


@dataclass
class AdapterSpec:
    """One adapter of the config: its name, what to load (`None`: a fresh adapter) and its config."""

    name: str
    source: str | dict | None
    config: MIVAAdapterConfig


@dataclass
class ResearchKeys:
    """The header and sections of the seed's layout (the training keys are `TrainingKeys`)."""

    output_dir: str = research_key("output_dir", default="outputs", check=string, help="results")
    pretrained_model_path: str | None = research_key("pretrained_model_path", check=path_value)
    motion_module_path: str | None = research_key("motion_module_path", check=path_value)
    use_ip_adapter: bool = key(False, boolean, "MIVAPipeline.load_ip_adapter")
    ip_ckpt: str | None = key(None, path_value, "IP-Adapter weights file")
    image_encoder_path: str | None = key(None, path_value, "CLIP image encoder folder")
    textemb_checkpoint_path: str | None = key(None, path_value, "learned_embeds.safetensors")
    global_seed: int = research_key("global_seed", help="generator seed")
    load_from_adapter_ckpt: bool = key(False, boolean, "split checkpoints instead of full UNets")
    unet_checkpoint_path: str | list | None = key(None, optional(one_or_list(path_value)), "one per adapter")
    adapter_i2v_path: str | list | None = key(None, optional(one_or_list(path_value)), "one per adapter")
    adapter_lora_path: str | list | None = key(None, optional(one_or_list(path_value)), "one per adapter")
    ca_lora_path: str | list | None = key(None, optional(one_or_list(path_value)), "one per adapter")
    adapter_names: list[str] | None = key(None, optional(one_or_list(string)), "default miva / miva0, miva1, ...")
    word_to_learn: str | None = research_key("word_to_learn", feeds="MIVAAdapterConfig.word_to_learn")
    initializer_token: str | None = research_key("initializer_token")
    unet_additional_kwargs: UNetAdditionalKwargs = key(
        None, section(UNetAdditionalKwargs), factory=UNetAdditionalKwargs
    )
    validation_data: ValidationData = key(None, section(ValidationData), factory=ValidationData)
    noise_scheduler_kwargs: dict = research_key(
        "noise_scheduler_kwargs",
        check=check_scheduler_kwargs,
        help="DDIMScheduler arguments (scheduler()); the DDPM ones also train",
        convert=lambda kwargs: {k: v for k, v in kwargs.items() if k in DDPM_KWARGS},
    )
    train_data: TrainData = key(None, section(TrainData), factory=TrainData)
    dit_kwargs: dict | None = key(None, lambda path, value: (dit_adapter_fields(value), value)[1],
                                  "official MIVA-Wan adapter keys (Wan bases; docs/wan.md)")


# The training keys: `TrainConfig` fields the header does not set, each a top-level key of its own name.
TrainingKeys = training_keys(ResearchKeys)


@dataclass
class MIVAConfig(TrainingKeys, ResearchKeys):
    """A whole config in the seed's layout: `ResearchKeys`, then `TrainingKeys`. Build it with :func:`load_config`."""

    def __post_init__(self) -> None:
        if isinstance(self.adapter_names, str):
            self.adapter_names = [self.adapter_names]
        if self.unet_additional_kwargs.adapter_weights is not None:
            weights = self.unet_additional_kwargs.adapter_weights
            self.unet_additional_kwargs.adapter_weights = weights if isinstance(weights, list) else [weights]
        self.num_adapters = self._count_adapters()
        self._check_sources()
        v = self.validation_data
        if v.multi_ca and not (isinstance(v.batch_prompt, list) and len(v.batch_prompt) == self.num_adapters):
            raise ConfigError(
                f"validation_data.batch_prompt: multi_ca is true, so it must be a list of "
                f"{self.num_adapters} prompts (one per adapter), got {v.batch_prompt!r}"
            )
        both_or_neither(self.word_to_learn, self.initializer_token)
        check_adapter_names(v, self.names())
        if self.use_ip_adapter:
            for name in ("ip_ckpt", "image_encoder_path"):
                if getattr(self, name) is None:
                    raise ConfigError(f"{name}: required when use_ip_adapter is true")

    # ------------------------------------------------------------------------------------------- adapters
    def _count_adapters(self) -> int:
        """The number of adapters: the length shared by every per-adapter list (1 without lists)."""
        u = self.unet_additional_kwargs
        lists = {name: getattr(self, name) for name in ("unet_checkpoint_path", *ADAPTER_PATH_KEYS, "adapter_names")}
        lists.update(
            {f"unet_additional_kwargs.{n}": getattr(u, n) for n in ("ca_lora_rank", "ca_lora_scale", "adapter_weights")}
        )
        if self.validation_data.multi_ca and isinstance(self.validation_data.batch_prompt, list):
            lists["validation_data.batch_prompt"] = self.validation_data.batch_prompt
        lengths = {name: len(v) for name, v in lists.items() if isinstance(v, list)}
        if len(set(lengths.values())) > 1:
            (a, n), *rest = lengths.items()
            b, m = next((k, v) for k, v in rest if v != n)
            raise ConfigError(f"{b}: has {m} entries but {a} has {n}; multi-adapter lists need one entry per adapter")
        return next(iter(lengths.values()), 1)

    def _per_adapter(self, value: Any) -> list:
        return list(value) if isinstance(value, list) else [value] * self.num_adapters

    def _check_sources(self) -> None:
        split = [n for n in ADAPTER_PATH_KEYS if getattr(self, n) is not None]
        if self.load_from_adapter_ckpt and self.unet_checkpoint_path is not None:
            raise ConfigError(
                "unet_checkpoint_path: set, but load_from_adapter_ckpt is true (split checkpoints: "
                f"{list(ADAPTER_PATH_KEYS)}); remove it or set load_from_adapter_ckpt: false"
            )
        if not self.load_from_adapter_ckpt and split:
            raise ConfigError(
                f"{split[0]}: set, but load_from_adapter_ckpt is false, so it would be ignored; set "
                "load_from_adapter_ckpt: true (or use unet_checkpoint_path)"
            )
        if split:
            for i in range(self.num_adapters):
                if all(self._per_adapter(getattr(self, n))[i] is None for n in ADAPTER_PATH_KEYS):
                    raise ConfigError(f"{split[0]}: adapter {i} has no checkpoint in any of {list(ADAPTER_PATH_KEYS)}")
        elif isinstance(self.unet_checkpoint_path, list) and None in self.unet_checkpoint_path:
            raise ConfigError(f"unet_checkpoint_path: entry {self.unet_checkpoint_path.index(None)} is empty")

    def names(self) -> list[str]:
        """Adapter names: `adapter_names`, else "miva" (one adapter) or "miva0", "miva1", ..."""
        if self.adapter_names is not None:
            return list(self.adapter_names)
        return ["miva"] if self.num_adapters == 1 else [f"miva{i}" for i in range(self.num_adapters)]

    def adapter_weights(self) -> list[float]:
        weights = self.unet_additional_kwargs.adapter_weights
        return [float(w) for w in weights] if weights is not None else [1.0] * self.num_adapters

    def adapter_configs(self, tiny: bool = False) -> list[MIVAAdapterConfig]:
        """One `MIVAAdapterConfig` per adapter: every key declaring `feeds="MIVAAdapterConfig.<field>"` sets that
        field (a `per_adapter` list gives adapter i its entry i); computed here: the adapter's prompt (`multi_ca`),
        `i2v_train_q` by default, and the base models.

        `tiny`: the model paths are placeholders, so `base_model` / `motion_adapter` are left unset.
        """
        fed = fed_values(self, "MIVAAdapterConfig")
        prompts = self.validation_data.batch_prompt if self.validation_data.multi_ca else [None] * self.num_adapters
        if fed["i2v_train_q"][1] is None:
            wanted = any("i2v" in t and "to_q" in t for t in self.trainable_modules or [])
            fed["i2v_train_q"] = (fed["i2v_train_q"][0], wanted, False)
        config_class, dit = self._adapter_class(), dit_adapter_fields(self.dit_kwargs)
        try:
            return self._build_adapter_configs(config_class, fed, dit, prompts, tiny)
        except ValueError as e:  # a setting the Wan adapter does not have: name the section it came from
            if config_class is MIVAAdapterConfig or isinstance(e, ConfigError):
                raise
            raise ConfigError(f"unet_additional_kwargs: {e}") from None

    def _build_adapter_configs(self, config_class, fed, dit, prompts, tiny) -> list[MIVAAdapterConfig]:
        return [
            config_class(
                **{**{name: self._per_adapter(value)[i] if per_adapter else value
                      for name, (_, value, per_adapter) in fed.items()}, **dit},
                prompt=prompts[i],
                base_model=None if tiny else self.pretrained_model_path,
                motion_adapter=None if tiny else self.motion_module_path,
            )
            for i in range(self.num_adapters)
        ]

    def _adapter_class(self) -> type:
        """`WanAdapterConfig` on a Wan base (`base_registry.base_backbone`), else `MIVAAdapterConfig`; the official
        `dit_kwargs` only on Wan, and not together with the `unet_additional_kwargs` keys that set the same fields."""
        from ..backbones.declared import WAN
        from ..base_registry import base_backbone

        if base_backbone(self.pretrained_model_path) != WAN.id:
            if self.dit_kwargs is not None:
                raise ConfigError(f"dit_kwargs: official MIVA-Wan keys, but the base {self.pretrained_model_path!r} "
                                  "is not a Wan2.1 one (set pretrained_model_path to a Wan folder or tiny-wan)")
            return MIVAAdapterConfig
        from ..backbones.wan.config import WanAdapterConfig

        both = [path for path, name in self.explicit_adapter_keys() if name in dit_adapter_fields(self.dit_kwargs)]
        if both:
            raise ConfigError(f"{both[0]}: also set by dit_kwargs; give each adapter setting once")
        return WanAdapterConfig

    def explicit_adapter_keys(self) -> list[tuple[str, str]]:
        """`(YAML key path, MIVAAdapterConfig field)` for every adapter key the YAML (or `--set`) set explicitly;
        a loaded native adapter must agree with these (`miva.commands.common.check_adapter_against_config`)."""
        found = []
        for name, (path, _, _) in fed_values(self, "MIVAAdapterConfig").items():
            *sections, leaf = path.split(".")
            part = self
            for section_name in sections:
                part = getattr(part, section_name)
            if sections and leaf in explicit_keys(part):  # header keys (word_to_learn) are not adapter settings
                found.append((path, name))
        return found

    def adapter_sources(self, tiny: bool = False) -> list[AdapterSpec]:
        """What to load per adapter: a path / Hub id (`unet_checkpoint_path`), a research split dict
        (`load_from_adapter_ckpt`), or None (no checkpoint: a fresh adapter). Pass each to
        `pipe.load_adapters(spec.source, adapter_names=[spec.name], config=spec.config)`."""
        configs, names = self.adapter_configs(tiny), self.names()
        specs = []
        for i in range(self.num_adapters):
            if self.load_from_adapter_ckpt:
                paths = {n: self._per_adapter(getattr(self, n))[i] for n in ADAPTER_PATH_KEYS}
                source = {n: p for n, p in paths.items() if p is not None} or None
            else:
                source = self._per_adapter(self.unet_checkpoint_path)[i]
            specs.append(AdapterSpec(names[i], source, configs[i]))
        return specs

    def learned_embeds_path(self) -> str | None:
        """Where `word_to_replace`'s learned embeddings are: `textemb_checkpoint_path`, else a
        `learned_embeds.safetensors` beside or two levels above a `unet_checkpoint_path` file (research layout)."""
        if self.textemb_checkpoint_path is not None:
            return self.textemb_checkpoint_path
        for ckpt in self._per_adapter(self.unet_checkpoint_path):
            if ckpt is not None and os.path.isfile(ckpt):
                for folder in (Path(ckpt).parent, Path(ckpt).parent.parent):
                    if (folder / "learned_embeds.safetensors").is_file():
                        return str(folder / "learned_embeds.safetensors")
        return None

    # ------------------------------------------------------------------------------------------- destinations
    def pipeline_kwargs(self, include_adapters: bool = True) -> dict[str, Any]:
        """`MIVAPipeline.__call__` arguments (all but `image`, `prompt` and `generator`): every key declaring
        `feeds="MIVAPipeline.<argument>"`, plus the adapters' weights and prompts; `include_adapters=False` leaves
        out the adapter arguments (`ADAPTER_CALL_ARGS`)."""
        v = self.validation_data
        kwargs = {name: value for name, (_, value, _) in fed_values(self, "MIVAPipeline").items()}
        kwargs.update(adapter_weights=self.adapter_weights(), batch_prompt=list(v.batch_prompt) if v.multi_ca else None)
        if v.mask_path is not None:  # the mask branch (docs/mask_branch.md)
            kwargs["mask_branch"] = mask_branch_inputs(v, self.names(), self.adapter_configs(tiny=True))
        if not include_adapters:
            kwargs = {k: value for k, value in kwargs.items() if k not in ADAPTER_CALL_ARGS}
        return kwargs

    def scheduler(self, base_config: dict | None = None):
        """A `DDIMScheduler`: `base_config` (e.g. the pipeline's scheduler config) with `noise_scheduler_kwargs`."""
        from diffusers import DDIMScheduler

        kwargs = {k: v for k, v in self.noise_scheduler_kwargs.items() if k in DDIM_KWARGS}
        return DDIMScheduler.from_config(dict(base_config or {}), **kwargs)

    def ip_adapter_kwargs(self) -> dict[str, Any]:
        """`load_ip_adapter` arguments for `ip_ckpt`: a local file, or `org/repo/sub/folder/file.bin` on the Hub."""
        path = Path(self.ip_ckpt)
        if path.is_file():
            return dict(
                pretrained_model_name_or_path_or_dict=str(path.parent),
                subfolder="",
                weight_name=path.name,
                image_encoder_folder=None,
            )
        parts = self.ip_ckpt.split("/")
        if len(parts) < 3:
            raise ConfigError(f"ip_ckpt: {self.ip_ckpt!r} is neither a file nor 'org/repo/[subfolder/]weights.bin'")
        return dict(
            pretrained_model_name_or_path_or_dict="/".join(parts[:2]),
            subfolder="/".join(parts[2:-1]),
            weight_name=parts[-1],
            image_encoder_folder=None,
        )

    def inputs(self, must_exist: bool = True) -> list[InputItem]:
        """The images to animate with their prompts (`validation_data` image_path / prompt_path / prompts)."""
        return resolve_inputs(self.validation_data, must_exist=must_exist)

    def train_config(self, tiny: bool = False):
        """The `TrainConfig` of this config (one adapter; the trainer's keys, `train_data`, `validation_data`)."""
        return to_train_config(self, tiny)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the seed's layout (header, sections, then training keys); `load_config(config.to_dict())`
        gives an equal config."""
        data = section_to_dict(self)
        training = {f.name for f in dataclasses.fields(TrainingKeys)}
        return {**{k: v for k, v in data.items() if k not in training}, **{k: data[k] for k in data if k in training}}

    def __eq__(self, other) -> bool:
        return isinstance(other, MIVAConfig) and self.to_dict() == other.to_dict()


def load_config(path_or_dict: str | os.PathLike | dict, overrides: list[str] | None = None) -> MIVAConfig:
    """Read a config in the seed's layout (a YAML file or a mapping) and apply `key.path=value` overrides.

    Overrides are OmegaConf dotlist items (`miva.config.fields.apply_overrides`): values are YAML scalars or lists
    (`true`, `1e-4`, `[0.5,0.5]`, `null`). Raises `ConfigError` (one line: key path, problem, closest valid
    key/value) or `FileNotFoundError`.
    """
    from .fields import read_yaml

    if isinstance(path_or_dict, (str, os.PathLike)):
        data = read_yaml(path_or_dict)
    elif isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        raise ConfigError(f"config: expected a YAML path or a mapping, got {type(path_or_dict).__name__}")
    return parse_section(MIVAConfig, apply_overrides(data, overrides))

"""The import step of the research (seed) layout into the trainer's `TrainConfig`, driven by one key map.

`RESEARCH_KEY_MAP` says which research key sets which `TrainConfig` field where the names or places differ
(`global_seed` -> `seed`, `train_data.n_sample_frames` -> `num_frames`, ...); a top-level research key named like a
field sets that field. A research key that sets a field is declared with `research_key(path)`, which takes the
field's default, check and help from `TrainConfig` (declared once there); the research layout's own training keys
(`learning_rate`, `max_train_steps`, ...) are built from `TrainConfig` by `training_keys`, not listed again.

Keys follow the research training YAMLs (docs/research.md#training). A few research keys only have one value here and are
rejected otherwise, with the reason: `scale_lr` (false),
`include_frame1_in_mse_loss` (false). `trainable_modules` takes our part names (`TRAINABLE_PARTS`) or the research
module names (`i2v_adapter.to_out`, `i2v_adapter.to_q`, `to_q_lora`, `to_k_lora`, `to_v_lora`, `to_out_lora`,
`motion_embed`, `weight_module`), mapped to the parts they select.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .fields import ConfigError, boolean, fed_values, fixed, key, list_of, optional, path_value, string
from .trainer import TRAINABLE_PARTS, TrainConfig, ValidationConfig, adapter_parts

DDPM_KWARGS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)
RESEARCH_MODULE_NAMES = (
    "i2v_adapter",  # the official Wan branch: i2v (and its adaptive weight module)
    "cross_attn.CA",  # the official Wan implicit prompt (CA2, CA_norm, CA3)
    "i2v_adapter.to_out",
    "i2v_adapter.to_q",
    "to_q_lora",
    "to_k_lora",
    "to_v_lora",
    "to_out_lora",
    "motion_embed",
    "weight_module",
)
# The import step's key map: research key path -> the `TrainConfig` field it sets, for the keys the research layout
# names or places differently. Every other top-level research key named like a `TrainConfig` field sets that field,
# and every `TrainConfig` field not set so is a top-level research key of its own name (`training_keys`), except:
RESEARCH_KEY_MAP = {
    "global_seed": "seed",
    "unet_additional_kwargs.oa_bin_id": "oa_bin_id",
    "unet_additional_kwargs.oa_bases_path": "oa_bases_path",
    "train_data.video_root": "video_root",
    "train_data.prompt": "prompt",
    "train_data.n_sample_frames": "num_frames",
    "train_data.width": "width",
    "train_data.height": "height",
    "train_data.sample_frame_rate": "sample_frame_rate",
    "train_data.random_flip": "random_flip",
    "train_data.mask_root": "mask_root",
    # The official MIVA-Wan training YAML (docs/wan.md): its `dit_kwargs` set fields of the run's adapter
    # (`TrainConfig.adapter`, a `WanAdapterConfig`); inference reads them too (`MIVAConfig.adapter_configs`).
    "dit_kwargs.SA_mode": "adapter.sa_mode",
    "dit_kwargs.SA_kwargs.sa_first_frame_scale": "adapter.sa_first_frame_scale",
    "dit_kwargs.CA_mode": "adapter.ca_mode",
    "dit_kwargs.CA_kwargs.rank": "adapter.implicit_rank",
    "dit_kwargs.CA_kwargs.act": "adapter.implicit_act",
    "dit_kwargs.CA_kwargs.norm_mid": "adapter.implicit_norm",
    "dit_kwargs.CA_kwargs.bias": "adapter.implicit_bias",
    "dit_kwargs.CA_kwargs.use_out": "adapter.",  # no field: only `true` exists in miva (DIT_VALUES)
}
# Official values that differ from miva's, per `dit_kwargs` key: official value -> miva value (a value missing from a
# key's table is refused, naming the accepted ones). `CA_mode: vanilla` is Wan's text cross-attention unchanged.
DIT_VALUES = {
    "dit_kwargs.CA_mode": {"simple": "implicit", "vanilla": "lora"},
    "dit_kwargs.CA_kwargs.use_out": {True: None},  # no output layer of another width is known (docs/wan.md)
}
# `TrainConfig` fields that are no research key: computed by `to_train_config` (from `--tiny`,
# `unet_additional_kwargs`, `adapter_names`, `validation_data`) or trainer-layout settings the research layout
# never had.
TRAINER_ONLY = ("tiny", "adapter", "adapter_name", "validation", "dataloader_num_workers", "timestep_range")
_TRAINER_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def research_key(path: str, feeds: str | tuple = (), **changes):
    """The declaration of research key `path` (`"train_data.n_sample_frames"`): the default, check and help of
    the `TrainConfig` field it sets (`RESEARCH_KEY_MAP`, else the field of its own name), declared once there;
    `changes` replace some (e.g. the research layout's own default), `feeds` adds other targets."""
    name = RESEARCH_KEY_MAP.get(path, path)
    declared = _TRAINER_FIELDS[name]
    spec = dict(
        default=declared.default if declared.default is not dataclasses.MISSING else None,
        check=declared.metadata["check"],
        help=declared.metadata["help"],
        feeds=(f"TrainConfig.{name}", *((feeds,) if isinstance(feeds, str) else feeds)),
    )
    if declared.default_factory is not dataclasses.MISSING:
        spec["factory"] = declared.default_factory
    return key(**{**spec, **changes})


@dataclass
class ResearchTrainingKeys:
    """Training keys whose research form differs from the trainer's, and research keys with no trainer field."""

    # Our part names or research module names, mapped to parts by `trainable_parts` (they need the adapter).
    trainable_modules: list[str] | None = research_key(
        "trainable_modules", check=optional(list_of(string)), help="default: every adapter part"
    )
    resume_from_checkpoint: str | None = research_key("resume_from_checkpoint", check=path_value)  # "" = unset
    scale_lr: bool = key(False, fixed([False], "give the learning rate you want in learning_rate"))
    include_frame1_in_mse_loss: bool = key(
        False,
        fixed([False], "frame 0 is the clean conditioning latent, so the loss covers frames 1..F-1 (research default)"),
    )
    enable_xformers_memory_efficient_attention: bool = key(
        False, boolean, "no effect: MIVA processors use PyTorch SDPA (memory-efficient already)"
    )


def training_keys(header) -> type:
    """The training keys of the research layout (a base of `MIVAConfig`): `ResearchTrainingKeys`, then every
    `TrainConfig` field that no key of dataclass `header`, no `RESEARCH_KEY_MAP` entry and no `TRAINER_ONLY` name
    covers, as a top-level key of its own name (`learning_rate`, `max_train_steps`, ...): no list to keep in step."""
    taken = {f.name for cls in (header, ResearchTrainingKeys) for f in dataclasses.fields(cls)}
    taken |= {v for v in RESEARCH_KEY_MAP.values() if "." not in v} | set(TRAINER_ONLY)
    shared = [(f.name, f.type, research_key(f.name)) for f in _TRAINER_FIELDS.values() if f.name not in taken]
    keys = dataclasses.make_dataclass("TrainingKeys", shared, bases=(ResearchTrainingKeys,))
    keys.__doc__ = "The training keys of the research layout: `ResearchTrainingKeys` and the `TrainConfig` fields."
    return keys


def import_map(config_cls, prefix: str = "") -> dict[str, str]:
    """Research key path -> `TrainConfig` field, for every key of `config_cls` (`MIVAConfig`, sections included)
    that sets one: the whole import step's map, read from the keys' declarations (`research_key`)."""
    found = {}
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            found.update(import_map(type(default), f"{prefix}{f.name}."))
        found.update({f"{prefix}{f.name}": dest.partition(".")[2] for dest in f.metadata.get("feeds", ())
                      if dest.startswith("TrainConfig.")})
    return found


def trainable_parts(entries: list[str] | None, adapter) -> list[str] | None:
    """`trainable_modules` (our part names or research module names) -> the adapter parts they select."""
    if entries is None:
        return None
    available = adapter_parts(adapter)
    parts: list[str] = []
    for i, entry in enumerate(entries):
        name = entry.rstrip(".")
        if name in TRAINABLE_PARTS:
            found = [name]
        elif name.split(".")[-1] == "i2v_adapter":  # the official Wan branch, whole: with its weight module
            found = [p for p in ("i2v", "adaptive_weight") if p in available]
        elif any(part in name.split(".") for part in ("CA2", "CA3", "CA_norm")) or name.endswith("cross_attn.CA"):
            found = ["implicit"]
        elif "i2v" in name:
            found = ["i2v"]
        elif "weight_module" in name:
            found = ["adaptive_weight"]
        elif "motion_embed" in name:
            found = ["motion_embed"]
        elif "simple" in name.lower() or "implicit" in name:
            found = ["implicit"]
        elif name.endswith("_lora"):  # research: every LoRA whose module name ends so (motion and CA alike)
            found = []
            if "attn2" not in name and "motion_lora" in available:
                found.append("motion_lora")
            if "motion_modules" not in name and "attention_blocks" not in name and "ca_lora" in available:
                found.append("ca_lora")
        else:
            raise ConfigError(
                f"trainable_modules[{i}]: {entry!r} is not a trainable part; use parts "
                f"{list(TRAINABLE_PARTS)} or research names {list(RESEARCH_MODULE_NAMES)}"
            )
        parts += [p for p in found if p not in parts]
    return parts


def to_train_config(config, tiny: bool = False):
    """`TrainConfig` for `MIVAConfig` `config` (see `MIVAConfig.train_config`): every research key sets the field
    the key map gives it (its `feeds`, from `research_key`); the rest is computed here (`TRAINER_ONLY`: tiny, adapter,
    adapter_name, validation; and the parts)."""
    if config.num_adapters > 1:
        raise ConfigError(
            f"unet_additional_kwargs: the config describes {config.num_adapters} adapters (list-valued "
            "keys), but training supports one adapter; multi-adapter settings are inference only"
        )
    for name in ("unet_checkpoint_path", "adapter_i2v_path", "adapter_lora_path", "ca_lora_path"):
        if getattr(config, name) is not None:
            raise ConfigError(
                f"{name}: training starts a fresh adapter and does not load checkpoints; remove it (to "
                "continue a run, use resume_from_checkpoint)"
            )
    adapter = config.adapter_configs(tiny)[0]
    v = config.validation_data
    for name in ("adapter_masks", "image_masks", "adapter_schedules"):  # miva.config.regions
        if getattr(v, name):
            raise ConfigError(f"validation_data.{name}: inference only (miva infer); the validation videos of "
                              "training use no masks or schedules, remove it from a training config")
    fed = fed_values(config, "TrainConfig")
    kwargs = {name: value for name, (_, value, _) in fed.items()}
    roots = [kwargs["video_root"]] if isinstance(kwargs["video_root"], str) else kwargs["video_root"] or []
    if tiny and not all(os.path.exists(r) for r in roots or ["<none>"]):
        kwargs["video_root"] = None  # placeholders under --tiny: the trainer writes synthetic clips
    items = []
    if v.image_path is not None and (not tiny or Path(v.image_path).exists()):
        items = [item for item in config.inputs(must_exist=not tiny) if Path(item.image).is_file()]
    sampling = config.pipeline_kwargs(include_adapters=False)  # the validation videos sample as `miva infer` does
    own = [f.name for f in dataclasses.fields(ValidationConfig) if f.name in sampling]  # num_frames, width, ...
    kwargs.update(
        tiny=tiny,
        adapter=adapter,
        adapter_name=config.names()[0],
        trainable_modules=trainable_parts(config.trainable_modules, adapter),
        validation=dict(
            image=[item.image for item in items] or None,
            prompt=(items[0].prompt or None) if items else None,
            seed=config.global_seed,
            **{name: sampling.pop(name) for name in own},  # ValidationConfig's own fields
            pipeline_kwargs=sampling,
        ),
    )
    try:
        return TrainConfig(**kwargs)
    except ConfigError as e:  # a rule of the trainer's fields: name the YAML key that feeds the field
        if e.path in fed:
            raise e.renamed(fed[e.path][0]) from None
        raise


def dit_adapter_fields(dit_kwargs: dict | None) -> dict:
    """`{adapter field: value}` set by an official MIVA-Wan `dit_kwargs` mapping (`RESEARCH_KEY_MAP`'s
    `dit_kwargs.*` entries, values through `DIT_VALUES`); an unknown key or value is one `ConfigError` naming it."""
    if dit_kwargs is None:
        return {}
    if not isinstance(dit_kwargs, dict):
        raise ConfigError(f"dit_kwargs: {dit_kwargs!r} must be a mapping (the official MIVA-Wan dit_kwargs)")
    known = [k.partition(".")[2] for k in RESEARCH_KEY_MAP if k.startswith("dit_kwargs.")]
    flat: dict = {}

    def walk(data: dict, prefix: str) -> None:
        for name, value in data.items():
            path = f"{prefix}{name}"
            if isinstance(value, dict) and any(k.startswith(path + ".") for k in known):
                walk(value, path + ".")
            elif path not in known:
                raise ConfigError(f"dit_kwargs.{path}: not an official MIVA-Wan key miva reads; known: {known}")
            else:
                flat[path] = value

    walk(dit_kwargs, "")
    fields = {}
    for path, value in flat.items():
        key_path = f"dit_kwargs.{path}"
        table = DIT_VALUES.get(key_path)
        if table is not None:
            if not any(value == k and type(value) is type(k) for k in table):
                raise ConfigError(f"{key_path}: {value!r} is not supported (accepted: {list(table)})")
            value = table[value]
        target = RESEARCH_KEY_MAP[key_path].partition(".")[2]
        if target:
            fields[target] = value
    if fields.get("ca_mode") == "lora":
        fields["use_ca_lora"] = False  # `vanilla`: the text cross-attention as it is
    return fields

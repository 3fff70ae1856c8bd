"""The training keys of the seed's layout and their mapping onto the trainer's `TrainConfig`.

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
from .trainer import TRAINABLE_PARTS, TrainConfig, adapter_parts

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
    "i2v_adapter.to_out",
    "i2v_adapter.to_q",
    "to_q_lora",
    "to_k_lora",
    "to_v_lora",
    "to_out_lora",
    "motion_embed",
    "weight_module",
)
_VALIDATION_OWN = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale")


def trainer_key(name: str, **changes):
    """A training key of the seed's layout that is `TrainConfig.<name>`: its default, check and help, declared once
    in `TrainConfig` (`changes` replace some, e.g. the YAML's own check), feeding that field."""
    declared = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    spec = dict(
        default=declared.default if declared.default is not dataclasses.MISSING else None,
        check=declared.metadata["check"],
        help=declared.metadata["help"],
        feeds=f"TrainConfig.{name}",
    )
    if declared.default_factory is not dataclasses.MISSING:
        spec["factory"] = declared.default_factory
    return key(**{**spec, **changes})


@dataclass
class TrainingKeys:
    """Header keys used by training only (base of `MIVAConfig`): the `TrainConfig` fields of the same name."""

    split_ckpt: bool = trainer_key("split_ckpt")
    # Our part names or research module names, mapped to parts by `trainable_parts` (they need the adapter).
    trainable_modules: list[str] | None = key(None, optional(list_of(string)), "default: every adapter part")
    learning_rate: float = trainer_key("learning_rate")
    adam_beta1: float = trainer_key("adam_beta1")
    adam_beta2: float = trainer_key("adam_beta2")
    adam_weight_decay: float = trainer_key("adam_weight_decay")
    adam_epsilon: float = trainer_key("adam_epsilon")
    use_8bit_adam: bool = trainer_key("use_8bit_adam")
    max_grad_norm: float = trainer_key("max_grad_norm")
    gradient_accumulation_steps: int = trainer_key("gradient_accumulation_steps")
    train_batch_size: int = trainer_key("train_batch_size")
    max_train_steps: int = trainer_key("max_train_steps")
    mixed_precision: str = trainer_key("mixed_precision")
    gradient_checkpointing: bool = trainer_key("gradient_checkpointing")
    checkpointing_steps: int | None = trainer_key("checkpointing_steps")
    checkpoints_total_limit: int | None = trainer_key("checkpoints_total_limit")
    resume_from_checkpoint: str | None = trainer_key("resume_from_checkpoint", check=path_value)  # "" = unset
    validation_steps: int | None = trainer_key("validation_steps")
    lr_scheduler: str = trainer_key("lr_scheduler")
    lr_warmup_steps: int = trainer_key("lr_warmup_steps")
    lr_num_cycles: int = trainer_key("lr_num_cycles")
    scale_lr: bool = key(False, fixed([False], "give the learning rate you want in learning_rate"))
    include_frame1_in_mse_loss: bool = key(
        False,
        fixed([False], "frame 0 is the clean conditioning latent, so the loss covers frames 1..F-1 (research default)"),
    )
    enable_xformers_memory_efficient_attention: bool = key(
        False, boolean, "no effect: MIVA processors use PyTorch SDPA (memory-efficient already)"
    )
    push_to_hub: bool = trainer_key("push_to_hub")
    hub_model_id: str | None = trainer_key("hub_model_id")
    hub_private: bool = trainer_key("hub_private")
    report_to: str = trainer_key("report_to")


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
    """`TrainConfig` for `MIVAConfig` `config` (see `MIVAConfig.train_config`): every key that declares
    `feeds="TrainConfig.<field>"` sets that field; the rest is computed here (adapter, parts, data, validation)."""
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
    fed = fed_values(config, "TrainConfig")
    kwargs = {name: value for name, (_, value, _) in fed.items()}
    roots = [kwargs["video_root"]] if isinstance(kwargs["video_root"], str) else kwargs["video_root"] or []
    if tiny and not all(os.path.exists(r) for r in roots or ["<none>"]):
        kwargs["video_root"] = None  # placeholders under --tiny: the trainer writes synthetic clips
    items = []
    if v.image_path is not None and (not tiny or Path(v.image_path).exists()):
        items = [item for item in config.inputs(must_exist=not tiny) if Path(item.image).is_file()]
    sampling = config.pipeline_kwargs(include_adapters=False)  # the validation videos sample as `miva infer` does
    kwargs.update(
        tiny=tiny,
        adapter=adapter,
        adapter_name=config.names()[0],
        trainable_modules=trainable_parts(config.trainable_modules, adapter),
        validation=dict(
            image=[item.image for item in items] or None,
            prompt=(items[0].prompt or None) if items else None,
            seed=config.global_seed,
            **{name: sampling.pop(name) for name in _VALIDATION_OWN},  # ValidationConfig's own fields
            pipeline_kwargs=sampling,
        ),
    )
    try:
        return TrainConfig(**kwargs)
    except ConfigError as e:  # a rule of the trainer's fields: name the YAML key that feeds the field
        if e.path in fed:
            raise e.renamed(fed[e.path][0]) from None
        raise

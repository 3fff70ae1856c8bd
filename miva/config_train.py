"""The training keys of the seed's layout and their mapping onto the trainer's `TrainConfig`.

Keys follow the research training YAMLs (REFERENCE.md §8). A few research keys only have one value here and are
rejected otherwise, with the reason: `scale_lr` (false),
`include_frame1_in_mse_loss` (false). `trainable_modules` takes our part names (`TRAINABLE_PARTS`) or the research
module names (`i2v_adapter.to_out`, `i2v_adapter.to_q`, `to_q_lora`, `to_k_lora`, `to_v_lora`, `to_out_lora`,
`motion_embed`, `weight_module`), mapped to the parts they select.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config_fields import (
    ConfigError,
    boolean,
    choice,
    fixed,
    integer,
    key,
    list_of,
    number,
    optional,
    path_value,
    string,
)
from .training.train_config import MIXED_PRECISION, TRACKERS, TRAINABLE_PARTS, adapter_parts


def _lr_scheduler(path: str, value):
    from .training.train_config import lr_scheduler_names

    return choice(lr_scheduler_names())(path, value)


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


@dataclass
class TrainingKeys:
    """Header keys used by training only (base of `MIVAConfig`)."""

    split_ckpt: bool = key(True, boolean, "native adapter folder (true) or full UNet file", "TrainConfig.split_ckpt")
    trainable_modules: list[str] | None = key(
        None, optional(list_of(string)), "default: every adapter part", "TrainConfig.trainable_modules"
    )
    learning_rate: float = key(1e-5, number(0.0, open_low=True), "", "TrainConfig.learning_rate")
    adam_beta1: float = key(0.9, number(0.0, 1.0), "", "TrainConfig.adam_beta1")
    adam_beta2: float = key(0.999, number(0.0, 1.0), "", "TrainConfig.adam_beta2")
    adam_weight_decay: float = key(1e-2, number(0.0), "", "TrainConfig.adam_weight_decay")
    adam_epsilon: float = key(1e-8, number(0.0, open_low=True), "", "TrainConfig.adam_epsilon")
    use_8bit_adam: bool = key(True, boolean, "bitsandbytes on CUDA", "TrainConfig.use_8bit_adam")
    max_grad_norm: float = key(1.0, number(0.0, open_low=True), "", "TrainConfig.max_grad_norm")
    gradient_accumulation_steps: int = key(1, integer(1), "", "TrainConfig.gradient_accumulation_steps")
    train_batch_size: int = key(1, integer(1), "", "TrainConfig.train_batch_size")
    max_train_steps: int = key(15000, integer(1), "", "TrainConfig.max_train_steps")
    mixed_precision: str = key("fp16", choice(MIXED_PRECISION), "'no' without a GPU", "TrainConfig.mixed_precision")
    gradient_checkpointing: bool = key(True, boolean, "", "TrainConfig.gradient_checkpointing")
    checkpointing_steps: int | None = key(5000, optional(integer(1)), "", "TrainConfig.checkpointing_steps")
    checkpoints_total_limit: int | None = key(None, optional(integer(1)), "", "TrainConfig.checkpoints_total_limit")
    resume_from_checkpoint: str | None = key(
        None, path_value, "'latest' or a folder", "TrainConfig.resume_from_checkpoint"
    )
    validation_steps: int | None = key(1000, optional(integer(1)), "", "TrainConfig.validation_steps")
    lr_scheduler: str = key("constant", _lr_scheduler, "diffusers get_scheduler", "TrainConfig.lr_scheduler")
    lr_warmup_steps: int = key(0, integer(0), "warm-up optimiser steps", "TrainConfig.lr_warmup_steps")
    lr_num_cycles: int = key(1, integer(1), "cosine_with_restarts restarts", "TrainConfig.lr_num_cycles")
    scale_lr: bool = key(False, fixed([False], "give the learning rate you want in learning_rate"))
    include_frame1_in_mse_loss: bool = key(
        False,
        fixed([False], "frame 0 is the clean conditioning latent, so the loss covers frames 1..F-1 (research default)"),
    )
    enable_xformers_memory_efficient_attention: bool = key(
        False, boolean, "no effect: MIVA processors use PyTorch SDPA (memory-efficient already)"
    )
    push_to_hub: bool = key(False, boolean, "miva", "TrainConfig.push_to_hub")
    hub_model_id: str | None = key(None, optional(string), "miva", "TrainConfig.hub_model_id")
    hub_private: bool = key(False, boolean, "miva", "TrainConfig.hub_private")
    report_to: str = key("auto", choice(TRACKERS), "miva", "TrainConfig.report_to")


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
    """`TrainConfig` for `MIVAConfig` `config` (see `MIVAConfig.train_config`)."""
    from .training.train_config import TrainConfig

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
    td, v = config.train_data, config.validation_data
    video_root = td.video_root
    roots = [video_root] if isinstance(video_root, str) else video_root or []
    if tiny and not all(os.path.exists(r) for r in roots or ["<none>"]):
        video_root = None  # placeholders under --tiny: the trainer writes synthetic clips
    elif video_root is None:
        raise ConfigError("train_data.video_root: required (a folder of clips or a list of clip paths)")
    items = []
    if v.image_path is not None and (not tiny or Path(v.image_path).exists()):
        items = [item for item in config.inputs(must_exist=not tiny) if Path(item.image).is_file()]
    sampling = {k: val for k, val in config.pipeline_kwargs(include_adapters=False).items() if k not in _VALIDATION_OWN}
    validation = dict(
        image=[item.image for item in items] or None,
        prompt=(items[0].prompt or None) if items else None,
        num_frames=v.video_length,
        height=v.height,
        width=v.width,
        num_inference_steps=v.num_inference_steps,
        guidance_scale=v.guidance_scale,
        seed=config.global_seed,
        pipeline_kwargs=sampling,
    )
    kwargs = dict(
        output_dir=config.output_dir,
        pretrained_model_path=config.pretrained_model_path,
        motion_module_path=config.motion_module_path,
        tiny=tiny,
        noise_scheduler_kwargs={k: val for k, val in config.noise_scheduler_kwargs.items() if k in DDPM_KWARGS},
        adapter=adapter,
        adapter_name=config.names()[0],
        trainable_modules=trainable_parts(config.trainable_modules, adapter),
        video_root=video_root,
        prompt=td.prompt,
        num_frames=td.n_sample_frames,
        width=td.width,
        height=td.height,
        sample_frame_rate=td.sample_frame_rate,
        random_flip=td.random_flip,
        validation=validation,
        seed=config.global_seed,
        word_to_learn=config.word_to_learn,
        initializer_token=config.initializer_token,
        oa_bin_id=config.unet_additional_kwargs.oa_bin_id,
        oa_bases_path=config.unet_additional_kwargs.oa_bases_path,
    )
    for name in (
        "split_ckpt",
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "lr_num_cycles",
        "adam_beta1",
        "adam_beta2",
        "adam_weight_decay",
        "adam_epsilon",
        "use_8bit_adam",
        "max_grad_norm",
        "gradient_accumulation_steps",
        "train_batch_size",
        "max_train_steps",
        "mixed_precision",
        "gradient_checkpointing",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "validation_steps",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
        "report_to",
    ):
        kwargs[name] = getattr(config, name)
    try:
        return TrainConfig(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None

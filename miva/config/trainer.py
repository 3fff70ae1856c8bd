"""The trainer's view of the run config: `TrainConfig` (one adapter training run) and its `ValidationConfig`.

`TrainConfig` is what `miva.training.train.train` takes. Build it from Python (`TrainConfig(...)`), from the
trainer's own flat layout (`TrainConfig.from_dict` / `from_yaml`)::

    output_dir: outputs/waterfall
    pretrained_model_path: runwayml/stable-diffusion-v1-5     # or `tiny: true` for the offline miva.tiny model
    motion_module_path: guoyww/animatediff-motion-adapter-v1-5-3
    adapter_name: waterfall
    adapter: {use_i2v: true, use_motion_lora: true, use_ca_lora: true}   # a MIVAAdapterConfig
    video_root: data/waterfall
    prompt: a waterfall flowing
    max_train_steps: 15000
    validation: {image: first_frame.png, num_inference_steps: 25}

or from the seed's layout (`miva.config.load_config(...).train_config()`), imported through one key map
(`miva.config.training.RESEARCH_KEY_MAP`); its research keys take their defaults and checks from the fields here. Every field is checked by its declared check (`miva.config.fields`, the same checks as the seed's layout);
errors name the field as a keyword (`width=100 must be a multiple of 8 ...`). Defaults follow the research training
script (docs/research.md#training) except `split_ckpt` (True: the native adapter) and `mixed_precision` (fp16, falling back
to "no" without a GPU).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from ..attention_processors.adapter_config import MIVAAdapterConfig
from ..attention_processors.parts import TRAINABLE_PARTS, adapter_parts
from .fields import (
    ConfigError,
    boolean,
    check_fields,
    choice,
    fail,
    frame_rate,
    integer,
    key,
    list_of,
    local_path,
    missing,
    multiple_of_8,
    number,
    one_or_list,
    optional,
    string,
    unknown_key,
    word,
)
from .mask_keys import MaskTrainingFields

__all__ = ["TRAINABLE_PARTS", "TrainConfig", "ValidationConfig", "adapter_parts", "both_or_neither"]

# What can be trained (docs/research.md#training) and which parts an adapter has: declared once, in `attention_processors.parts`.
MIXED_PRECISION = ("no", "fp16", "bf16")
TRACKERS = (
    "auto",
    "none",
    "all",
    "tensorboard",
    "wandb",
    "trackio",
    "comet_ml",
    "mlflow",
    "clearml",
    "dvclive",
    "swanlab",
)


def lr_scheduler_names() -> list[str]:
    """The `lr_scheduler` values: diffusers' `SchedulerType` names, except `piecewise_constant` (it needs step
    rules, which no key here gives)."""
    from diffusers.optimization import SchedulerType

    return [t.value for t in SchedulerType if t.value != "piecewise_constant"]


def lr_scheduler(path: str, value: Any) -> str:
    return choice(lr_scheduler_names())(path, value)


def both_or_neither(word_to_learn: str | None, initializer_token: str | None) -> None:
    """Textual inversion needs the new word and the existing token it starts from, or neither."""
    if (word_to_learn is None) != (initializer_token is None):
        missing, given = (
            ("initializer_token", "word_to_learn") if initializer_token is None else ("word_to_learn", "initializer_token")
        )
        raise ConfigError(f"{missing}: required together with {given} (the new word and the existing token it "
                          "starts from); set both or neither")


def _timestep_range(path: str, t: Any) -> list[int] | None:
    if t is not None and (
        not isinstance(t, (list, tuple))
        or len(t) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in t)
        or not 0 <= t[0] < t[1]
    ):
        raise fail(path, t, "must be [min, max) with 0 <= min < max")
    return None if t is None else list(t)


def _adapter_name(path: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", value):
        raise fail(path, value, "must be a non-empty string of letters, digits, '_' or '-'")
    return value


def _mapping(path: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise fail(path, value, "must be a mapping")
    return value


def _paths(path: str, value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise fail(path, value, "must be a path or a list of paths")


def _parts(path: str, value: Any) -> list[str] | None:
    if value is not None and (isinstance(value, str) or not isinstance(value, (list, tuple))):
        raise fail(path, value, f"must be a list of names from {list(TRAINABLE_PARTS)}")
    return optional(list_of(choice(TRAINABLE_PARTS)))(path, value)


@dataclass
class ValidationConfig:
    """Validation videos made during and after training (GIFs under `<output_dir>/validation/`)."""

    image: str | list[str] | None = key(
        None, _paths, "Input image path(s); default: the first frame of the first clip."
    )
    prompt: str | None = key(None, optional(string), "Prompt; default: the training prompt.")
    num_frames: int | None = key(None, optional(integer(1)), "Frames; default: the training num_frames.")
    height: int | None = key(None, optional(multiple_of_8), "Height; default: the training height.")
    width: int | None = key(None, optional(multiple_of_8), "Width; default: the training width.")
    num_inference_steps: int = key(25, integer(1), "Denoising steps.")
    guidance_scale: float = key(1.0, number(0.0), "CFG scale (the research examples use 1).")
    seed: int | None = key(None, optional(integer(0)), "Generator seed; default: the training seed.")
    pipeline_kwargs: dict = key(None, _mapping, "More MIVAPipeline.__call__ arguments.", factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def images(self) -> list[str]:
        if self.image is None:
            return []
        return [self.image] if isinstance(self.image, str) else list(self.image)

    def validate(self) -> None:
        check_fields(self, prefix="validation.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationConfig:
        return cls(**_known(cls, data, "validation."))


def _known(cls, data: Any, prefix: str = "") -> dict:
    """`data` if it is a mapping of `cls`'s fields; else the one-line error naming the first unknown key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'a training config'}: must be a mapping, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    for name in data:
        if name not in valid:
            raise unknown_key(f"{prefix}{name}", name, valid)
    return data


@dataclass
class TrainConfig(MaskTrainingFields):
    """Everything one MIVA adapter training run needs. Construct it directly, or with `from_dict` / `from_yaml`.

    Raises `ConfigError` (a `ValueError`) naming the field, the value and what is valid, at construction and in
    `validate()`.
    """

    output_dir: str = key("outputs/miva-adapter", local_path, "Checkpoints, logs, adapter, GIFs.")
    # Model sources.
    pretrained_model_path: str | None = key(None, optional(string), "SD1.5 diffusers folder or Hub id.")
    motion_module_path: str | None = key(
        None, optional(string), "MotionAdapter folder or Hub id, or an AnimateDiff .ckpt/.safetensors file."
    )
    tiny: bool = key(False, boolean, "Use the offline miva.tiny components (tests, demos).")
    noise_scheduler_kwargs: dict = key(None, _mapping, "Overrides of the DDPM config.", factory=dict)
    # The adapter.
    adapter: MIVAAdapterConfig = key(None, factory=MIVAAdapterConfig)
    adapter_name: str = key("miva", _adapter_name, "Adapter name (letters, digits, '_', '-').")
    trainable_modules: list[str] | None = key(
        None, _parts, f"Parts to train, from {TRAINABLE_PARTS}; default: every part it has."
    )
    # Data.
    video_root: str | list[str] | None = key(
        None, optional(one_or_list(local_path)), "Folder of clips, or clip paths."
    )
    prompt: str | None = key(None, optional(string), "Prompt of every clip (a <clip>.txt overrides).")
    num_frames: int = key(16, integer(2), "Frames per sample (seed: n_sample_frames).")
    sample_frame_rate: int | list[int] = key(4, frame_rate, "Stride, or an inclusive [min, max].")
    width: int = key(512, multiple_of_8, "Training width (multiple of 8).")
    height: int = key(320, multiple_of_8, "Training height (multiple of 8).")
    random_flip: bool = key(True, boolean, "Flip whole clips left-right with p = 0.5.")
    dataloader_num_workers: int = key(0, integer(0), "DataLoader worker processes.")
    # Optimisation; the schedule goes through diffusers.optimization.get_scheduler as diffusers' scripts do.
    learning_rate: float = key(1e-5, number(0.0, open_low=True), "Peak learning rate (constant by default).")
    lr_scheduler: str = key("constant", lr_scheduler, "A diffusers SchedulerType name.")
    lr_warmup_steps: int = key(0, integer(0), "Warm-up optimiser steps (not for 'constant').")
    lr_num_cycles: int = key(1, integer(1), "Restarts of 'cosine_with_restarts'.")
    adam_beta1: float = key(0.9, number(0.0, 1.0))
    adam_beta2: float = key(0.999, number(0.0, 1.0))
    adam_weight_decay: float = key(1e-2, number(0.0))
    adam_epsilon: float = key(1e-8, number(0.0, open_low=True))
    use_8bit_adam: bool = key(True, boolean, "bitsandbytes AdamW8bit when installed and on CUDA.")
    max_grad_norm: float = key(1.0, number(0.0, open_low=True))
    gradient_accumulation_steps: int = key(1, integer(1))
    train_batch_size: int = key(1, integer(1))
    max_train_steps: int = key(15000, integer(1))
    timestep_range: list[int] | None = key(
        None, _timestep_range, "Draw t from [min, max) instead of [0, num_train_timesteps)."
    )
    mixed_precision: str = key("fp16", choice(MIXED_PRECISION), f"One of {MIXED_PRECISION}; 'no' on a CPU.")
    gradient_checkpointing: bool = key(True, boolean)
    seed: int = key(42, integer(0))
    # Checkpoints, validation, output.
    checkpointing_steps: int | None = key(5000, optional(integer(1)), "Save the training state every N steps.")
    checkpoints_total_limit: int | None = key(None, optional(integer(1)), "Keep only the last K checkpoints.")
    resume_from_checkpoint: str | None = key(
        None, optional(local_path), "None, 'latest' or a checkpoint dir."
    )
    validation_steps: int | None = key(1000, optional(integer(1)), "Validation GIFs every N steps and at the end.")
    validation: ValidationConfig = key(None, factory=ValidationConfig)
    split_ckpt: bool = key(True, boolean, "True: native adapter folder; False: full UNet file.")
    # Textual inversion and orthogonal adapters.
    word_to_learn: str | None = key(None, optional(word), "New token learned along with the adapter.")
    initializer_token: str | None = key(None, optional(word), "Existing token that initialises it.")
    oa_bin_id: int | None = key(None, optional(integer(0)), "Orthogonal-adapter bin (needs oa_bases_path).")
    oa_bases_path: str | None = key(None, optional(local_path), "Bases library (miva bases create).")
    # Hub and logging.
    push_to_hub: bool = key(False, boolean)
    hub_model_id: str | None = key(None, optional(string), "Hub repo id, e.g. user/miva-waterfall.")
    hub_private: bool = key(False, boolean)
    report_to: str = key("auto", choice(TRACKERS), "'auto' = tensorboard when installed, else none.")

    def __post_init__(self) -> None:
        if isinstance(self.adapter, dict):  # a saved Wan config carries Wan-only fields (e.g. implicit_act)
            from ..backbones.wan.config import WanAdapterConfig

            self.adapter = (WanAdapterConfig if self.is_wan else MIVAAdapterConfig).from_dict(self.adapter)
        if isinstance(self.validation, dict):
            self.validation = ValidationConfig.from_dict(self.validation)
        self.validate()

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field (its declared check, then the rules between fields); fill the adapter's
        `word_to_learn`, `oa_bin_id`, `prompt` and provenance from ours."""
        if not isinstance(self.adapter, MIVAAdapterConfig):
            raise ConfigError(f"adapter={self.adapter!r} must be a MIVAAdapterConfig or a mapping of its fields")
        self._match_backbone()
        self.adapter.validate()
        if not isinstance(self.validation, ValidationConfig):
            raise ConfigError(f"validation={self.validation!r} must be a ValidationConfig or a mapping of its fields")
        self.validation.validate()
        check_fields(self)
        if not self.tiny:
            for name in ("pretrained_model_path", "motion_module_path")[: 1 if self.is_wan else 2]:
                if not getattr(self, name):
                    raise missing(name, "(a local diffusers folder or a Hub id) unless tiny: true").as_keyword()
        if self.video_root is None and not self.tiny:
            raise missing("video_root", "(a folder of clips or a list of clip paths)").as_keyword()
        self._validate_parts()
        self.validate_mask_fields(self.adapter.use_mask_branch)
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ConfigError(f"lr_warmup_steps={self.lr_warmup_steps} has no effect with lr_scheduler='constant'; "
                              "use 'constant_with_warmup' (or another schedule)")
        both_or_neither(self.word_to_learn, self.initializer_token)
        if self.oa_bin_id is not None and not self.oa_bases_path:
            raise ConfigError(
                f"oa_bin_id={self.oa_bin_id} needs oa_bases_path (a bases library made with `miva bases create`)"
            )
        if self.push_to_hub:
            if not self.hub_model_id:
                raise ConfigError("push_to_hub: true needs hub_model_id (e.g. 'user/miva-waterfall')")
            if not self.split_ckpt:
                raise ConfigError("push_to_hub: true needs split_ckpt: true (the Hub format is the native adapter)")
        self._sync_adapter()

    @property
    def is_wan(self) -> bool:
        """Whether the base is a Wan2.1 DiT (`pretrained_model_path` decides: `base_registry.base_backbone`)."""
        from ..backbones.declared import WAN
        from ..base_registry import base_backbone

        return base_backbone(self.pretrained_model_path) == WAN.id

    def _match_backbone(self) -> None:
        """On a Wan base the adapter is a `WanAdapterConfig` (same shared fields) and no motion module is read."""
        if not self.is_wan:
            return
        from ..backbones.wan.config import WanAdapterConfig

        if self.motion_module_path:
            raise ConfigError(f"motion_module_path={self.motion_module_path!r}: the base "
                              f"{self.pretrained_model_path!r} is a Wan2.1 DiT, which has no motion module; remove it")
        if not isinstance(self.adapter, WanAdapterConfig):
            try:
                self.adapter = WanAdapterConfig(**self.adapter.to_dict())
            except ValueError as e:
                raise ConfigError(f"adapter: {e}") from None
        if not self.split_ckpt:
            raise ConfigError("split_ckpt=False: the full-UNet file is a UNet format; a Wan adapter is saved as a "
                              "native adapter folder (split_ckpt: true)")
        if self.num_frames % 4 != 1:
            raise ConfigError(f"num_frames={self.num_frames} is not 4k+1: Wan's VAE packs 4 frames after the first "
                              "into one latent frame; use e.g. 9, 13 or 17")

    def _validate_parts(self) -> None:
        available = adapter_parts(self.adapter)
        if self.trainable_modules is None:
            if not available and not self.word_to_learn:
                raise ConfigError(
                    "the adapter has no trainable part (use_i2v, use_motion_lora, use_motion_embed, "
                    "use_ca_lora and ca_mode='implicit' are all off) and no word_to_learn is set"
                )
            return
        for part in self.trainable_modules:
            if part not in available:
                raise ConfigError(
                    f"trainable_modules entry {part!r} is not a part of this adapter; it has "
                    f"{available} (enable the part in `adapter`, e.g. use_ca_lora: true for 'ca_lora')"
                )
        if not self.trainable_modules and not self.word_to_learn:
            raise ConfigError("trainable_modules=[] trains nothing; list parts or set word_to_learn")

    def _sync_adapter(self) -> None:
        """The adapter config records what the adapter was trained with (it is saved in adapter_config.json)."""
        for name in ("word_to_learn", "oa_bin_id"):
            mine, adapter_value = getattr(self, name), getattr(self.adapter, name)
            if adapter_value is not None and mine is not None and adapter_value != mine:
                raise ConfigError(f"{name}={mine!r} disagrees with adapter.{name}={adapter_value!r}; set one of them")
            if mine is None and adapter_value is not None:
                if name == "word_to_learn":
                    raise ConfigError(
                        f"adapter.word_to_learn={adapter_value!r} is set: set word_to_learn and "
                        "initializer_token at the top level to learn it"
                    )
                raise ConfigError(
                    f"adapter.oa_bin_id={adapter_value!r} is set: set oa_bin_id and oa_bases_path at "
                    "the top level to train with orthogonal bins"
                )
            setattr(self.adapter, name, mine)
        if self.adapter.prompt is None:
            self.adapter.prompt = self.prompt
        # What the run really uses: under tiny the model paths are ignored (miva.tiny), whatever they say.
        from ..loaders.model_card import TINY_MODELS

        if self.tiny and self.is_wan:
            self.adapter.base_model = "tiny-wan"
        elif self.tiny:
            self.adapter.base_model = self.adapter.motion_adapter = TINY_MODELS
        if self.adapter.base_model is None:
            self.adapter.base_model = self.pretrained_model_path
        if self.adapter.motion_adapter is None:
            self.adapter.motion_adapter = self.motion_module_path

    # ------------------------------------------------------------------------------------------------ parts
    @property
    def parts(self) -> list[str]:
        """The adapter parts that train (resolved `trainable_modules`)."""
        return adapter_parts(self.adapter) if self.trainable_modules is None else list(self.trainable_modules)

    # ------------------------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adapter"] = self.adapter.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping of our layout; unknown keys raise `ConfigError` with the closest valid one."""
        return cls(**_known(cls, data))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML file (OmegaConf, so `${...}` interpolations work), then apply `key=value` overrides."""
        from .fields import apply_overrides, read_yaml

        return cls.from_dict(apply_overrides(read_yaml(path), overrides))

    def to_yaml(self, path: str | os.PathLike) -> None:
        import yaml

        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)

"""Typed settings of the MIVA trainer (`TrainConfig`), read from our own YAML/dict layout.

The layout is flat, with two nested sections::

    output_dir: outputs/waterfall
    pretrained_model_path: runwayml/stable-diffusion-v1-5     # or `tiny: true` for the offline miva.tiny model
    motion_module_path: guoyww/animatediff-motion-adapter-v1-5-3
    adapter_name: waterfall
    adapter: {use_i2v: true, use_motion_lora: true, use_ca_lora: true}   # a MIVAAdapterConfig
    video_root: data/waterfall
    prompt: a waterfall flowing
    max_train_steps: 15000
    validation: {image: first_frame.png, num_inference_steps: 25}

Defaults follow the research training script (REFERENCE.md §8) except `split_ckpt` (True: the native adapter is
what this project ships) and `mixed_precision` (fp16, falling back to "no" without a GPU). The seed's own YAML
layout is mapped onto this class by `miva.config` (issue 7).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..attention_processors.adapter_config import MIVAAdapterConfig
from ..attention_processors.parts import TRAINABLE_PARTS, adapter_parts

__all__ = ["TRAINABLE_PARTS", "TrainConfig", "ValidationConfig", "adapter_parts", "apply_overrides"]

# What can be trained, in terms of adapter parts (DESIGN.md §3.9), and which of them an adapter has: declared once in
# `attention_processors.parts` ("i2v" is the cross-frame branch's `to_out` (and its own `to_q` copy when
# `i2v_train_q`); "adaptive_weight" the `sa_first_frame_scale="adaptive_<T>"` weight module).
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


def _unknown_key_error(section: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {sorted(valid)}"
    return ValueError(f"unknown {section} key {key!r}{hint}")


def lr_scheduler_names() -> list[str]:
    """The `lr_scheduler` values: diffusers' `SchedulerType` names, except `piecewise_constant` (it needs step
    rules, which no key here gives)."""
    from diffusers.optimization import SchedulerType

    return [t.value for t in SchedulerType if t.value != "piecewise_constant"]


def _check_int(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if optional else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{extra}")


def _check_float(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
        ok = ok and math.isfinite(value)  # an infinite learning rate or clip norm makes the adapter NaN
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name}={value!r} must be a number {bound}" + (f" and <= {high}" if high is not None else ""))


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")


@dataclass
class ValidationConfig:
    """Validation videos made during and after training (GIFs under `<output_dir>/validation/`)."""

    image: str | list[str] | None = field(
        default=None, metadata={"help": "Input image path(s); default: the first frame of the first training clip."}
    )
    prompt: str | None = field(default=None, metadata={"help": "Prompt; default: the training prompt."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames; default: the training num_frames."})
    height: int | None = field(default=None, metadata={"help": "Height; default: the training height."})
    width: int | None = field(default=None, metadata={"help": "Width; default: the training width."})
    num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=1.0, metadata={"help": "CFG scale (the research examples use 1)."})
    seed: int | None = field(default=None, metadata={"help": "Generator seed; default: the training seed."})
    pipeline_kwargs: dict = field(default_factory=dict, metadata={"help": "More MIVAPipeline.__call__ arguments."})

    def __post_init__(self) -> None:
        self.validate()

    @property
    def images(self) -> list[str]:
        if self.image is None:
            return []
        return [self.image] if isinstance(self.image, str) else list(self.image)

    def validate(self) -> None:
        if self.image is not None and not (
            isinstance(self.image, str)
            or (isinstance(self.image, list) and all(isinstance(i, str) for i in self.image))
        ):
            raise ValueError(f"validation.image={self.image!r} must be a path or a list of paths")
        for name in ("num_frames", "height", "width"):
            _check_int(f"validation.{name}", getattr(self, name), optional=True)
        _check_int("validation.num_inference_steps", self.num_inference_steps)
        _check_float("validation.guidance_scale", self.guidance_scale, 0.0)
        _check_int("validation.seed", self.seed, minimum=0, optional=True)
        if not isinstance(self.pipeline_kwargs, dict):
            raise ValueError(f"validation.pipeline_kwargs={self.pipeline_kwargs!r} must be a mapping")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in valid:
                raise _unknown_key_error("validation", key, valid)
        return cls(**data)


@dataclass
class TrainConfig:
    """Everything one MIVA adapter training run needs. Construct it directly, or with `from_dict` / `from_yaml`.

    Raises `ValueError` naming the field, the value and what is valid, at construction and in `validate()`.
    """

    output_dir: str = field(default="outputs/miva-adapter", metadata={"help": "Checkpoints, logs, adapter, GIFs."})
    # Model sources.
    pretrained_model_path: str | None = field(default=None, metadata={"help": "SD1.5 diffusers folder or Hub id."})
    motion_module_path: str | None = field(
        default=None, metadata={"help": "MotionAdapter folder or Hub id, or an AnimateDiff .ckpt/.safetensors file."}
    )
    tiny: bool = field(default=False, metadata={"help": "Use the offline miva.tiny components (tests, demos)."})
    noise_scheduler_kwargs: dict = field(default_factory=dict, metadata={"help": "Overrides of the DDPM config."})
    # The adapter.
    adapter: MIVAAdapterConfig = field(default_factory=MIVAAdapterConfig)
    adapter_name: str = field(default="miva", metadata={"help": "Adapter name (letters, digits, '_', '-')."})
    trainable_modules: list[str] | None = field(
        default=None, metadata={"help": f"Parts to train, from {TRAINABLE_PARTS}; default: every part it has."}
    )
    # Data.
    video_root: str | list[str] | None = field(default=None, metadata={"help": "Folder of clips, or clip paths."})
    prompt: str | None = field(default=None, metadata={"help": "Prompt of every clip (a <clip>.txt overrides)."})
    num_frames: int = field(default=16, metadata={"help": "Frames per sample (seed: n_sample_frames)."})
    sample_frame_rate: int | list[int] = field(default=4, metadata={"help": "Stride, or an inclusive [min, max]."})
    width: int = field(default=512, metadata={"help": "Training width (multiple of 8)."})
    height: int = field(default=320, metadata={"help": "Training height (multiple of 8)."})
    random_flip: bool = field(default=True, metadata={"help": "Flip whole clips left-right with p = 0.5."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    # Optimisation.
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (constant by default)."})
    # The schedule, through diffusers.optimization.get_scheduler as diffusers' training scripts do.
    lr_scheduler: str = field(default="constant", metadata={"help": "A diffusers SchedulerType name."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimiser steps (not for 'constant')."})
    lr_num_cycles: int = field(default=1, metadata={"help": "Restarts of 'cosine_with_restarts'."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = field(default=True, metadata={"help": "bitsandbytes AdamW8bit when installed and on CUDA."})
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    train_batch_size: int = 1
    max_train_steps: int = 15000
    timestep_range: list[int] | None = field(
        default=None, metadata={"help": "Draw t from [min, max) instead of [0, num_train_timesteps)."}
    )
    mixed_precision: str = field(default="fp16", metadata={"help": f"One of {MIXED_PRECISION}; 'no' on a CPU."})
    gradient_checkpointing: bool = True
    seed: int = 42
    # Checkpoints, validation, output.
    checkpointing_steps: int | None = field(default=5000, metadata={"help": "Save the training state every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep only the last K checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "None, 'latest' or a checkpoint dir."})
    validation_steps: int | None = field(
        default=1000, metadata={"help": "Validation GIFs every N steps and at the end."}
    )
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    split_ckpt: bool = field(default=True, metadata={"help": "True: native adapter folder; False: full UNet file."})
    # Textual inversion and orthogonal adapters.
    word_to_learn: str | None = field(default=None, metadata={"help": "New token learned along with the adapter."})
    initializer_token: str | None = field(default=None, metadata={"help": "Existing token that initialises it."})
    oa_bin_id: int | None = field(default=None, metadata={"help": "Orthogonal-adapter bin (needs oa_bases_path)."})
    oa_bases_path: str | None = field(default=None, metadata={"help": "Bases library (miva bases create)."})
    # Hub and logging.
    push_to_hub: bool = False
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id, e.g. user/miva-waterfall."})
    hub_private: bool = False
    report_to: str = field(default="auto", metadata={"help": "'auto' = tensorboard when installed, else none."})

    def __post_init__(self) -> None:
        if isinstance(self.adapter, dict):
            self.adapter = MIVAAdapterConfig.from_dict(self.adapter)
        if isinstance(self.validation, dict):
            self.validation = ValidationConfig.from_dict(self.validation)
        self.validate()

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; fill the adapter's `word_to_learn`, `oa_bin_id`, `prompt` and provenance from ours."""
        if not isinstance(self.adapter, MIVAAdapterConfig):
            raise ValueError(f"adapter={self.adapter!r} must be a MIVAAdapterConfig or a mapping of its fields")
        self.adapter.validate()
        if not isinstance(self.validation, ValidationConfig):
            raise ValueError(f"validation={self.validation!r} must be a ValidationConfig or a mapping of its fields")
        self.validation.validate()
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise ValueError(f"output_dir={self.output_dir!r} must be a non-empty path")
        self.output_dir = str(self.output_dir)
        for name in (
            "tiny",
            "random_flip",
            "use_8bit_adam",
            "gradient_checkpointing",
            "split_ckpt",
            "push_to_hub",
            "hub_private",
        ):
            _check_bool(name, getattr(self, name))
        if not self.tiny:
            for name in ("pretrained_model_path", "motion_module_path"):
                if not getattr(self, name):
                    raise ValueError(f"{name} is required (a local diffusers folder or a Hub id) unless tiny: true")
        if not isinstance(self.adapter_name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", self.adapter_name):
            raise ValueError(
                f"adapter_name={self.adapter_name!r} must be a non-empty string of letters, digits, '_' or '-'"
            )
        self._validate_parts()
        self._validate_data()
        self._validate_optimisation()
        self._validate_outputs()
        self._sync_adapter()

    def _validate_parts(self) -> None:
        available = adapter_parts(self.adapter)
        if self.trainable_modules is None:
            if not available and not self.word_to_learn:
                raise ValueError(
                    "the adapter has no trainable part (use_i2v, use_motion_lora, use_motion_embed, "
                    "use_ca_lora and ca_mode='implicit' are all off) and no word_to_learn is set"
                )
            return
        if isinstance(self.trainable_modules, str) or not isinstance(self.trainable_modules, (list, tuple)):
            raise ValueError(
                f"trainable_modules={self.trainable_modules!r} must be a list of names from {list(TRAINABLE_PARTS)}"
            )
        self.trainable_modules = list(self.trainable_modules)
        for part in self.trainable_modules:
            if part not in TRAINABLE_PARTS:
                close = difflib.get_close_matches(str(part), TRAINABLE_PARTS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"trainable_modules entry {part!r} is not one of {list(TRAINABLE_PARTS)}{hint}")
            if part not in available:
                raise ValueError(
                    f"trainable_modules entry {part!r} is not a part of this adapter; it has "
                    f"{available} (enable the part in `adapter`, e.g. use_ca_lora: true for 'ca_lora')"
                )
        if not self.trainable_modules and not self.word_to_learn:
            raise ValueError("trainable_modules=[] trains nothing; list parts or set word_to_learn")

    def _validate_data(self) -> None:
        if self.video_root is None and not self.tiny:
            raise ValueError("video_root is required: a folder of clips or a list of clip paths")
        if self.video_root is not None and not (
            isinstance(self.video_root, (str, os.PathLike))
            or (isinstance(self.video_root, (list, tuple)) and self.video_root)
        ):
            raise ValueError(f"video_root={self.video_root!r} must be a folder or a non-empty list of clip paths")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt={self.prompt!r} must be a string")
        _check_int("num_frames", self.num_frames, minimum=2)
        rate = self.sample_frame_rate
        if isinstance(rate, (list, tuple)):
            if (
                len(rate) != 2
                or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rate)
                or (rate[0] > rate[1])
            ):
                raise ValueError(f"sample_frame_rate={rate!r} must be an int >= 1 or a [min, max] pair with min <= max")
            self.sample_frame_rate = list(rate)
        else:
            _check_int("sample_frame_rate", rate)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value)
            if value % 8:
                raise ValueError(f"{name}={value} must be a multiple of 8 (the VAE downsamples by 8)")
        _check_int("dataloader_num_workers", self.dataloader_num_workers, minimum=0)

    def _validate_optimisation(self) -> None:
        _check_float("learning_rate", self.learning_rate, 0.0, low_open=True)
        schedulers = lr_scheduler_names()
        if self.lr_scheduler not in schedulers:
            close = difflib.get_close_matches(str(self.lr_scheduler), schedulers, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"lr_scheduler={self.lr_scheduler!r} is not one of {schedulers}{hint}")
        _check_int("lr_warmup_steps", self.lr_warmup_steps, minimum=0)
        _check_int("lr_num_cycles", self.lr_num_cycles)
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps} has no effect with lr_scheduler='constant'; "
                             "use 'constant_with_warmup' (or another schedule)")
        _check_float("adam_beta1", self.adam_beta1, 0.0, 1.0)
        _check_float("adam_beta2", self.adam_beta2, 0.0, 1.0)
        _check_float("adam_weight_decay", self.adam_weight_decay, 0.0)
        _check_float("adam_epsilon", self.adam_epsilon, 0.0, low_open=True)
        _check_float("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        for name in ("gradient_accumulation_steps", "train_batch_size", "max_train_steps"):
            _check_int(name, getattr(self, name))
        _check_int("seed", self.seed, minimum=0)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {list(MIXED_PRECISION)}")
        if self.timestep_range is not None:
            t = self.timestep_range
            if (
                not isinstance(t, (list, tuple))
                or len(t) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in t)
                or not 0 <= t[0] < t[1]
            ):
                raise ValueError(f"timestep_range={t!r} must be [min, max) with 0 <= min < max")
            self.timestep_range = list(t)
        if not isinstance(self.noise_scheduler_kwargs, dict):
            raise ValueError(f"noise_scheduler_kwargs={self.noise_scheduler_kwargs!r} must be a mapping")

    def _validate_outputs(self) -> None:
        _check_int("checkpointing_steps", self.checkpointing_steps, optional=True)
        _check_int("checkpoints_total_limit", self.checkpoints_total_limit, optional=True)
        _check_int("validation_steps", self.validation_steps, optional=True)
        resume = self.resume_from_checkpoint
        if resume is not None and not (isinstance(resume, (str, os.PathLike)) and str(resume)):
            raise ValueError(f"resume_from_checkpoint={resume!r} must be null, 'latest' or a checkpoint folder")
        if (self.word_to_learn is None) != (self.initializer_token is None):
            raise ValueError(
                f"word_to_learn={self.word_to_learn!r} and initializer_token={self.initializer_token!r}: "
                "set both (the new word and the existing token it starts from) or neither"
            )
        for name in ("word_to_learn", "initializer_token"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or " " in value.strip()):
                raise ValueError(f"{name}={value!r} must be a single word without spaces")
        if self.oa_bin_id is not None:
            _check_int("oa_bin_id", self.oa_bin_id, minimum=0)
            if not self.oa_bases_path:
                raise ValueError(
                    f"oa_bin_id={self.oa_bin_id} needs oa_bases_path (a bases library made with `miva bases create`)"
                )
        if self.push_to_hub:
            if not self.hub_model_id:
                raise ValueError("push_to_hub: true needs hub_model_id (e.g. 'user/miva-waterfall')")
            if not self.split_ckpt:
                raise ValueError("push_to_hub: true needs split_ckpt: true (the Hub format is the native adapter)")
        if self.report_to not in TRACKERS:
            close = difflib.get_close_matches(str(self.report_to), TRACKERS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"report_to={self.report_to!r} is not one of {list(TRACKERS)}{hint}")

    def _sync_adapter(self) -> None:
        """The adapter config records what the adapter was trained with (it is saved in adapter_config.json)."""
        for ours, theirs in (("word_to_learn", "word_to_learn"), ("oa_bin_id", "oa_bin_id")):
            mine, adapter_value = getattr(self, ours), getattr(self.adapter, theirs)
            if adapter_value is not None and mine is not None and adapter_value != mine:
                raise ValueError(f"{ours}={mine!r} disagrees with adapter.{theirs}={adapter_value!r}; set one of them")
            if mine is None and adapter_value is not None:
                if ours == "word_to_learn":
                    raise ValueError(
                        f"adapter.word_to_learn={adapter_value!r} is set: set word_to_learn and "
                        "initializer_token at the top level to learn it"
                    )
                raise ValueError(
                    f"adapter.oa_bin_id={adapter_value!r} is set: set oa_bin_id and oa_bases_path at "
                    "the top level to train with orthogonal bins"
                )
            setattr(self.adapter, theirs, mine)
        if self.adapter.prompt is None:
            self.adapter.prompt = self.prompt
        # What the run really uses: under tiny the model paths are ignored (miva.tiny), whatever they say.
        from ..loaders.model_card import TINY_MODELS

        if self.tiny:
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
        """Build from a mapping of our layout; unknown keys raise `ValueError` with the closest valid one."""
        if not isinstance(data, dict):
            raise ValueError(f"a training config must be a mapping, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in valid:
                raise _unknown_key_error("training config", key, valid)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML file (OmegaConf, so `${...}` interpolations work), then apply `key=value` overrides."""
        from omegaconf import OmegaConf

        if not os.path.isfile(path):
            raise FileNotFoundError(f"training config not found: {path}")
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        if overrides:
            data = apply_overrides(data, overrides)
        return cls.from_dict(data)

    def to_yaml(self, path: str | os.PathLike) -> None:
        import yaml

        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings (dotted keys reach into sections: `adapter.use_ca_lora=true`) to a config mapping.

    Values are parsed as YAML (`true`, `1e-4`, `[1, 2]`, `null`); anything else stays a string. Returns a new dict.
    """
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. max_train_steps=100)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            target = child
        target[parts[-1]] = value
    return data

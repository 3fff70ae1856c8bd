"""One run-config schema for `miva infer`, `miva train` and the Python API.

- `schema` — `MIVAConfig` / `load_config`: the seed's YAML layout (header, `unet_additional_kwargs`,
  `validation_data`, `train_data`, `noise_scheduler_kwargs`, training keys; sections in `sections`, inputs in
  `inputs`).
- `training` — the import step into `TrainConfig`: one key map (`RESEARCH_KEY_MAP`) from research keys to trainer
  fields; research keys that set a field take its declaration (`research_key`), the shared training keys are built
  from `TrainConfig` (`training_keys`).
- `trainer` — `TrainConfig` / `ValidationConfig`: the trainer's view (and its own flat YAML layout).
- `fields` — the one machinery both use: declared fields (`key`: check, help, `feeds`), the checks (one per rule),
  `ConfigError`, the one override parser (`apply_overrides`, OmegaConf dotlist) and `fed_values`, which maps
  keys onto `MIVAAdapterConfig` / `TrainConfig` / `MIVAPipeline` from their `feeds` declarations.
- `layout` — which layout a training file uses, from the key map (`train_layout`), and `load_train_config`.

Importing `miva.config` does not import diffusers.
"""

from .fields import ConfigError, apply_overrides, suggest
from .inputs import InputItem, resolve_inputs
from .layout import load_train_config, read_yaml, train_layout
from .schema import ADAPTER_CALL_ARGS, AdapterSpec, MIVAConfig, TrainingKeys, load_config
from .sections import ADAPTER_PATH_KEYS, DDIM_KWARGS, TrainData, UNetAdditionalKwargs, ValidationData
from .trainer import TRAINABLE_PARTS, TrainConfig, ValidationConfig, adapter_parts
from .training import DDPM_KWARGS, RESEARCH_KEY_MAP, RESEARCH_MODULE_NAMES, trainable_parts

__all__ = [
    "ADAPTER_CALL_ARGS",
    "ADAPTER_PATH_KEYS",
    "DDIM_KWARGS",
    "DDPM_KWARGS",
    "RESEARCH_KEY_MAP",
    "RESEARCH_MODULE_NAMES",
    "TRAINABLE_PARTS",
    "AdapterSpec",
    "ConfigError",
    "InputItem",
    "MIVAConfig",
    "TrainConfig",
    "TrainData",
    "TrainingKeys",
    "UNetAdditionalKwargs",
    "ValidationConfig",
    "ValidationData",
    "adapter_parts",
    "apply_overrides",
    "load_config",
    "load_train_config",
    "read_yaml",
    "resolve_inputs",
    "suggest",
    "train_layout",
    "trainable_parts",
]

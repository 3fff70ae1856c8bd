"""What the config-driven subcommands share: the `--config/--set/--tiny` arguments and building
the pipeline, its adapters and learned words from a `MIVAConfig`.

Heavy imports (torch, diffusers) happen inside the functions, so `miva --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config in the research layout (docs/config.md)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key, YAML-parsed (e.g. validation_data.video_length=8); repeatable",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="run on the offline miva.tiny models (model paths in the "
        "config are ignored; missing adapter checkpoints become fresh adapters)",
    )


def load_args_config(args: argparse.Namespace):
    """The config of `--config` with `--set` and, where the command has them, `--mask` / `--schedule` (which set
    the `validation_data` keys of `miva.config.regions`) applied."""
    from ..config import load_config
    from ..config.regions import flag_overrides

    extra = flag_overrides(getattr(args, "masks", None), getattr(args, "schedules", None))
    return load_config(args.config, [*args.overrides, *extra])


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------------ models
def build_pipeline(config, tiny: bool = False, device=None, dtype=None, progress: bool = False):
    """`MIVAPipeline` from `load_base(pretrained_model_path, motion_module_path)` (a known base such as "miva-world"
    needs no motion_module_path; `tiny`: the "tiny" base), with the
    `noise_scheduler_kwargs` DDIM scheduler and, with `use_ip_adapter`, the IP-Adapter loaded. No adapters yet.
    `progress`: diffusers' progress bar over the denoising steps."""
    import torch

    from ..backbones.declared import WAN
    from ..base_registry import TINY_ID, TINY_WAN_ID, known_base
    from ..config import ConfigError
    from ..loaders.base_models import load_base
    from .backbone_run import check_wan_config, config_backbone

    if config_backbone(config, tiny) == WAN.id:  # the base decides the backbone: a MIVAWanPipeline
        check_wan_config(config)
        pipe = load_base(TINY_WAN_ID if tiny else config.pretrained_model_path, dtype=None if tiny else dtype)
        pipe.set_progress_bar_config(disable=not progress)
        return pipe.to(device) if device is not None and torch.device(device).type != "cpu" else pipe
    if tiny:
        pipe = load_base(TINY_ID)
    else:
        required = ["pretrained_model_path"] if known_base(config.pretrained_model_path) else [
            "pretrained_model_path", "motion_module_path"]  # a known base brings its own motion adapter
        for name in required:
            if getattr(config, name) is None:
                raise ConfigError(f"{name}: required (a Hub id or a local folder) unless --tiny")
        extra = {}
        if config.use_ip_adapter:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

            extra = dict(
                image_encoder=CLIPVisionModelWithProjection.from_pretrained(config.image_encoder_path),
                feature_extractor=CLIPImageProcessor(),
            )
        pipe = load_base(config.pretrained_model_path, config.motion_module_path, dtype=dtype, **extra)
    pipe.scheduler = config.scheduler(pipe.scheduler.config)
    if config.use_ip_adapter:
        if tiny and not Path(config.ip_ckpt).is_file():
            log(f"use_ip_adapter: skipped under --tiny ({config.ip_ckpt!r} is not a local file)")
        else:
            pipe.load_ip_adapter(**config.ip_adapter_kwargs())
    pipe.set_progress_bar_config(disable=not progress)
    if device is not None and torch.device(device).type != "cpu":
        pipe.to(device)
    if dtype is not None and dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


def _source_exists(source) -> bool:
    if isinstance(source, dict):
        return all(Path(p).exists() for p in source.values() if p is not None)
    return Path(source).exists()


def load_config_adapters(pipe, config, tiny: bool = False) -> list[str]:
    """Load (or, without a checkpoint, add fresh) every adapter of `config` and activate them with
    `adapter_weights` and `parallel_mode`. Under `tiny`, checkpoints that do not exist are fresh adapters too."""
    from .backbone_run import adapter_config_for, is_wan

    names = []
    for spec in config.adapter_sources(tiny):
        spec.config = adapter_config_for(pipe, spec.config)
        if spec.source is None or (tiny and not _source_exists(spec.source)):
            pipe.add_adapter(spec.name, spec.config, activate=False)
            why = "no checkpoint in the config" if spec.source is None else f"{spec.source} not found (--tiny)"
            log(f"adapter {spec.name!r}: fresh, zero-initialised ({why})")
        else:
            pipe.load_adapters(spec.source, adapter_names=[spec.name], **({} if is_wan(pipe) else {"config": spec.config}))
            check_adapter_against_config(pipe, spec, config.explicit_adapter_keys())
            log(f"adapter {spec.name!r}: loaded from {spec.source}")
        names.append(spec.name)
    pipe.set_adapters(names, config.adapter_weights(), parallel_mode=config.unet_additional_kwargs.parallel_mode)
    return names


def check_adapter_against_config(pipe, spec, keys: list[tuple[str, str]]) -> None:
    """A key the YAML sets must agree with the loaded adapter's own config (a native adapter brings its settings);
    otherwise one `ConfigError` line naming each key and both values. The adapter is removed again first."""
    from ..config import ConfigError
    from .backbone_run import denoiser

    loaded = denoiser(pipe).miva_context.configs[spec.name]
    clashes = [f"{path}: YAML {getattr(spec.config, field)!r}, adapter {getattr(loaded, field)!r}"
               for path, field in keys if getattr(spec.config, field) != getattr(loaded, field)]
    if clashes:
        pipe.delete_adapters([spec.name])
        raise ConfigError(f"adapter {spec.name!r} ({spec.source}) disagrees with the config: " + "; ".join(clashes)
                          + " (remove these keys from the YAML to use the adapter's own settings)")


def _known_word(tokenizer, word: str) -> bool:
    added = tokenizer.get_added_vocab()
    return word in added or f"<{word}>" in added


def load_learned_words(pipe, config) -> list[str]:
    """Make every `word_to_replace` known to the tokenizer: words an adapter shipped are kept; the others are read
    from `config.learned_embeds_path()` (`{word: (dim,)}` safetensors, research layout). Returns the words loaded."""
    from ..config import ConfigError

    words = config.validation_data.word_to_replace
    words = [words] if isinstance(words, str) else list(words or [])
    missing = [w for w in words if not _known_word(pipe.tokenizer, w)]
    if not missing:
        return []
    path = config.learned_embeds_path()
    if path is None:
        raise ConfigError(
            f"validation_data.word_to_replace: no learned embedding for {missing}; set "
            "textemb_checkpoint_path (a learned_embeds.safetensors) or load an adapter that ships it"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"textemb_checkpoint_path: {path} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        from ..loaders.sources import read_torch_file

        state = read_torch_file(path)
    for word in missing:
        vector = state.get(word, state.get(f"<{word}>"))
        if vector is None:
            raise ConfigError(
                f"textemb_checkpoint_path: {path} has no embedding for {word!r} (it holds {sorted(state)})"
            )
        pipe.load_textual_inversion(vector, token=word)
    log(f"learned words {missing}: loaded from {path}")
    return missing


def load_image(item, tiny: bool, width: int, height: int, index: int = 0):
    """The RGB image of `item` (an `InputItem`); under `tiny` a missing file is drawn by `make_test_image`."""
    from PIL import Image

    if os.path.isfile(item.image):
        with Image.open(item.image) as image:
            return image.convert("RGB")
    if tiny:
        from ..tiny import make_test_image

        log(f"{item.image}: not found; using miva.tiny.make_test_image (--tiny)")
        return make_test_image(width, height, seed=index)
    raise FileNotFoundError(f"validation_data.prompt_path: image {item.image} not found")


def device_and_dtype(state=None):
    """The process's device (accelerate's `PartialState`) and the inference dtype (fp16 on CUDA, else fp32)."""
    import torch

    device = state.device if state is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.type == "cuda" else torch.float32

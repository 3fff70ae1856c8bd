"""What the config-driven subcommands do differently on a Wan2.1 base (`miva.backbones.declared`): the run
config's `pretrained_model_path` decides the backbone (`base_registry.base_backbone`: `"tiny-wan"`, a Wan pipeline
folder); everything else (adapters, weights, inputs, outputs) is the same code path as on the UNet.

On Wan: no motion module, no IP-Adapter, the pipeline keeps its own flow-matching scheduler (the DDIM
`noise_scheduler_kwargs` do not apply), adapters are `WanAdapterConfig`s, and the UNet-only sampling keys are
refused when the YAML sets them.
"""

from __future__ import annotations

import inspect

from ..backbones.declared import UNET, WAN

__all__ = ["adapter_config_for", "call_kwargs_for", "check_wan_config", "config_backbone", "denoiser", "is_wan"]


def config_backbone(config, tiny: bool = False) -> str:
    """The backbone id of a run config's base; `tiny` (the `--tiny` flag) keeps a Wan config on Wan
    (`"tiny-wan"`) and runs any other on the UNet `"tiny"`."""
    from ..base_registry import base_backbone

    backbone = base_backbone(config.pretrained_model_path)
    return backbone if not tiny or backbone == WAN.id else UNET.id


def is_wan(pipe) -> bool:
    from ..pipelines.pipeline_miva_wan import MIVAWanPipeline

    return isinstance(pipe, MIVAWanPipeline)


def denoiser(pipe):
    """The model the adapters sit on: `pipe.transformer` (Wan) or `pipe.unet`."""
    return pipe.transformer if is_wan(pipe) else pipe.unet


def adapter_config_for(pipe, config):
    """`config` (a `MIVAAdapterConfig` from the YAML) as the pipeline's adapter config class: on Wan the
    `WanAdapterConfig` with the same shared fields (a UNet-only setting is refused there, naming the field)."""
    if not is_wan(pipe):
        return config
    from ..backbones.wan.config import WanAdapterConfig
    from ..config import ConfigError

    try:
        return WanAdapterConfig(**config.to_dict())
    except ValueError as e:
        raise ConfigError(f"unet_additional_kwargs: {e}") from None


def check_wan_config(config) -> None:
    """Refuse the keys a Wan base cannot honour, one line naming the key."""
    from ..config import ConfigError
    from ..config.fields import explicit_keys

    for name in ("motion_module_path", "use_ip_adapter"):
        if getattr(config, name):
            raise ConfigError(f"{name}={getattr(config, name)!r}: the base {config.pretrained_model_path!r} is a "
                              f"{WAN.id} ({WAN.description}), which has none; remove the key")
    if "noise_scheduler_kwargs" in explicit_keys(config):
        raise ConfigError(f"noise_scheduler_kwargs: DDIM arguments, but the base {config.pretrained_model_path!r} is "
                          f"a {WAN.id}, which samples with its own flow-matching scheduler; remove the section")


def call_kwargs_for(pipe, config, kwargs: dict) -> dict:
    """`config.pipeline_kwargs()` for this pipeline: on Wan, the arguments `MIVAWanPipeline.__call__` takes; a
    UNet-only one the YAML set explicitly is refused, naming its key."""
    if not is_wan(pipe):
        return kwargs
    from ..config import ConfigError
    from ..config.fields import explicit_keys, fed_values

    accepted = set(inspect.signature(type(pipe).__call__).parameters)
    paths = {name: path for name, (path, _, _) in fed_values(config, "MIVAPipeline").items()}
    for name, value in kwargs.items():
        if name in accepted or value is None or name not in paths:
            continue
        *sections, leaf = paths[name].split(".")
        part = config
        for section_name in sections:
            part = getattr(part, section_name)
        if leaf in explicit_keys(part):
            raise ConfigError(f"{paths[name]}={value!r}: not supported on a {WAN.id} base (MIVAWanPipeline takes no "
                              f"{name}); remove the key")
    return {k: v for k, v in kwargs.items() if k in accepted}

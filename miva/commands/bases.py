"""`miva bases create`: the orthogonal-adapter bases library for the UNet and adapter layout of a config.

    miva bases create --config examples/configs/train_orthogonal.yaml [--out bases.safetensors] [--seed 0]
    miva bases create --tiny --out bases.safetensors --seed 0
    miva bases create --config x.yaml --set pretrained_model_path=tiny-wan --out bases.safetensors   # a Wan base

One random orthogonal matrix per LoRA layer of the configured UNet or Wan2.1 transformer (`pretrained_model_path` a
Wan base: `tiny-wan`, a Wan pipeline folder) (docs/research.md#orthogonal-adapters), seeded, written to one
safetensors file: `--out`, else `unet_additional_kwargs.oa_bases_path`. The seed is `--seed`, else `global_seed`.
Training with `oa_bin_id` then reads it from `oa_bases_path`.
"""

from __future__ import annotations

import argparse
import os

from .common import log

HELP = "orthogonal-adapter bases library: `miva bases create` writes one for a config's UNet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="bases_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="write a bases library for a config's UNet")
    create.add_argument("--config", help="research-layout config (its UNet, oa_bases_path, global_seed)")
    create.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key, YAML-parsed; repeatable",
    )
    create.add_argument("--tiny", action="store_true", help="for the offline tiny model (tiny-wan on a Wan config)")
    create.add_argument("--out", help="output .safetensors (default: unet_additional_kwargs.oa_bases_path)")
    create.add_argument("--seed", type=int, help="seed of the random bases (default: global_seed)")


def create_bases(config, out: str | None = None, seed: int | None = None, tiny: bool = False) -> str:
    """Write the bases library for `config`'s UNet (tiny with `tiny`): one basis per LoRA layer any adapter can have
    (`miva.training.orthogonal.layer_dims`); returns its path."""
    from ..config import ConfigError
    from ..training.orthogonal import create_bases_library
    from .convert import base_unet

    path = out or config.unet_additional_kwargs.oa_bases_path
    if path is None:
        raise ConfigError(
            "unet_additional_kwargs.oa_bases_path: required to know where to write the bases (or pass --out)"
        )
    unet = _wan_transformer(config.pretrained_model_path, tiny)
    unet = unet if unet is not None else base_unet(config, tiny)
    if unet is None:
        raise ConfigError("pretrained_model_path: required (with motion_module_path) to size the bases, unless --tiny")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    create_bases_library(unet, path, seed=config.global_seed if seed is None else seed)
    return str(path)


def _wan_transformer(path, tiny: bool):
    """The `WanTransformer3DModel` of a Wan base (`"tiny-wan"`, a Wan pipeline folder or Hub id; with `tiny`, the
    tiny Wan model); None when `path` is no Wan base."""
    from ..backbones.declared import WAN
    from ..base_registry import TINY_WAN_ID, base_backbone

    if path is None or base_backbone(path) != WAN.id:
        return None
    from ..loaders.base_models import load_base

    return load_base(TINY_WAN_ID if tiny else path).transformer


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config

    if args.config is None and not args.tiny:
        raise ConfigError("--config: required (the UNet of the bases), or pass --tiny")
    config = load_config(args.config if args.config else {}, args.overrides)
    path = create_bases(config, out=args.out, seed=args.seed, tiny=args.tiny)
    log(f"wrote bases library {path}")
    return 0

"""Official MIVA-Wan checkpoint + its run YAML -> a native Wan adapter folder.

    python -m miva.backbones.wan.convert --checkpoint run/checkpoint.pt --yaml run/config.yaml \\
        --base Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out waves-wan [--name waves] [--research-exact-first]

`--base` is a diffusers Wan folder or Hub id (its `transformer/` supplies the frozen branch copies the checkpoint
does not hold, and the import is test-loaded into it); `--tiny` (or `--base tiny-wan`) uses the offline tiny
transformer instead. `miva convert --config run.yaml --checkpoint ckpt.pt --base ... --out dir` does the same from
the main command line (docs/wan.md).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .io import load_official_wan_adapter, save_wan_adapter

__all__ = ["convert_official_wan_checkpoint", "main", "wan_base_transformer"]


def wan_base_transformer(base: str | None, tiny: bool = False):
    """The `WanTransformer3DModel` an official checkpoint is imported onto: the tiny seed-0 one (`tiny` or the
    known name `"tiny-wan"`), else `<base>/transformer` of a diffusers Wan folder or Hub id."""
    from ...base_registry import TINY_WAN_ID, known_base, resolve_base_path

    if tiny or (known_base(base) is not None and known_base(base).name == TINY_WAN_ID):
        import torch

        from .tiny import tiny_wan_transformer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the tiny components' seed-0 transformer
            return tiny_wan_transformer().eval()
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(resolve_base_path(base), subfolder="transformer")


def convert_official_wan_checkpoint(checkpoint, official_config: Mapping[str, Any], transformer, out_folder,
                                    *, name: str = "adapter", research_exact_first: bool = False) -> Path:
    """Import `checkpoint` (path or tensors) with its settings onto `transformer`, write it as a native folder
    `out_folder`, and remove it from `transformer` again. Returns the folder."""
    from ...attention_processors import delete_miva_adapter

    load_official_wan_adapter(transformer, name, checkpoint, official_config,
                              research_exact_first=research_exact_first)
    try:
        return save_wan_adapter(transformer, name, out_folder)
    finally:
        delete_miva_adapter(transformer, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miva.backbones.wan.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the official flat checkpoint (.pt / .safetensors)")
    parser.add_argument("--yaml", required=True, help="the run's YAML (with dit_kwargs)")
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="diffusers Wan folder or Hub id (its transformer/)")
    base.add_argument("--tiny", action="store_true", help="the offline tiny transformer (tests)")
    parser.add_argument("--out", required=True, help="the native adapter folder to write")
    parser.add_argument("--name", default=None, help="adapter name (default: the output folder's name)")
    parser.add_argument("--research-exact-first", action="store_true", help="keep the official 'first'-mode bug")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(OmegaConf.load(args.yaml), resolve=True)
    if not isinstance(settings, dict):
        parser.error(f"--yaml {args.yaml}: expected a mapping with dit_kwargs, got {type(settings).__name__}")
    transformer = wan_base_transformer(args.base, args.tiny)
    name = args.name or Path(args.out).name
    folder = convert_official_wan_checkpoint(args.checkpoint, settings, transformer, args.out, name=name,
                                             research_exact_first=args.research_exact_first)
    print(f"adapter {name!r}: {os.fspath(args.checkpoint)} -> {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

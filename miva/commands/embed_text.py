"""`miva embed-text`: precompute the text embeddings that `validation_data.text_emb_dir` reads.

    miva embed-text --config examples/configs/infer_two_adapters.yaml [--out text_embs] [--tiny]

Writes `<dir>/<prompt>.pt` (a `(1, 77, D)` float tensor, `torch.save`) for every prompt `miva infer` would encode
with this config: each image's prompt, each `batch_prompt` entry, the negative prompt, plus `void.pt` (the empty
prompt, used for classifier-free guidance). `<dir>` is `--out`, else `validation_data.text_emb_dir`, else
"text_embs" (the seed README's default).
"""

from __future__ import annotations

import argparse
import os

from .common import add_config_arguments, log

HELP = "write text_emb_dir/<prompt>.pt for every prompt of a config, plus void.pt (the empty prompt)"
DEFAULT_DIR = "text_embs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--out", default=None, help=f"output folder (default: validation_data.text_emb_dir, else {DEFAULT_DIR})"
    )


def prompts_to_embed(config) -> list[str]:
    """Every prompt `miva infer` encodes for `config`, in order, without duplicates; "" (void.pt) last."""
    v = config.validation_data
    prompts = [item.prompt for item in config.inputs(must_exist=False)] if v.image_path is not None else []
    if v.batch_prompt is not None:
        prompts += [v.batch_prompt] if isinstance(v.batch_prompt, str) else list(v.batch_prompt)
    if v.negative_prompt:
        prompts.append(v.negative_prompt)
    return [p for p in dict.fromkeys(prompts) if p] + [""]


def write_text_embeddings(tokenizer, text_encoder, prompts: list[str], folder: str) -> list[str]:
    """Encode each prompt like `MIVAPipeline.encode_prompt` (padded to the tokenizer's max length, last hidden
    state) and save it as `<folder>/<prompt>.pt` (`void.pt` for ""); returns the paths."""
    import torch

    from ..config import ConfigError
    from ..pipelines.prompts import VOID_EMBEDDING

    os.makedirs(folder, exist_ok=True)
    paths = []
    device = text_encoder.device
    for prompt in prompts:
        filename = f"{prompt}.pt" if prompt else VOID_EMBEDDING
        if os.sep in filename or (os.altsep and os.altsep in filename):
            raise ConfigError(
                f"validation_data: prompt {prompt!r} contains a path separator and cannot name an embedding file"
            )
        ids = tokenizer(
            prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        with torch.no_grad():
            embedding = text_encoder(ids)[0]
        path = os.path.join(folder, filename)
        torch.save(embedding.detach().cpu().contiguous(), path)
        paths.append(path)
    return paths


def text_parts(config, tiny: bool):
    """`(tokenizer, text_encoder)` of `pretrained_model_path` (or `miva.tiny`, as `miva infer --tiny` uses)."""
    from ..config import ConfigError

    if tiny:
        from ..tiny import tiny_components

        parts = tiny_components(seed=0, with_image_encoder=False)
        return parts["tokenizer"], parts["text_encoder"]
    if config.pretrained_model_path is None:
        raise ConfigError("pretrained_model_path: required (a Hub id or a local folder) unless --tiny")
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..base_registry import resolve_base_path

    path = resolve_base_path(config.pretrained_model_path)  # a known name ("miva-world"): its folder, offline
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()
    return tokenizer, text_encoder


def run(args: argparse.Namespace) -> int:
    from .common import load_args_config

    config = load_args_config(args)
    folder = args.out or config.validation_data.text_emb_dir or DEFAULT_DIR
    tokenizer, text_encoder = text_parts(config, args.tiny)
    paths = write_text_embeddings(tokenizer, text_encoder, prompts_to_embed(config), folder)
    log(f"wrote {len(paths)} embeddings to {folder}: {[os.path.basename(p) for p in paths]}")
    return 0

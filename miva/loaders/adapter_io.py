"""Native MIVA adapter files: save, strict all-or-nothing load, push to the Hub. Usable without a pipeline.

A native adapter is a folder (or Hub repo) with

- `adapter_config.json`: the `MIVAAdapterConfig` (`save_pretrained`, with `miva_version`);
- `miva_adapter.safetensors`: only this adapter's tensors, with stable key names `<attention layer>.<part>`: the
  layer path as in `unet.attn_processors` without `.processor`, the part path inside the adapter module (the
  adapter name is not part of the key). Examples (SD1.5 widths):

  | key | shape |
  |---|---|
  | `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_lora.down.weight` | `(rank, 768)` |
  | `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out_lora.up.weight` | `(320, rank)` |
  | `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out_bias` (imported research adapters) | `(320,)` |
  | `down_blocks.0.attentions.0.transformer_blocks.0.attn2.implicit_prompt.down.weight` | `(64, 320)` |
  | `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.weight` / `.bias` / `.to_q.weight` | `(320, 320)` |
  | `down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q_lora.down.weight` | `(rank, 320)` |
  | `down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.motion_embed` | `(max_frames, 320)` |
  | `text_embeddings.<token>` (the learned word, when `word_to_learn` is set) | `(768,)` |

  safetensors metadata: `format="miva"`, `miva_version`, `miva_config` (the config JSON, so the file alone is a
  complete adapter) and `adapter_name`;
- `README.md`: the model card (`model_card.py`), and `sample.gif` when a sample was given.

The tensor format and the strict loader are `adapter_state.py` (shared with training checkpoints). Loading is strict:
every expected key present with the right shape, nothing unexpected. It is all-or-nothing: on any error the
half-built adapter is removed and the UNet (and text encoder) are as before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import create_repo, upload_folder

from ..attention_processors import MIVAAdapterConfig, add_miva_adapter, get_miva_context, install_miva_processors
from ..guards import check_finite_tensor
from .adapter_state import AdapterLayoutError, adapter_state_dict, discard_adapter, load_adapter_state
from .model_card import miva_model_card
from .research import base_weights_from_unet, convert_research_state_dict, fill_mid_block_motion
from .sources import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, SAMPLE_NAME, AdapterSource, resolve_source

logger = logging.getLogger(__name__)

TEXT_EMBEDDING_PREFIX = "text_embeddings."
__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "SAMPLE_NAME",
    "TEXT_EMBEDDING_PREFIX",
    "adapter_state_dict",
    "discard_adapter",
    "load_miva_adapter",
    "load_prepared_adapter",
    "prepare_adapter",
    "push_miva_adapter_to_hub",
    "save_miva_adapter",
    "write_adapter_folder",
]


# ------------------------------------------------------------------------------------------- text embeddings


def text_embedding_state(config: MIVAAdapterConfig, text_encoder=None, tokenizer=None) -> dict[str, torch.Tensor]:
    """`{"text_embeddings.<word>": (D,)}` for the adapter's `word_to_learn`, when a text encoder and tokenizer are
    given; `{}` otherwise."""
    word = config.word_to_learn
    if not word or text_encoder is None or tokenizer is None:
        return {}
    vocab = tokenizer.get_vocab()
    if word not in vocab:
        raise ValueError(
            f"word_to_learn={word!r} is not a token of the tokenizer; add it (tokenizer.add_tokens) and "
            "train its embedding before saving"
        )
    weight = text_encoder.get_input_embeddings().weight
    return {TEXT_EMBEDDING_PREFIX + word: weight[vocab[word]].detach().to("cpu").clone()}


def check_text_embeddings(embeddings: dict[str, torch.Tensor], text_encoder=None, tokenizer=None):
    """Validate learned-word embeddings before anything changes; returns `[(word, vector)]` to apply."""
    if not embeddings:
        return []
    if text_encoder is None or tokenizer is None:
        logger.warning(
            "the adapter ships learned word embeddings %s but no text encoder/tokenizer was given; they are not loaded",
            [k[len(TEXT_EMBEDDING_PREFIX) :] for k in embeddings],
        )
        return []
    weight = text_encoder.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    actions = []
    for key, vector in embeddings.items():
        word = key[len(TEXT_EMBEDDING_PREFIX) :]
        if tuple(vector.shape) != (weight.shape[1],):
            raise ValueError(
                f"{key}: shape {tuple(vector.shape)} in the file but the text encoder's embeddings "
                f"expect ({weight.shape[1]},) (another text encoder?)"
            )
        if word in vocab and not torch.equal(weight[vocab[word]].detach().cpu(), vector.to(weight.dtype)):
            raise ValueError(
                f"{key}: the tokenizer already has the token {word!r} with another embedding (a learned "
                "word of another adapter?); remove it or rename the word"
            )
        actions.append((word, vector))
    return actions


def apply_text_embeddings(actions, text_encoder, tokenizer) -> None:
    """Add the words to the tokenizer (resizing the embeddings) and write their vectors."""
    if not actions:
        return
    new = [word for word, _ in actions if word not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        vocab = tokenizer.get_vocab()
        rows = max(vocab[w] for w in new) + 1
        if rows > text_encoder.get_input_embeddings().weight.shape[0]:
            text_encoder.resize_token_embeddings(rows)
    weight = text_encoder.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        for word, vector in actions:
            weight[vocab[word]] = vector.to(device=weight.device, dtype=weight.dtype)


# ----------------------------------------------------------------------------------------------------- saving


def write_adapter_folder(
    folder,
    config: MIVAAdapterConfig,
    tensors: dict[str, torch.Tensor],
    *,
    adapter_name: str,
    sample_gif=None,
    base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write a native adapter folder from a config and native tensors (the research converter uses this too).

    Atomic: everything is checked first (the sample exists, the tensors are finite), then written into a temporary
    sibling folder that replaces `folder` by a rename, so a failed save leaves an existing adapter folder as it was.
    Other files of an existing `folder` (not the adapter's own four) are kept.
    """
    from safetensors.torch import save_file

    from miva import __version__

    from ..atomic import atomic_folder
    from .integrity import CHECKSUM_KEY, tensors_checksum

    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
        raise TypeError(f"save_directory={folder!r:.80} must be a folder path")
    folder = Path(folder)
    if sample_gif is not None and not isinstance(sample_gif, (str, os.PathLike)):
        raise TypeError(f"sample_gif={sample_gif!r:.80} must be a path to a GIF file or None")
    if sample_gif is not None and not Path(sample_gif).is_file():
        raise FileNotFoundError(f"sample_gif={os.fspath(sample_gif)!r} does not exist")
    if base_model and not config.base_model:
        config = dataclasses.replace(config, base_model=base_model)
    payload = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    for key, tensor in payload.items():
        check_finite_tensor(f"adapter {adapter_name!r} tensor {key!r}", tensor)
    config_json = config.to_json_string()
    metadata = {
        "format": "miva",
        "miva_version": __version__,
        "miva_config": config_json,
        "adapter_name": adapter_name,
        CHECKSUM_KEY: tensors_checksum(payload, config_json),
    }
    sample = SAMPLE_NAME if sample_gif is not None else None
    card = miva_model_card(config, adapter_name=adapter_name, repo_id=repo_id, sample=sample)
    owned = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, SAMPLE_NAME, "README.md")
    with atomic_folder(folder, keep_extra=True, owned=owned) as tmp:
        save_file(payload, os.fspath(tmp / ADAPTER_WEIGHTS_NAME), metadata=metadata)
        config.save_pretrained(tmp)
        if sample_gif is not None:
            shutil.copyfile(sample_gif, tmp / SAMPLE_NAME)
        card.save(os.fspath(tmp / "README.md"))
    return folder


def save_miva_adapter(
    unet,
    name: str,
    folder,
    *,
    text_encoder=None,
    tokenizer=None,
    sample_gif=None,
    base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Save adapter `name` of `unet` as a native adapter folder; returns the folder.

    With `text_encoder` and `tokenizer`, the learned word (`config.word_to_learn`) is saved as
    `text_embeddings.<word>`. `sample_gif` is copied in as `sample.gif` and shown on the model card. `base_model`
    fills `config.base_model` when unset; `repo_id` goes into the card's usage snippet.
    """
    context = get_miva_context(unet)
    if name not in context.configs:
        raise ValueError(f"no adapter named {name!r}; loaded adapters: {list(context.configs)}")
    config = context.configs[name]
    tensors = adapter_state_dict(unet, name)
    tensors.update(text_embedding_state(config, text_encoder, tokenizer))
    return write_adapter_folder(
        folder, config, tensors, adapter_name=name, sample_gif=sample_gif, base_model=base_model, repo_id=repo_id
    )


def push_miva_adapter_to_hub(
    unet,
    name: str,
    repo_id: str,
    *,
    private: bool | None = None,
    token=None,
    commit_message: str | None = None,
    sample_gif=None,
    text_encoder=None,
    tokenizer=None,
    base_model: str | None = None,
):
    """Create (or reuse) the Hub repo `repo_id` and upload adapter `name` as a native adapter; returns the commit
    info of `huggingface_hub.upload_folder`."""
    repo = create_repo(repo_id, private=private, token=token, exist_ok=True)
    repo_id = getattr(repo, "repo_id", None) or repo_id
    with tempfile.TemporaryDirectory() as tmp:
        save_miva_adapter(
            unet,
            name,
            tmp,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            sample_gif=sample_gif,
            base_model=base_model,
            repo_id=repo_id,
        )
        return upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            token=token,
            commit_message=commit_message or f"Upload MIVA adapter {name}",
        )


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class PreparedAdapter:
    """A source turned into native form for one UNet: what `load_prepared_adapter` needs, nothing loaded yet."""

    config: MIVAAdapterConfig
    tensors: dict[str, torch.Tensor]  # native UNet keys
    text_embeddings: dict[str, torch.Tensor]
    origin: str
    default_name: str


def prepare_adapter(unet, source: AdapterSource) -> PreparedAdapter:
    """Native tensors + config for `unet` (research checkpoints are converted here, with `unet`'s base weights)."""
    if source.kind == "native":
        config, tensors = source.config, source.tensors
    else:
        base = {**base_weights_from_unet(unet), **source.base}
        max_frames = int(getattr(unet.config, "motion_max_seq_length", None) or 32)
        try:
            config, tensors = convert_research_state_dict(
                source.tensors,
                base=base,
                config=source.config,
                adapter_index=source.adapter_index,
                max_frames=max_frames,
            )
        except ValueError as e:
            raise ValueError(f"{source.origin}: {e}") from None
        except (IndexError, KeyError, RuntimeError, StopIteration, TypeError) as e:  # a layout no check foresaw
            raise ValueError(
                f"{source.origin}: malformed research checkpoint ({type(e).__name__}: {e}); expected the research "
                "adapter layout (docs/research.md#research-checkpoints)"
            ) from None
        fill_mid_block_motion(unet, config, tensors)
    text = {k: v for k, v in tensors.items() if k.startswith(TEXT_EMBEDDING_PREFIX)}
    unet_tensors = {k: v for k, v in tensors.items() if k not in text}
    return PreparedAdapter(config, unet_tensors, text, source.origin, source.default_name)


def base_models_note(recorded: str | None, pipeline_base: str | None) -> str:
    """The start of the error for tensors that do not fit: which base the adapter was trained on, which this
    pipeline has (an adapter fits the base it was trained on; a different name may still be the same weights)."""
    mine = repr(pipeline_base) if pipeline_base else "not recorded (a pipeline built from its components)"
    theirs = repr(recorded) if recorded else "not recorded in its config"
    return f"adapter trained on base model {theirs}, this pipeline's base model is {mine}; "


def load_prepared_adapter(
    unet, name: str, config: MIVAAdapterConfig, tensors: dict[str, torch.Tensor], pipeline_base: str | None = None
) -> None:
    """Create adapter `name` from `config` and fill it from `tensors` strictly (exact key set and shapes).

    All or nothing: on any error the adapter is removed again and the UNet is as before. Not activated. Tensors that
    do not fit are refused naming the adapter's recorded base model and `pipeline_base` (the pipeline's) first.
    """
    context = install_miva_processors(unet)
    if name in context.configs:
        raise ValueError(
            f"an adapter named {name!r} already exists; loaded adapters: {list(context.configs)} "
            "(pass another adapter name, or delete_adapters first)"
        )
    try:
        add_miva_adapter(unet, name, config)
        load_adapter_state(unet, name, tensors)
    except AdapterLayoutError as e:
        discard_adapter(unet, name)
        raise AdapterLayoutError(base_models_note(config.base_model, pipeline_base) + str(e)) from None
    except BaseException:
        discard_adapter(unet, name)
        raise


def load_miva_adapter(
    unet,
    source,
    name: str | None = None,
    *,
    text_encoder=None,
    tokenizer=None,
    config: MIVAAdapterConfig | dict | None = None,
    **hub_kwargs,
) -> MIVAAdapterConfig:
    """Load one adapter from `source` into `unet` as `name` (not activated); returns its config.

    `source`: a native folder or file, a Hub repo id, or a research checkpoint (see `sources.py`); `config` is for
    research sources. `hub_kwargs`: `revision`, `subfolder`, `cache_dir`, `token`, `local_files_only`,
    `force_download`. With `text_encoder` and `tokenizer`, the adapter's learned word is added to them.
    """
    prepared = prepare_adapter(unet, resolve_source(source, config=config, **hub_kwargs))
    actions = check_text_embeddings(prepared.text_embeddings, text_encoder, tokenizer)
    name = name or prepared.default_name
    load_prepared_adapter(unet, name, prepared.config, prepared.tensors)
    try:
        apply_text_embeddings(actions, text_encoder, tokenizer)
    except BaseException:
        discard_adapter(unet, name)
        raise
    return prepared.config

"""Prompt assembly for `MIVAPipeline`: main prompt, per-adapter prompts, `text_emb_dir` and `word_to_replace`.

The UNet receives one text block per video: the main prompt's T tokens, then, when per-adapter prompts are used
(`batch_prompt`), each active adapter's T tokens, concatenated on the token axis -> `(batch, T * (1 + P), D)`. The
MIVA cross-attention processor splits it back (docs/research.md#multi-adapter). Under classifier-free guidance every chunk of the
unconditional block is the negative prompt.

Sources of an embedding, in order of precedence (docs/research.md#sampling):
- `text_emb_dir`: precomputed `<text_emb_dir>/<prompt>.pt` tensors `(1, T, D)` or `(T, D)`, read with
  `torch.load(weights_only=True)`; the empty prompt (and an absent negative prompt) is `void.pt`;
- `word_to_replace`: the prompt is tokenized, and the first occurrence of the word's first token id is replaced by the
  id of its learned token (added with `pipe.load_textual_inversion`, named `<word>` or `word`);
- otherwise diffusers' `encode_prompt` (textual inversion, `clip_skip` and text-encoder LoRA scale included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

VOID_EMBEDDING = "void.pt"


@dataclass
class PromptEmbeds:
    """Text conditioning for one call, before the per-frame repeat.

    `cond` / `uncond`: `(batch, T * (1 + P), D)`, P = number of per-adapter prompts (0 without `batch_prompt`);
    `uncond` is None without classifier-free guidance. `text_tokens` = T, the main prompt's length.
    """

    cond: Tensor
    uncond: Tensor | None
    text_tokens: int
    per_frame: bool = False  # FreeNoise prompt interpolation: (num_frames, ...) blocks, the same for every video


def _as_list(value, name: str) -> list[str] | None:
    if value is None or isinstance(value, str):
        return None if value is None else [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name}={value!r} must be a string or a list of strings")


def load_text_embedding(text_emb_dir: str | os.PathLike, prompt: str) -> Tensor:
    """`(1, T, D)` embedding of `prompt` from `<text_emb_dir>/<prompt>.pt` (`void.pt` for the empty prompt)."""
    filename = f"{prompt}.pt" if prompt else VOID_EMBEDDING
    if os.sep in filename or (os.altsep and os.altsep in filename):
        raise ValueError(f"text_emb_dir: prompt {prompt!r} contains a path separator and cannot name an embedding file")
    path = os.path.join(os.fspath(text_emb_dir), filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"text_emb_dir={os.fspath(text_emb_dir)!r} has no embedding {filename!r} for prompt {prompt!r}; "
            "write it with `miva embed-text` (a (1, 77, D) tensor saved with torch.save)"
        )
    embedding = torch.load(path, map_location="cpu", weights_only=True)
    if (
        not torch.is_tensor(embedding)
        or embedding.ndim not in (2, 3)
        or (embedding.ndim == 3 and embedding.shape[0] != 1)
    ):
        shape = tuple(embedding.shape) if torch.is_tensor(embedding) else type(embedding).__name__
        raise ValueError(f"text_emb_dir: {path} holds {shape}; expected a tensor (1, tokens, dim) or (tokens, dim)")
    return embedding if embedding.ndim == 3 else embedding[None]


def learned_token_id(tokenizer, word: str) -> int:
    """Id of the learned token for `word`: an added token named `<word>` or `word` (textual inversion)."""
    added = tokenizer.get_added_vocab()
    for name in (f"<{word}>", word):
        if name in added:
            return added[name]
    raise ValueError(
        f"word_to_replace={word!r}: the tokenizer has no learned token named {f'<{word}>'!r} or {word!r}; load it "
        "first, e.g. pipe.load_textual_inversion({'<" + word + ">': embedding}, token='<" + word + ">')"
    )


def replace_word_ids(input_ids: Tensor, tokenizer, words: list[str]) -> Tensor:
    """Replace, in every row of `input_ids` `(N, T)`, the first occurrence of each word's first BPE id by the id of
    that word's learned token (docs/research.md#sampling). Rows without the word are left as they are. Returns a new tensor."""
    input_ids = input_ids.clone()
    for word in words:
        learned = learned_token_id(tokenizer, word)
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        if not pieces:
            raise ValueError(f"word_to_replace={word!r} tokenizes to nothing")
        for row in input_ids:
            hits = (row == pieces[0]).nonzero()
            if len(hits):
                row[hits[0, 0]] = learned
    return input_ids


def _encode_ids(pipe, texts: list[str], words: list[str], device, clip_skip: int | None) -> Tensor:
    """Tokenize `texts`, swap in the learned tokens of `words`, run the text encoder -> `(N, T, D)`."""
    texts = pipe.maybe_convert_prompt(texts, pipe.tokenizer)
    tokens = pipe.tokenizer(
        texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    ids = replace_word_ids(tokens.input_ids, pipe.tokenizer, words).to(device)
    if clip_skip is None:
        return pipe.text_encoder(ids)[0]
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    # transformers 5's CLIPTextModel has no `.text_model` level (diffusers' clip_skip code still expects one)
    return getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(hidden)


class _Encoder:
    """Encodes lists of texts with the chosen source; all outputs `(N, T, D)` in the text encoder's dtype."""

    def __init__(self, pipe, device, words, text_emb_dir, clip_skip, lora_scale):
        self.pipe, self.device, self.words = pipe, device, words
        self.text_emb_dir, self.clip_skip, self.lora_scale = text_emb_dir, clip_skip, lora_scale
        encoder = pipe.text_encoder
        self.dtype = encoder.dtype if encoder is not None else pipe.unet.dtype

    def pair(self, prompts: list[str], negatives: list[str] | None) -> tuple[Tensor, Tensor | None]:
        """(cond, uncond) for the main prompts; uncond only when `negatives` is given (classifier-free guidance)."""
        if self.text_emb_dir is None and not self.words and self.clip_skip is None:
            cond, uncond = self.pipe.encode_prompt(
                prompts,
                self.device,
                1,
                negatives is not None,
                negatives,
                lora_scale=self.lora_scale,
                clip_skip=self.clip_skip,
            )
            return cond, uncond
        cond = self.texts(prompts, replace=True)
        return cond, None if negatives is None else self.texts(negatives, replace=False)

    def negatives_for(self, negatives: list[str], cond: Tensor) -> Tensor:
        """Negative prompts for given `prompt_embeds` `cond` `(N, T, D)`: padded to T tokens, as diffusers'
        `encode_prompt` does (T may be shorter than the tokenizer's 77)."""
        if self.text_emb_dir is None:
            return self.pipe.encode_prompt(
                None, self.device, 1, True, negatives, prompt_embeds=cond, lora_scale=self.lora_scale,
                clip_skip=self.clip_skip,
            )[1].to(device=self.device, dtype=self.dtype)
        uncond = self.texts(negatives, replace=False)
        if uncond.shape[1] != cond.shape[1]:
            raise ValueError(
                f"prompt_embeds has {cond.shape[1]} tokens but the negative prompt's embedding from text_emb_dir has "
                f"{uncond.shape[1]}; pass negative_prompt_embeds of the same length"
            )
        return uncond

    def texts(self, texts: list[str], replace: bool = True) -> Tensor:
        if self.text_emb_dir is not None:
            out = torch.cat([load_text_embedding(self.text_emb_dir, t) for t in texts])
        elif (self.words and replace) or self.clip_skip is not None:
            out = _encode_ids(self.pipe, texts, self.words if replace else [], self.device, self.clip_skip)
        else:
            out = self.pipe.encode_prompt(
                texts, self.device, 1, False, lora_scale=self.lora_scale, clip_skip=self.clip_skip
            )[0]
        return out.to(device=self.device, dtype=self.dtype)


def build_prompt_embeds(
    pipe,
    prompts: list[str] | None,
    *,
    batch_size: int,
    device,
    do_classifier_free_guidance: bool,
    negative_prompt: str | list[str] | None = None,
    batch_prompt: list[str | None] | None = None,
    adapter_default_prompts: list[str | None] | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    word_to_replace: str | list[str] | None = None,
    text_emb_dir: str | os.PathLike | None = None,
    clip_skip: int | None = None,
    lora_scale: float | None = None,
) -> PromptEmbeds:
    """Main prompt (+ per-adapter prompts) -> `PromptEmbeds` with `(batch_size, T * (1 + P), D)` blocks.

    Args:
        prompts: `batch_size` main prompts, or None when `prompt_embeds` `(batch_size, T, D)` is given.
        negative_prompt: one string for all videos, a list of `batch_size`, or None (the empty prompt).
        batch_prompt: one prompt per active adapter, in active order; an entry None means the adapter's own
            `MIVAAdapterConfig.prompt` (`adapter_default_prompts[i]`), else the main prompt.
        word_to_replace: a word or a list of words whose learned tokens replace their first occurrence in the main
            and per-adapter prompts (not in the negative prompt).
    """
    words = _as_list(word_to_replace, "word_to_replace") or []
    if text_emb_dir is not None and words:
        raise ValueError(
            "text_emb_dir and word_to_replace cannot be combined: precomputed embeddings are not "
            "tokenized; pass one of them"
        )
    if text_emb_dir is not None and not os.path.isdir(text_emb_dir):
        raise ValueError(f"text_emb_dir={os.fspath(text_emb_dir)!r} is not a directory")
    for word in words:  # fail before any encoding
        learned_token_id(pipe.tokenizer, word)
    negatives = _as_list(negative_prompt, "negative_prompt") or [""]
    if len(negatives) == 1:
        negatives = negatives * batch_size
    if len(negatives) != batch_size:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {batch_size} videos")
    encoder = _Encoder(pipe, device, words, text_emb_dir, clip_skip, lora_scale)
    cfg_negatives = negatives if do_classifier_free_guidance and negative_prompt_embeds is None else None

    if prompt_embeds is None:
        cond, uncond = encoder.pair(prompts, cfg_negatives)
    else:
        cond = prompt_embeds.to(device=device, dtype=encoder.dtype)
        if cond.shape[0] == 1 and batch_size > 1:
            cond = cond.expand(batch_size, -1, -1)
        uncond = encoder.negatives_for(cfg_negatives, cond) if cfg_negatives is not None else None
    if do_classifier_free_guidance and negative_prompt_embeds is not None:
        uncond = negative_prompt_embeds.to(device=device, dtype=encoder.dtype)
    if cond.shape[0] == 1 and batch_size > 1:
        cond = cond.expand(batch_size, -1, -1)
    if uncond is not None and uncond.shape[0] == 1 and batch_size > 1:
        uncond = uncond.expand(batch_size, -1, -1)
    text_tokens = cond.shape[1]

    chunks = []
    defaults = adapter_default_prompts or [None] * len(batch_prompt or [])
    for entry, default in zip(batch_prompt or [], defaults):
        text = entry if entry is not None else default
        if text is None:  # the adapter has no prompt of its own: it reads the main prompt
            chunks.append(cond)
        else:
            chunks.append(encoder.texts([text]).expand(batch_size, -1, -1))
    for chunk in chunks:
        if chunk.shape[1] != text_tokens:
            raise ValueError(
                f"batch_prompt embeddings have {chunk.shape[1]} tokens but the main prompt has "
                f"{text_tokens}; all chunks must have the same length"
            )
    cond = torch.cat([cond, *chunks], dim=1) if chunks else cond
    if uncond is not None and chunks:
        uncond = torch.cat([uncond] * (1 + len(chunks)), dim=1)
    return PromptEmbeds(cond=cond, uncond=uncond, text_tokens=text_tokens)


def build_interpolated_prompt_embeds(
    pipe,
    prompt: str | dict[int, str],
    *,
    num_frames: int,
    device,
    do_classifier_free_guidance: bool,
    negative_prompt: str | dict[int, str] | None = None,
    batch_prompt: list | None = None,
    adapter_default_prompts: list[str | None] | None = None,
    clip_skip: int | None = None,
    lora_scale: float | None = None,
) -> PromptEmbeds:
    """FreeNoise prompt interpolation: `{frame: text}` prompts -> per-frame `PromptEmbeds`, `cond` / `uncond`
    `(num_frames, T * (1 + P), D)` (one row per frame, the same for every video).

    A dict prompt (main, negative, or a `batch_prompt` entry) is encoded and interpolated over the frames by
    diffusers' FreeNoise (`_encode_prompt_free_noise`, with the pipeline's interpolation callback); a string stays
    fixed on every frame. `batch_prompt` entries None mean the adapter's own prompt, else the main prompt.
    """
    encoder = _Encoder(pipe, device, [], None, clip_skip, lora_scale)

    def per_frame(text) -> Tensor:  # (num_frames, T, D)
        if isinstance(text, dict):
            embeds, _ = pipe._encode_prompt_free_noise(text, num_frames, device, 1, False, None, lora_scale=lora_scale,
                                                       clip_skip=clip_skip)
            return embeds.to(device=device, dtype=encoder.dtype)
        return encoder.texts([text], replace=False).expand(num_frames, -1, -1)

    cond = per_frame(prompt)
    uncond = None
    if do_classifier_free_guidance:
        if isinstance(negative_prompt, dict):
            uncond = pipe._encode_prompt_free_noise(
                {0: ""}, num_frames, device, 1, True, negative_prompt, lora_scale=lora_scale, clip_skip=clip_skip
            )[1].to(device=device, dtype=encoder.dtype)
        else:
            uncond = per_frame(negative_prompt or "")
    chunks = []
    defaults = adapter_default_prompts or [None] * len(batch_prompt or [])
    for entry, default in zip(batch_prompt or [], defaults):
        text = entry if entry is not None else default
        chunks.append(cond if text is None else per_frame(text))
    text_tokens = cond.shape[1]
    if chunks:
        cond = torch.cat([cond, *chunks], dim=1)
        if uncond is not None:
            uncond = torch.cat([uncond] * (1 + len(chunks)), dim=1)
    return PromptEmbeds(cond=cond, uncond=uncond, text_tokens=text_tokens, per_frame=True)


def check_interpolation_inputs(pipe, prompt, *, prompt_embeds, negative_prompt_embeds, word_to_replace,
                               text_emb_dir) -> None:
    """Raise `ValueError` for a `{frame: text}` prompt (main or per-adapter) that cannot be interpolated."""
    if not pipe.free_noise_enabled:
        raise ValueError(
            f"prompt={prompt!r}: prompts given as {{frame: text}} dicts are interpolated over the frames by FreeNoise; "
            "call pipe.enable_free_noise() first, or pass strings"
        )
    for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds),
                        ("word_to_replace", word_to_replace), ("text_emb_dir", text_emb_dir)):
        if value is not None:
            raise ValueError(f"{name} cannot be combined with {{frame: text}} prompts (FreeNoise prompt "
                             f"interpolation encodes the texts itself); pass {name}=None or string prompts")
    if prompt is not None and not isinstance(prompt, (str, dict)):
        raise ValueError(f"prompt={prompt!r}: with {{frame: text}} prompts, pass one prompt (a string or a dict)")


def unet_text(embeds: PromptEmbeds, batch: int, videos_per_prompt: int, num_frames: int) -> tuple[Tensor, Tensor | None]:
    """The UNet's `encoder_hidden_states` `((2 if CFG) * batch * videos * num_frames, tokens, D)`, b-major
    (`[uncond videos; cond videos]`, each video's frames consecutive), and the unconditional block per video
    (per frame with `per_frame`) for step-end callbacks."""
    if embeds.per_frame:  # (num_frames, ...) rows, the same for every video
        videos = batch * videos_per_prompt
        cond = embeds.cond.repeat(videos, 1, 1)
        uncond = embeds.uncond.repeat(videos, 1, 1) if embeds.uncond is not None else None
        return (torch.cat([uncond, cond]) if uncond is not None else cond), uncond
    cond = embeds.cond.repeat_interleave(videos_per_prompt, dim=0)
    uncond = embeds.uncond.repeat_interleave(videos_per_prompt, dim=0) if embeds.uncond is not None else None
    text = torch.cat([uncond, cond]) if uncond is not None else cond
    return text.repeat_interleave(num_frames, dim=0), uncond


def encode_call_prompts(pipe, prompts: list | None, *, batch: int, num_videos_per_prompt: int, num_frames: int,
                        interpolate: bool, device, negative_prompt=None, batch_prompt=None, prompt_embeds=None,
                        negative_prompt_embeds=None, word_to_replace=None, text_emb_dir=None, clip_skip=None,
                        cross_attention_kwargs=None) -> tuple[PromptEmbeds, Tensor, Tensor | None]:
    """The text conditioning of one `MIVAPipeline` call: `(embeds, text, uncond)`, `text` the UNet's
    `encoder_hidden_states` `(batch*videos [*2 under CFG] * num_frames, T * (1 + P), D)` (`unet_text`).

    `interpolate`: FreeNoise `{frame: text}` prompts (one text block per frame); per-adapter prompts default to
    each active adapter's config prompt when `batch_prompt` is given.
    """
    context = pipe.unet.miva_context
    lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
    adapter_prompts = [context.configs[name].prompt for name, _ in context.active] if batch_prompt else None
    common = dict(
        device=device,
        do_classifier_free_guidance=pipe.do_classifier_free_guidance,
        negative_prompt=negative_prompt,
        batch_prompt=batch_prompt,
        adapter_default_prompts=adapter_prompts,
        clip_skip=clip_skip,
        lora_scale=lora_scale,
    )
    if interpolate:
        embeds = build_interpolated_prompt_embeds(pipe, prompts[0], num_frames=num_frames, **common)
    else:
        embeds = build_prompt_embeds(
            pipe,
            prompts,
            batch_size=batch,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            word_to_replace=word_to_replace,
            text_emb_dir=text_emb_dir,
            **common,
        )
    text, uncond = unet_text(embeds, batch, num_videos_per_prompt, num_frames)
    return embeds, text, uncond

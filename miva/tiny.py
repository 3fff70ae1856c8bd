"""Tiny, offline, seeded components for tests, demos and benchmarks.

Everything here is built from configs in memory: no download, no file on disk. The shapes follow Stable Diffusion
1.5 + AnimateDiff (4 latent channels, ``vae_scale_factor`` 8, 77-token CLIP prompts), only far narrower, so the
whole stack runs in well under a second on a CPU.

```python
from diffusers import AnimateDiffPipeline
from miva.tiny import tiny_components

pipe = AnimateDiffPipeline(**tiny_components(seed=0))
frames = pipe("a photo of a waterfall", num_frames=8, num_inference_steps=2, output_type="np").frames
```
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "TINY_WORDS",
    "make_test_image",
    "tiny_components",
    "tiny_tokenizer",
    "tiny_unet_motion",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
_END_OF_WORD = "</w>"

# Words that become single tokens; anything else falls back to byte-level pieces (never to an unknown token).
TINY_WORDS = (
    "a an the of in on at and with to from by is are "
    "photo picture video image painting style high quality best masterpiece detailed realistic "
    "waterfall water river lake sea ocean waves wave beach clouds cloud sky sun sunset night stars moon "
    "rain snow wind fire flame flames smoke candle forest tree trees grass flower flowers leaves mountain city "
    "cat dog bird horse fish car boat man woman person girl boy face hair eyes "
    "moving move flowing falling blowing burning flying running walking dancing turning rotating slowly fast "
    "camera zoom pan tilt out up down left right rotate clockwise"
).split()


# ---------------------------------------------------------------------------------------------------- tokenizer


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every word of ``words`` into one token (deterministic).

    Plain BPE training: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself) until
    every word is a single symbol. Encoding a training word with these merges, lowest rank first, replays the
    training steps, so each word in ``words`` encodes to exactly one token. The last symbol of a word carries the
    ``</w>`` suffix, as in CLIP.
    """
    segmented = [[*word[:-1], word[-1] + _END_OF_WORD] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in segmented:
            for pair in zip(symbols[:-1], symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for i, symbols in enumerate(segmented):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            segmented[i] = merged


def tiny_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS):
    """A small in-memory ``CLIPTokenizer`` (byte-level BPE, CLIP's special tokens, ``model_max_length=77``).

    Vocabulary: the 256 byte-level characters, the same with ``</w>``, one token per merge (so each word of
    ``words`` is a single token), then ``<|startoftext|>`` and ``<|endoftext|>``. ``pad`` = ``eos`` =
    ``unk`` = ``<|endoftext|>``, like CLIP. ``len(tokenizer)`` is the vocabulary size the text model needs.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(char + _END_OF_WORD for char in alphabet)]:
        vocab[token] = len(vocab)
    unique_words = list(dict.fromkeys(word.lower() for word in words))
    merges = _learn_merges(unique_words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in (BOS_TOKEN, EOS_TOKEN):
        vocab[token] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )


# ---------------------------------------------------------------------------------------------------- models


def _tiny_unet2d():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=4,
    )


def _tiny_motion_adapter(num_frames_max: int):
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_norm_num_groups=4,
        motion_num_attention_heads=4,
        motion_max_seq_length=num_frames_max,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _tiny_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _tiny_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    return CLIPVisionModelWithProjection(config)


def _tiny_feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def research_ddim_scheduler():
    """SD1.5's training schedule with the research sampler's DDIM settings (shared by the tiny and world models)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def tiny_components(seed: int = 0, *, num_frames_max: int = 32, with_image_encoder: bool = True) -> dict:
    """Offline, deterministic tiny components for ``AnimateDiffPipeline(**components)`` (and ``MIVAPipeline``).

    Args:
        seed: every module's weights are drawn after ``torch.manual_seed(seed)``; the same seed gives identical
            state dicts. The global RNG state is restored afterwards.
        num_frames_max: the motion adapter's ``motion_max_seq_length`` (the most frames the UNet can take).
        with_image_encoder: build a tiny CLIP image encoder and its processor (for IP-Adapter); ``None`` for both
            otherwise.

    Returns:
        ``dict(unet, motion_adapter, vae, text_encoder, tokenizer, scheduler, feature_extractor, image_encoder)``.
        ``unet`` is a 2-D ``UNet2DConditionModel`` (32/64 channels, ``sample_size`` 8, cross-attention dim 32);
        the pipeline turns it into a ``UNetMotionModel`` with the motion adapter. Default output is 64x64.
    """
    tokenizer = tiny_tokenizer()
    builders = {
        "unet": _tiny_unet2d,
        "motion_adapter": lambda: _tiny_motion_adapter(num_frames_max),
        "vae": _tiny_vae,
        "text_encoder": lambda: _tiny_text_encoder(tokenizer),
    }
    if with_image_encoder:
        builders["image_encoder"] = _tiny_image_encoder
    modules = {}
    with torch.random.fork_rng(devices=[]):
        for name, build in builders.items():
            torch.manual_seed(seed)
            modules[name] = build().eval()  # like from_pretrained: inference mode until a trainer says otherwise
    return {
        "unet": modules["unet"],
        "motion_adapter": modules["motion_adapter"],
        "vae": modules["vae"],
        "text_encoder": modules["text_encoder"],
        "tokenizer": tokenizer,
        "scheduler": research_ddim_scheduler(),
        "feature_extractor": _tiny_feature_extractor() if with_image_encoder else None,
        "image_encoder": modules.get("image_encoder"),
    }


def tiny_unet_motion(seed: int = 0, **kwargs):
    """The tiny ``UNetMotionModel`` (tiny UNet + motion adapter); ``kwargs`` go to :func:`tiny_components`."""
    from diffusers import UNetMotionModel

    kwargs.setdefault("with_image_encoder", False)
    components = tiny_components(seed, **kwargs)
    return UNetMotionModel.from_unet2d(components["unet"], components["motion_adapter"]).eval()


# ---------------------------------------------------------------------------------------------------- images


def make_test_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture: a smooth colour gradient with an ellipse, a rectangle and a triangle.

    The same ``(width, height, seed)`` always gives the same pixels; ``seed`` moves the colours and shapes.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xs / max(width - 1, 1), ys / max(height - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    red = 0.5 + 0.5 * np.sin(2.0 * u + phase[0])
    green = 0.5 + 0.5 * np.sin(2.5 * v + phase[1])
    blue = 0.5 + 0.5 * np.sin(1.5 * (u + v) + phase[2])
    pixels = (np.stack([red, green, blue], axis=-1) * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)

    draw = ImageDraw.Draw(image)
    colours = [tuple(int(c) for c in rng.integers(0, 256, size=3)) for _ in range(3)]
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    rx, ry = 0.18 * width, 0.14 * height
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colours[0])
    x0, y0 = rng.uniform(0.05, 0.45) * width, rng.uniform(0.55, 0.7) * height
    draw.rectangle([x0, y0, x0 + 0.3 * width, y0 + 0.25 * height], fill=colours[1])
    tx, ty = rng.uniform(0.55, 0.8) * width, rng.uniform(0.05, 0.2) * height
    draw.polygon(
        [(tx, ty), (tx + 0.18 * width, ty + 0.3 * height), (tx - 0.18 * width, ty + 0.3 * height)], fill=colours[2]
    )
    return image

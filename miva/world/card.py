"""The model cards of the MotionWorld bases (``README.md`` in their folders), built from ``pretrain_log.json``: the
UNet base (:mod:`miva.world.pretrain`) and the Wan2.1-architecture base (:mod:`miva.world.pretrain_wan`; its log
has ``transformer_seconds``)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_base_card"]

_BODY = """
# MotionWorld base (miva)

A small image-to-video model in the stock AnimateDiff architecture (`UNet2DConditionModel` + `MotionAdapter` =
`UNetMotionModel`, `AutoencoderKL`, CLIP text encoder), pretrained from scratch on **MotionWorld**: procedural
scenes of textured shapes on textured backgrounds, rendered analytically under known motions. It ships inside the
`miva` package so that MIVA adapters can be trained, composed and *measured* offline on a CPU.

- Frames: 64x64 RGB, latents 16x16x4 (`vae_scale_factor` 4), up to {max_frames} frames; DDIM sampling.
- It learned the world's images and **generic** motion: drifts in any direction and speed, zoom in/out, turns either
  way, sums of two, and static clips, with prompts that describe the scene but never the motion. Alone it animates an
  image plausibly but with no particular motion; a MIVA adapter trained on ~10 clips of one motion steers it.
- Parameters: {params}.
- Weights: fp16 safetensors, {size_mb:.1f} MB in all; load in float32 on a CPU.

## Usage

```python
from miva.world import load_pipeline, make_scene, scene_image, shipped_adapters
from miva.world.evaluate import SAMPLING  # 8 frames, 25 DDIM steps: what the shipped adapters were measured with

pipe = load_pipeline()   # = miva.load_base("miva-world"): this folder, offline, float32
pipe.load_adapters([str(shipped_adapters()["right"])], adapter_names=["right"])
video = pipe(image=scene_image(0), prompt=make_scene("heldout", 0).prompt, height=64, width=64, **SAMPLING).frames[0]
```

Configs and adapter metadata name this base `miva-world` (its motion module `miva-world/motion_adapter`); miva
resolves the name to this folder offline (`miva/base_registry.py`), e.g. `miva infer --config
examples/configs/infer_world.yaml`. The folder is an ordinary diffusers folder:
`AnimateDiffPipeline.from_pretrained(folder)` loads it too.

## Training recipe (seeded, resumable)

`{command}`

1. Autoencoder: {vae_steps} steps, batch {vae_batch}, AdamW lr {vae_lr} (warm-up, cosine), MSE + 0.5 L1 + 1e-6 KL
   on random frames of training scenes; `scaling_factor` = 1 / std of the latents = {scaling:.4f}.
2. UNet (2-D layers and motion modules together): {unet_steps} steps, batch {unet_batch} clips of {frames} frames,
   AdamW lr {unet_lr} (warm-up {warmup}, cosine to 10%), grad clip 1, EMA {ema_decay}; miva's image-to-video objective
   (frame 0 clean, epsilon-MSE on frames 1..F-1), 10% empty prompts; every step draws fresh training scenes (even
   seeds; held-out scenes have odd seeds).

Time: autoencoder {vae_min:.1f} min, UNet {unet_min:.1f} min on {machine}.
{stages}
Text encoder: randomly initialised and frozen (its embeddings still tell prompts apart; the UNet learns to read them).
"""


_WAN_BODY = """
# MotionWorld Wan base (miva)

A small image-to-video model in diffusers' own Wan2.1 architecture (`WanTransformer3DModel`, `AutoencoderKLWan`,
`UMT5EncoderModel` with an in-memory T5 tokenizer, `FlowMatchEulerDiscreteScheduler` with shift {shift}), pretrained
from scratch on **MotionWorld**: procedural scenes of textured shapes on textured backgrounds, rendered analytically
under known motions. The Wan counterpart of the UNet base `miva-world` (docs/motionworld.md#two-bases), so that
MIVA's Wan adapters can be trained and *measured* offline on a CPU.

- Frames: 64x64 RGB; the autoencoder compresses 4x in space and not in time: one 16x16x{z_dim} latent per frame
  (frame 0 of the video is latent frame 0 exactly). Clips of {frames} frames (1 + 4k: the Wan VAE's chunking);
  prompts of at most {max_sequence_length} T5 tokens; flow-matching Euler sampling.
- It learned the world's images and **generic** motion under the *rich* mix (`miva.world.motions.sample_rich_motion`,
  zoom and turn as common as drift): {mix}; prompts describe the scene but never the motion ({dropout:.0%} empty). Alone it animates an image with no particular motion; a
  MIVA adapter trained on ~10 clips of one motion steers it.
- Parameters: {params}.
- Weights: fp16 safetensors, {size_mb:.1f} MB in all; load in float32 on a CPU.

## Usage

```python
from miva.world import load_pipeline, make_scene, scene_image, shipped_adapters
from miva.world.evaluate import sampling_defaults  # 9 frames, 25 flow steps: what Wan world adapters are measured with

pipe = load_pipeline(base="wan")   # = miva.load_base("miva-world-wan"): this folder, offline, float32
video = pipe(image=scene_image(0), prompt=make_scene("heldout", 0).prompt, height=64, width=64,
             **sampling_defaults("wan")).frames[0]
```

Configs and adapter metadata name this base `miva-world-wan` (alias `world-wan`); miva resolves the name to this
folder offline (`miva/base_registry.py`). The folder is an ordinary diffusers `WanPipeline` folder.

## Training recipe (seeded, resumable)

`{command}`

1. Autoencoder: {vae_steps} steps, batch {vae_batch} clips of {vae_frames} frames, AdamW lr {vae_lr} (warm-up,
   cosine), MSE + 0.5 L1 + 1e-6 KL;{framewise}
   then `latents_mean` / `latents_std` set per channel from encoded clips.
2. Transformer: {transformer_steps} steps, batch {batch} clips of {frames} frames, AdamW lr {lr} (warm-up {warmup},
   cosine), grad clip 1, EMA {ema_decay}; miva's Wan image-to-video objective (latent frame 0 clean, velocity MSE on
   frames 1..F-1); every step draws fresh training scenes (held-out scenes are never seen).{decoder_phase}

Time: {time_line}

Text encoder: randomly initialised and frozen (its embeddings still tell prompts apart; the transformer learns to
read them).
"""


def _stages_text(record: dict) -> str:
    """The earlier stages of a base continued with ``--init-from`` (oldest first), and the total time."""
    stages = record.get("stages", [])
    if not stages:
        return ""
    lines = ["", "This stage continued an earlier base (`--init-from`): autoencoder and text encoder kept, UNet trained",
             "further from its EMA weights with a fresh optimizer, EMA and learning-rate cycle. Earlier stages:", ""]
    total = record["vae_seconds"] + record["unet_seconds"]
    for stage in stages:
        r = stage["recipe"]
        total += stage["vae_seconds"] + stage["unet_seconds"]
        lines.append(
            f"- `{stage['command']}`: autoencoder {0 if r.get('init_from') else r['vae_steps']} steps "
            f"({stage['vae_seconds'] / 60:.1f} min), UNet {r['unet_steps']} steps at lr {r['unet_lr']} "
            f"({stage['unet_seconds'] / 60:.1f} min) on {stage['machine']}."
        )
    lines += ["", f"Total pretraining time, all stages: {total / 60:.1f} min.", ""]
    return "\n".join(lines)


def _rich_mix() -> str:
    """The rich mix's shares, as :func:`~miva.world.motions.sample_rich_motion` documents them (its "Here:" line)."""
    from .motions import sample_rich_motion

    text = " ".join(sample_rich_motion.__doc__.split())
    return text.split("Here: ", 1)[1].rstrip(".")


def _wan_time(record: dict) -> str:
    """Each phase's time and machine; phases taken from an earlier folder (`--init-from`) name their own machine."""
    labels = {"vae": "autoencoder", "transformer": "transformer", "decoder": "decoder"}
    taken = record.get("phases_from", {})
    groups: list[tuple[str, list[str]]] = []  # (machine, ["autoencoder 37.6 min", ...]) in phase order
    for phase, label in labels.items():
        if f"{phase}_seconds" not in record:
            continue
        machine = taken.get(phase, record["machine"])
        if not groups or groups[-1][0] != machine:
            groups.append((machine, []))
        groups[-1][1].append(f"{label} {record[f'{phase}_seconds'] / 60:.1f} min")
    text = "; ".join(f"{', '.join(parts)} on {machine}" for machine, parts in groups)
    if taken:
        text += f" ({' and '.join(labels[phase] for phase in taken)} taken with `--init-from` from an earlier folder)"
    return text + "."


def _decoder_phase(record: dict) -> str:
    """The recipe's phase 3 line (decoder refinement), or nothing when the base had none."""
    if "decoder_seconds" not in record:
        return ""
    recipe = record["recipe"]
    return (f"\n3. Decoder refinement: {recipe['decoder_steps']} steps, the autoencoder's decoder alone (encoder "
            f"frozen, so the latent space of\n   phase 2 is unchanged), AdamW lr {recipe['decoder_lr']} (warm-up, "
            "cosine), MSE + 0.5 L1.")


def _framewise(recipe: dict) -> str:
    """The frame-wise step of phase 1, when the recipe had it (`miva.world.wan_architecture.make_vae_framewise`)."""
    if not recipe.get("framewise_vae"):
        return ""
    return ("\n   then made frame-wise (the causal convolutions' past taps zeroed: every frame is coded as frame 0 was, so "
            "the\n   latents of a clip are its frames' latents and motion is not smeared);")


def _wan_body(record: dict, params: str, size: int) -> str:
    from .wan_architecture import FLOW_SHIFT, MAX_SEQUENCE_LENGTH, Z_DIM

    recipe = record["recipe"]
    return _WAN_BODY.format(mix=_rich_mix(),
        shift=FLOW_SHIFT, z_dim=Z_DIM, max_sequence_length=MAX_SEQUENCE_LENGTH, dropout=recipe["prompt_dropout"],
        params=params, size_mb=size / 2**20, command=record["command"],
        time_line=_wan_time(record), decoder_phase=_decoder_phase(record), framewise=_framewise(recipe), **recipe,
    )


def write_base_card(folder: str | Path) -> Path:
    """Write ``<folder>/README.md`` from ``<folder>/pretrain_log.json`` (a UNet or a Wan base's); returns its path."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..base_registry import WORLD_ID, WORLD_WAN_ID, known_base

    folder = Path(folder)
    record = json.loads((folder / "pretrain_log.json").read_text(encoding="utf-8"))
    wan = "transformer_seconds" in record
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    params = ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in record["parameters"].items())
    data = ModelCardData(
        license=known_base(WORLD_WAN_ID if wan else WORLD_ID).license,
        library_name="diffusers",
        pipeline_tag="image-to-video",
        tags=["miva", "wan2.1" if wan else "animatediff", "motionworld", "image-to-video", "synthetic-data"],
    )
    body = _wan_body(record, params, size) if wan else _unet_body(record, params, size)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path


def _unet_body(record: dict, params: str, size: int) -> str:
    from .architecture import MAX_FRAMES

    recipe = record["recipe"]
    return _BODY.format(
        stages=_stages_text(record),
        max_frames=MAX_FRAMES,
        params=params,
        size_mb=size / 2**20,
        command=record["command"],
        scaling=record["vae_scaling_factor"],
        vae_min=record["vae_seconds"] / 60,
        unet_min=record["unet_seconds"] / 60,
        machine=record["machine"],
        **recipe,
    )

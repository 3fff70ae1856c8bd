"""Pretrain the MotionWorld base: one seeded command, resumable, CPU-friendly.

    python -m miva.world.pretrain --out miva/world/weights/base            # the shipped recipe (2 CPU cores: 80 min)
    python -m miva.world.pretrain --out /tmp/w --vae-steps 2 --unet-steps 2 # smoke run
    python -m miva.world.pretrain --out new --init-from old --seed 1 --unet-steps 1600 --unet-lr 3e-4
                                                                            # a further UNet stage (warm restart)

Two phases, each a pure function of ``--seed`` and the step counter (every step draws its scenes, motions, noise and
timesteps from its own generator), so a run resumed from its last checkpoint ends with the same weights:

1. the autoencoder learns MotionWorld frames (MSE + L1 + a tiny KL, like SD's VAE); its ``scaling_factor`` is then set
   to ``1 / std`` of the latents;
2. the UNet (2-D layers and motion modules together) learns image-to-video with miva's own objective
   (:func:`miva.training.trainer_parts.i2v_epsilon_loss`: frame 0 clean, epsilon-MSE on frames 1..F-1) on clips of
   endless fresh training scenes under GENERIC motion (:func:`~miva.world.motions.sample_generic_motion`: any
   direction, speed, zoom, turn, sums, static) with prompts that describe the scene, never the motion (10% empty,
   for classifier-free guidance). An EMA of the weights is what ships.

``--init-from FOLDER`` continues a finished base: the autoencoder (and its ``scaling_factor``) and text encoder are
kept, and the UNet trains ``--unet-steps`` more from the folder's (EMA) weights with a fresh optimizer, EMA and
learning-rate cycle (a warm restart); give it another ``--seed`` so that it does not repeat the earlier stage's
batches. The log keeps the earlier stages (``pretrain_log.json`` ``"stages"``).

The result is an ordinary diffusers pipeline folder (``model_index.json`` of ``AnimateDiffPipeline``: 2-D ``unet`` +
``motion_adapter``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``; fp16 safetensors), plus
``pretrain_log.json`` and a model card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .architecture import FRAME_SIZE, build_components, world_tokenizer
from .card import write_base_card
from .motions import sample_generic_motion
from .scenes import make_scene, render_clip, render_frame

__all__ = ["PretrainRecipe", "pretrain"]

_TRAIN_SCENES = 10**6  # scene indices drawn per step; effectively endless, never a held-out scene (odd seeds)


class PretrainRecipe(argparse.Namespace):
    """The shipped recipe's hyper-parameters (the CLI's defaults)."""

    seed = 0
    vae_steps = 1000
    vae_batch = 16
    vae_lr = 1e-3
    unet_steps = 2400
    unet_batch = 4
    unet_lr = 2e-4
    frames = 8
    warmup = 100
    ema_decay = 0.999
    prompt_dropout = 0.1
    checkpoint_every = 200
    init_from = None  # a finished base folder to continue (see the module docstring)


def _rng(seed: int, phase: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, phase, step])


def _to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float in [-1, 1]."""
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def _vae_batch(seed: int, step: int, batch: int) -> torch.Tensor:
    rng = _rng(seed, 1, step)
    images = [
        render_frame(
            make_scene("train", int(rng.integers(_TRAIN_SCENES))),
            sample_generic_motion(rng),
            float(rng.uniform(0, 16)),
            FRAME_SIZE,
        )
        for _ in range(batch)
    ]
    return _to_pixels(np.stack(images))


def _clip_batch(seed: int, step: int, batch: int, frames: int, dropout: float,
                sample_motion=sample_generic_motion) -> tuple[torch.Tensor, list[str]]:
    """``(batch, frames, 3, 64, 64)`` clips in [-1, 1] of fresh training scenes under ``sample_motion(rng)``, and
    their prompts (``""`` with probability ``dropout``)."""
    rng = _rng(seed, 2, step)
    clips, prompts = [], []
    for _ in range(batch):
        scene = make_scene("train", int(rng.integers(_TRAIN_SCENES)))
        clips.append(render_clip(scene, sample_motion(rng), frames, FRAME_SIZE))
        prompts.append("" if rng.random() < dropout else scene.prompt)
    return _to_pixels(np.stack(clips)), prompts


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write beside, then rename over the old checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_components(folder: Path) -> dict:
    """A finished base folder's components in float32 (``unet`` 2-D, as :func:`build_components` returns them)."""
    from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel

    fp32 = {"torch_dtype": torch.float32}
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", **fp32),
        "motion_adapter": MotionAdapter.from_pretrained(folder / "motion_adapter", **fp32),
        "vae": AutoencoderKL.from_pretrained(folder / "vae", **fp32),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32),
        "tokenizer": world_tokenizer(),  # the in-memory one the folder was saved from
        "scheduler": DDIMScheduler.from_pretrained(folder / "scheduler"),
    }


def _train_vae(vae, recipe, work: Path, log) -> float:
    """Phase 1; returns the seconds spent (this run and the runs it resumed)."""
    ckpt_path = work / "vae.pt"
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    state = _load_checkpoint(ckpt_path) or {"step": 0, "seconds": 0.0}
    if "vae" in state:
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        log(f"vae: resumed at step {state['step']}")
    step, seconds, start = state["step"], state["seconds"], time.perf_counter()
    vae.train()
    running = None
    while step < recipe.vae_steps:
        for group in optimizer.param_groups:
            group["lr"] = recipe.vae_lr * _lr_factor(step, recipe.warmup, recipe.vae_steps)
        x = _vae_batch(recipe.seed, step, recipe.vae_batch)
        generator = torch.Generator().manual_seed(recipe.seed * 100003 + step)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 50 == 0 or step == recipe.vae_steps:
            log(f"vae step {step}/{recipe.vae_steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
        if step % recipe.checkpoint_every == 0 or step == recipe.vae_steps:
            total = seconds + time.perf_counter() - start
            _save_checkpoint(ckpt_path, {"step": step, "seconds": total, "vae": vae.state_dict(),
                                         "optimizer": optimizer.state_dict()})
            log(f"checkpoint vae {step}")
    vae.eval()
    return seconds + time.perf_counter() - start


@torch.no_grad()
def _set_scaling_factor(vae, seed: int) -> float:
    x = torch.cat([_vae_batch(seed, 10**6 + i, 16) for i in range(4)])
    latents = vae.encode(x).latent_dist.mean
    factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def _train_unet(components, recipe, work: Path, log) -> float:
    """Phase 2 on the ``UNetMotionModel``; returns the seconds spent. Leaves the EMA weights in the model."""
    from diffusers import DDPMScheduler, UNetMotionModel
    from diffusers.training_utils import EMAModel

    from ..training.trainer_parts import encode_frames, encode_prompts, i2v_epsilon_loss, step_generator

    unet = UNetMotionModel.from_unet2d(components["unet"], components["motion_adapter"])
    vae, text_encoder, tokenizer = components["vae"], components["text_encoder"], components["tokenizer"]
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay, use_ema_warmup=True, power=3 / 4)
    ckpt_path = work / "unet.pt"
    state = _load_checkpoint(ckpt_path) or {"step": 0, "seconds": 0.0}
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        log(f"unet: resumed at step {state['step']}")
    step, seconds, start = state["step"], state["seconds"], time.perf_counter()
    unet.train()
    running = None
    while step < recipe.unet_steps:
        for group in optimizer.param_groups:
            group["lr"] = recipe.unet_lr * _lr_factor(step, recipe.warmup, recipe.unet_steps)
        pixels, prompts = _clip_batch(recipe.seed, step, recipe.unet_batch, recipe.frames, recipe.prompt_dropout)
        generator = step_generator(recipe.seed, step, 0, "cpu")
        with torch.no_grad():
            latents = encode_frames(vae, pixels, generator)
            prompt_embeds = encode_prompts(tokenizer, text_encoder, prompts, "cpu")
        loss = i2v_epsilon_loss(unet, latents, prompt_embeds, noise_scheduler, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == recipe.unet_steps:
            elapsed = time.perf_counter() - start
            log(f"unet step {step}/{recipe.unet_steps} loss {running:.4f} ({elapsed:.0f} s)")
        if step % recipe.checkpoint_every == 0 or step == recipe.unet_steps:
            total = seconds + time.perf_counter() - start
            _save_checkpoint(ckpt_path, {"step": step, "seconds": total, "unet": unet.state_dict(),
                                         "optimizer": optimizer.state_dict(), "ema": ema.state_dict()})
            log(f"checkpoint unet {step}")
    ema.copy_to(unet.parameters())
    unet.eval()
    components["unet_motion"] = unet
    return seconds + time.perf_counter() - start


def _command(recipe) -> str:
    keys = ["seed", "unet_steps"] if recipe.init_from else ["seed", "vae_steps", "unet_steps"]
    keys += [k for k in ("unet_lr", "warmup") if getattr(recipe, k) != getattr(PretrainRecipe, k)]
    init = " --init-from <earlier stage>" if recipe.init_from else ""
    return "python -m miva.world.pretrain --out <folder>" + init + "".join(
        f" --{k.replace('_', '-')} {getattr(recipe, k)}" for k in keys
    )


def _write_pipeline_folder(components: dict, out: Path) -> None:
    """Save as an ordinary diffusers folder (fp16 safetensors) with an ``AnimateDiffPipeline`` model index."""
    import diffusers

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet_motion = components["unet_motion"]
    unet2d = components["unet"]
    motion_keys = {k for k in unet_motion.state_dict() if ".motion_modules." in k}
    unet2d.load_state_dict({k: v for k, v in unet_motion.state_dict().items() if k not in motion_keys}, strict=True)
    unet2d.half().save_pretrained(tmp / "unet")
    unet_motion.half().save_motion_modules(str(tmp / "motion_adapter"))
    components["vae"].half().save_pretrained(tmp / "vae")
    components["text_encoder"].half().save_pretrained(tmp / "text_encoder")
    components["tokenizer"].save_pretrained(tmp / "tokenizer")
    components["scheduler"].save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "AnimateDiffPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "motion_adapter": ["diffusers", "MotionAdapter"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for config in tmp.glob("*/config.json"):  # a continued stage's modules remember the folder they came from
        values = json.loads(config.read_text(encoding="utf-8"))
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in ("pretrain_log.json", "README.md"):
        if (out / name).exists() and not (tmp / name).exists():
            shutil.copy2(out / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def pretrain(out: str | Path, recipe: PretrainRecipe | None = None, work: str | Path | None = None, log=print) -> Path:
    """Run (or resume) the recipe; write the pipeline folder ``out``; return it. Checkpoints go to ``work``
    (default ``<out>.work``), which is removed at the end."""
    recipe = recipe or PretrainRecipe()
    out = Path(out)
    work = Path(work) if work else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    earlier = None
    if recipe.init_from:
        init_from = Path(recipe.init_from)
        earlier = json.loads((init_from / "pretrain_log.json").read_text(encoding="utf-8"))
        components = _load_components(init_from)
        factor, vae_seconds = float(components["vae"].config.scaling_factor), 0.0
        log(f"continuing {init_from}: autoencoder and text encoder kept, UNet trains {recipe.unet_steps} more steps")
    else:
        components = build_components(recipe.seed)
    components["text_encoder"].eval().requires_grad_(False)
    if earlier is None:
        vae_seconds = _train_vae(components["vae"], recipe, work, log)
        factor = _set_scaling_factor(components["vae"], recipe.seed)
        log(f"vae scaling_factor {factor:.4f}")
    components["vae"].eval().requires_grad_(False)
    unet_seconds = _train_unet(components, recipe, work, log)
    _write_pipeline_folder(components, out)
    record = {
        "recipe": {k: getattr(recipe, k) for k in dir(PretrainRecipe) if not k.startswith("_")},
        "vae_seconds": round(vae_seconds, 1),
        "unet_seconds": round(unet_seconds, 1),
        "vae_scaling_factor": factor,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "parameters": {
            "unet_2d": sum(p.numel() for p in components["unet"].parameters()),
            "motion_modules": sum(p.numel() for n, p in components["unet_motion"].named_parameters()
                                  if ".motion_modules." in n),
            "vae": sum(p.numel() for p in components["vae"].parameters()),
            "text_encoder": sum(p.numel() for p in components["text_encoder"].parameters()),
        },
        "command": _command(recipe),
    }
    if earlier is not None:
        record["recipe"]["init_from"] = "<the base of the earlier stage>"
        record["stages"] = [*earlier.pop("stages", []), earlier]
    (out / "pretrain_log.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_base_card(out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out} (vae {vae_seconds / 60:.1f} min, unet {unet_seconds / 60:.1f} min)")
    return out


def recipe_parser(prog: str, doc: str, recipe: type, ints: tuple[str, ...], floats: tuple[str, ...]):
    """The parser both pretraining commands share: ``--out``, ``--work`` and an option per recipe number (its
    default from ``recipe``); :func:`parsed_recipe` turns the parsed arguments back into a recipe."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--out", required=True, help="output pipeline folder")
    parser.add_argument("--work", help="checkpoint folder (default <out>.work); an existing one is resumed")
    for kind, keys in ((int, ints), (float, floats)):
        for key in keys:
            parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=getattr(recipe, key))
    return parser


def parsed_recipe(args: argparse.Namespace, recipe: type):
    """The recipe of parsed arguments (every option but ``--out`` / ``--work``)."""
    return recipe(**{k: v for k, v in vars(args).items() if k not in ("out", "work")})


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m miva.world.pretrain", __doc__, PretrainRecipe,
                           ("seed", "vae_steps", "unet_steps", "unet_batch", "frames", "checkpoint_every", "warmup"),
                           ("unet_lr",))
    parser.add_argument("--init-from", help="a finished base folder: train its UNet further (a warm restart)")
    args = parser.parse_args(argv)
    pretrain(args.out, parsed_recipe(args, PretrainRecipe), args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

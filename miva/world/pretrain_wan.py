"""Pretrain the MotionWorld Wan base: one seeded command, resumable, CPU-friendly.

    python -m miva.world.pretrain_wan --out miva/world/weights/wan_base          # the shipped recipe
    python -m miva.world.pretrain_wan --out /tmp/w --vae-steps 2 --transformer-steps 2   # smoke run

The Wan2.1 counterpart of :mod:`miva.world.pretrain` (same scenes, same step-seeded batches, same checkpoints and
exact resume), on the architecture of :mod:`miva.world.wan_architecture`:

1. the ``AutoencoderKLWan`` learns MotionWorld clips of ``1 + 4`` frames (its causal encoder sees frame 0 alone, then
   chunks of four, so both paths train): MSE + L1 + a tiny KL; then it is made frame-wise
   (:func:`~miva.world.wan_architecture.make_vae_framewise`: each frame coded as frame 0 was, so motion between
   frames is not smeared) and ``latents_mean`` / ``latents_std`` are set per channel from encoded clips (what
   ``WanPipeline`` normalises with);
2. the ``WanTransformer3DModel`` learns image-to-video with miva's Wan objective
   (:func:`miva.backbones.wan.training.wan_flow_matching_loss`: latent frame 0 clean, velocity MSE on frames 1..F-1)
   on fresh training scenes under the RICH motion mix (:func:`~miva.world.motions.sample_rich_motion`: zoom and turn
   as common as drift) with prompts that describe the scene, never the motion (10% empty). An EMA ships;
3. optionally (``--decoder-steps N``; off in the shipped recipe, see :class:`WanPretrainRecipe`) the VAE's decoder
   alone is refined (encoder frozen, so the latent space the transformer learned stays exactly the same).

``--init-from FOLDER`` takes phases from a folder this command wrote (its ``pretrain_log.json`` gives their recipe,
time and machine): ``--reuse vae,transformer`` (the default) keeps phases 1-2 and runs phase 3 only; ``--reuse vae``
keeps the trained autoencoder and text encoder and runs phase 2 (and 3) anew.

The result is an ordinary diffusers folder (``model_index.json`` of ``WanPipeline``; fp16 safetensors), plus
``pretrain_log.json`` and a model card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .motions import sample_rich_motion
from .pretrain import _clip_batch, _load_checkpoint, _lr_factor, _save_checkpoint, parsed_recipe, recipe_parser
from .wan_architecture import FLOW_SHIFT, FRAMES, MAX_SEQUENCE_LENGTH, build_wan_components, make_vae_framewise

__all__ = ["WanPretrainRecipe", "pretrain_wan"]


class WanPretrainRecipe(argparse.Namespace):
    """The shipped recipe's hyper-parameters (the CLI's defaults)."""

    seed = 0
    vae_steps = 600
    vae_batch = 4
    vae_frames = 5  # 1 + 4: frame 0 alone and one chunk of four
    vae_lr = 1e-3
    # Frame-wise VAE (after phase 1): the clip-mixing one reads true clips' motion at 19.3 deg, frame-wise at 0.5 deg.
    framewise_vae = True
    transformer_steps = 2400
    batch = 4
    frames = FRAMES
    lr = 3e-4
    warmup = 100
    ema_decay = 0.999
    prompt_dropout = 0.1
    # Phase 3 is off in the shipped recipe: 1200 steps raise reconstruction PSNR (frame 0 20.2 -> 22.1 dB) but the
    # motion read from the ground truth through the refined VAE gets worse (19.3 -> 27.8 deg; benchmarks/motion_world).
    decoder_steps = 0
    decoder_lr = 5e-4
    checkpoint_every = 200
    init_from = None  # a folder this command wrote (see the module docstring)
    reuse = "vae,transformer"  # with init_from: the phases taken from it, one of REUSABLE


REUSABLE = ("vae", "vae,transformer")
# Phase 1's keys (reused with its weights): every recipe key named vae_*.
VAE_RECIPE = tuple(k for k in vars(WanPretrainRecipe) if k.startswith("vae_"))


def _video(pixels: torch.Tensor) -> torch.Tensor:
    """``(batch, frames, 3, H, W)`` -> the VAE's ``(batch, 3, frames, H, W)``."""
    return pixels.permute(0, 2, 1, 3, 4).contiguous()


def _train_loop(name: str, module, params, lr: float, steps: int, recipe, work: Path, log, step_loss, ema=None):
    """The shared seeded, resumable loop; ``step_loss(step)`` returns the loss of step ``step``. Returns seconds."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2 if ema is not None else 0.0)
    ckpt_path = work / f"{name}.pt"
    state = _load_checkpoint(ckpt_path) or {"step": 0, "seconds": 0.0}
    if "model" in state:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        log(f"{name}: resumed at step {state['step']}")
    step, seconds, start = state["step"], state["seconds"], time.perf_counter()
    module.train()
    running = None
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, recipe.warmup, steps)
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            ema.step(params)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps:
            log(f"{name} step {step}/{steps} loss {running:.4f} ({time.perf_counter() - start:.0f} s)")
        if step % recipe.checkpoint_every == 0 or step == steps:
            total = seconds + time.perf_counter() - start
            payload = {"step": step, "seconds": total, "model": module.state_dict(), "optimizer": optimizer.state_dict()}
            if ema is not None:
                payload["ema"] = ema.state_dict()
            _save_checkpoint(ckpt_path, payload)
    module.eval()
    return seconds + time.perf_counter() - start


def _train_vae(vae, recipe, work: Path, log) -> float:
    def step_loss(step: int) -> torch.Tensor:
        pixels, _ = _clip_batch(recipe.seed, 10**7 + step, recipe.vae_batch, recipe.vae_frames, 0.0,
                                sample_rich_motion)
        x = _video(pixels)
        generator = torch.Generator().manual_seed(recipe.seed * 100003 + step)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()

    return _train_loop("vae", vae, list(vae.parameters()), recipe.vae_lr, recipe.vae_steps, recipe, work, log,
                       step_loss)


def _refine_decoder(vae, recipe, work: Path, log) -> float:
    """Phase 3: train ``vae.decoder`` and ``vae.post_quant_conv`` on latents of the frozen encoder (MSE + 0.5 L1)."""
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for param in params:
        param.requires_grad_(True)

    def step_loss(step: int) -> torch.Tensor:
        pixels, _ = _clip_batch(recipe.seed, 2 * 10**7 + step, recipe.vae_batch, recipe.vae_frames, 0.0,
                                sample_rich_motion)
        x = _video(pixels)
        generator = torch.Generator().manual_seed(recipe.seed * 100019 + step)
        with torch.no_grad():  # the encoder is frozen: the latents the transformer learned on do not move
            latents = vae.encode(x).latent_dist.sample(generator)
        recon = vae.decode(latents).sample
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)

    seconds = _train_loop("decoder", vae, params, recipe.decoder_lr, recipe.decoder_steps, recipe, work, log,
                          step_loss)
    vae.requires_grad_(False)
    return seconds


@torch.no_grad()
def _set_latent_statistics(vae, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of encoded clips -> the VAE config's ``latents_mean`` / ``latents_std``."""
    pixels = torch.cat([_clip_batch(seed, 10**8 + i, 4, FRAMES, 0.0, sample_rich_motion)[0] for i in range(4)])
    latents = vae.encode(_video(pixels)).latent_dist.mode()  # (16, z, F, h, w)
    channels = latents.transpose(0, 1).flatten(1)
    mean = [round(float(v), 5) for v in channels.mean(1)]
    std = [round(float(v), 5) for v in channels.std(1)]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return mean, std


def _train_transformer(components, recipe, work: Path, log) -> float:
    from diffusers.training_utils import EMAModel

    from ..backbones.wan.training import encode_video_latents, wan_flow_matching_loss
    from ..pipelines.pipeline_miva_wan import MIVAWanPipeline

    transformer = components["transformer"]
    encoder = MIVAWanPipeline(**{k: components[k] for k in ("transformer", "vae", "text_encoder", "tokenizer",
                                                              "scheduler")})
    params = list(transformer.parameters())
    ema = EMAModel(params, decay=recipe.ema_decay, use_ema_warmup=True, power=3 / 4)

    def step_loss(step: int) -> torch.Tensor:
        pixels, prompts = _clip_batch(recipe.seed, step, recipe.batch, recipe.frames, recipe.prompt_dropout,
                                      sample_rich_motion)
        generator = torch.Generator().manual_seed(recipe.seed * 1000003 + step)
        with torch.no_grad():
            latents = encode_video_latents(components["vae"], _video(pixels))
            embeds = encoder.encode_prompt(prompts, do_classifier_free_guidance=False,
                                           max_sequence_length=MAX_SEQUENCE_LENGTH, device="cpu")[0]
        return wan_flow_matching_loss(transformer, latents, embeds, generator, shift=FLOW_SHIFT)

    seconds = _train_loop("transformer", transformer, params, recipe.lr, recipe.transformer_steps, recipe, work,
                          log, step_loss, ema=ema)
    ema.copy_to(params)
    return seconds


def _write_folder(components: dict, out: Path) -> None:
    """An ordinary diffusers ``WanPipeline`` folder, fp16 safetensors, written beside and renamed into place."""
    from diffusers import WanPipeline

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("transformer", "vae", "text_encoder"):
        components[name].half()
    WanPipeline(**{k: components[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
                ).save_pretrained(tmp, safe_serialization=True)
    for name in ("pretrain_log.json", "README.md"):
        if (out / name).exists():
            shutil.copy2(out / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _phases_from_folder(folder: Path, reused: tuple[str, ...], seed: int) -> tuple[dict, dict]:
    """The components of an earlier run (float32; its text encoder and the ``reused`` phases' modules, the rest
    freshly built from ``seed``) and its ``pretrain_log.json``."""
    from diffusers import WanPipeline

    record_path = folder / "pretrain_log.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"init_from={str(folder)!r} has no pretrain_log.json: give a folder that "
                                "`python -m miva.world.pretrain_wan` wrote")
    components = dict(WanPipeline.from_pretrained(folder, dtype=torch.float32).components)
    if "transformer" not in reused:
        components["transformer"] = build_wan_components(seed)["transformer"]
    return components, json.loads(record_path.read_text(encoding="utf-8"))


def _reused_phases(recipe) -> tuple[str, ...]:
    """The phases ``--init-from`` takes from its folder (validated ``recipe.reuse``); none without ``init_from``."""
    if not recipe.init_from:
        return ()
    if recipe.reuse not in REUSABLE:
        raise ValueError(f"reuse={recipe.reuse!r} is not a choice; give one of {list(REUSABLE)}")
    if recipe.reuse == "vae,transformer" and not recipe.decoder_steps:
        raise ValueError(f"init_from={recipe.init_from!r} with reuse='vae,transformer' keeps phases 1-2 and runs "
                         "phase 3 only, but decoder_steps=0; give decoder_steps >= 1, or reuse='vae'")
    return tuple(recipe.reuse.split(","))


def _record(recipe, components: dict, seconds: dict, mean, std, earlier: dict | None, reused: tuple) -> dict:
    """``pretrain_log.json``: the recipe (the reused phases' keys from ``earlier``), the time of each phase, the
    machine of each reused phase, the latent statistics, the parameter counts and the command that rebuilds it all."""
    skip = ("init_from", "reuse")
    own = {k: getattr(recipe, k) for k in dir(WanPretrainRecipe) if not k.startswith("_") and k not in skip}
    if "transformer" in reused:  # phases 1-2 as they were, frame-wise or not
        own.update({k: v for k, v in earlier["recipe"].items() if not k.startswith("decoder")})
        own["framewise_vae"] = earlier["recipe"].get("framewise_vae", False)
    elif reused:
        own.update({k: earlier["recipe"][k] for k in VAE_RECIPE})
    machine = (f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}")
    flags = [f" --{k.replace('_', '-')} {own[k]}" for k in ("seed", "vae_steps", "transformer_steps", "decoder_steps")
             if k != "decoder_steps" or own[k]]
    return {
        "recipe": own,
        **{f"{phase}_seconds": round(value, 1) for phase, value in seconds.items()},
        "latents_mean": mean,
        "latents_std": std,
        "machine": machine,
        "parameters": {name: sum(p.numel() for p in components[name].parameters())
                       for name in ("transformer", "vae", "text_encoder")},
        "command": "python -m miva.world.pretrain_wan --out <folder>" + "".join(flags)
        + ("" if own["framewise_vae"] else " --no-framewise-vae"),
        **({"phases_from": {phase: earlier.get("phases_from", {}).get(phase, earlier["machine"]) for phase in reused}}
           if reused else {}),
    }


def pretrain_wan(out: str | Path, recipe: WanPretrainRecipe | None = None, work: str | Path | None = None,
                 log=print) -> Path:
    """Run (or resume) the recipe; write the pipeline folder ``out``; return it. Checkpoints go to ``work``
    (default ``<out>.work``), which is removed at the end."""
    recipe = recipe or WanPretrainRecipe()
    out = Path(out)
    work = Path(work) if work else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    reused = _reused_phases(recipe)
    if reused:
        components, earlier = _phases_from_folder(Path(recipe.init_from), reused, recipe.seed)
        seconds = {phase: earlier[f"{phase}_seconds"] for phase in reused}
        log(f"{' and '.join(reused)} from {recipe.init_from}")
    else:
        components, earlier, seconds = build_wan_components(recipe.seed), None, {}
        seconds["vae"] = _train_vae(components["vae"], recipe, work, log)
    components["text_encoder"].eval().requires_grad_(False)
    components["vae"].eval().requires_grad_(False)
    if "transformer" in reused:
        mean, std = earlier["latents_mean"], earlier["latents_std"]
    else:
        if recipe.framewise_vae:
            log(f"vae: frame-wise ({make_vae_framewise(components['vae'])} causal convolutions)")
        mean, std = _set_latent_statistics(components["vae"], recipe.seed)
        log(f"latent std per channel {std}")
        seconds["transformer"] = _train_transformer(components, recipe, work, log)
    components["transformer"].requires_grad_(False)
    if recipe.decoder_steps:
        seconds["decoder"] = _refine_decoder(components["vae"], recipe, work, log)
    _write_folder(components, out)
    record = _record(recipe, components, seconds, mean, std, earlier, reused)
    (out / "pretrain_log.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    from .card import write_base_card

    write_base_card(out)  # README.md: the model card, from pretrain_log.json
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out} (" + ", ".join(f"{phase} {value / 60:.1f} min" for phase, value in seconds.items()) + ")")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser("python -m miva.world.pretrain_wan", __doc__, WanPretrainRecipe,
                           ("seed", "vae_steps", "transformer_steps", "decoder_steps", "batch", "checkpoint_every",
                            "warmup"), ("lr", "decoder_lr"))
    parser.add_argument("--framewise-vae", action=argparse.BooleanOptionalAction, default=WanPretrainRecipe.framewise_vae,
                        help="make the VAE frame-wise after phase 1 (default: yes)")
    parser.add_argument("--init-from", help="a folder this command wrote: take the --reuse phases from it")
    parser.add_argument("--reuse", default=WanPretrainRecipe.reuse, choices=REUSABLE,
                        help="with --init-from: the phases kept (default: vae,transformer, i.e. run phase 3 only)")
    args = parser.parse_args(argv)
    pretrain_wan(args.out, parsed_recipe(args, WanPretrainRecipe), args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory and step time of a MIVA training step (the real trainer, `miva.training.train.MIVATrainer`).

One step = read a clip, VAE-encode its frames, encode the prompt, UNet forward + backward on frames 1..F-1, gradient
clipping and an AdamW update. The adapter has every part the research recipe trains: the cross-frame (I2V) branch,
MotionLoRA and CA-LoRA (rank 32). Models are built offline from configs with random weights (memory and time do not
depend on weight values): `--size sd15` is the SD1.5 UNet + AnimateDiff v1-5-3 motion adapter (`models.py`), an
SD1.5 VAE and a CLIP ViT-L text encoder; `tiny` / `small` are CPU-sized. Clips are synthetic.

    python benchmarks/bench_training.py                       # CUDA: sd15, 16x320x512, fp16, gradient checkpointing
    python benchmarks/bench_training.py --size tiny           # CPU: tiny model, 8x64x64, float32
    python benchmarks/bench_training.py --size sd15 --no-gradient-checkpointing

Prints a markdown table row and writes `benchmarks/results/training_<size>_<device>_<precision>[_nogc].json`.
Peak memory is `torch.cuda.max_memory_allocated` over the whole run on CUDA, peak RSS of the process on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import SIZES, build_unet_motion  # noqa: E402

DEFAULT_SHAPES = {"tiny": (8, 64, 64), "small": (8, 128, 192), "sd15": (16, 320, 512)}  # frames, height, width


def build_components(size: str) -> dict:
    """Random-weight, offline components for `MIVATrainer(components=...)`."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from miva.tiny import tiny_components

    tiny = tiny_components(seed=0, with_image_encoder=False)
    unet, text_dim = build_unet_motion(size)
    parts = dict(unet=unet, tokenizer=tiny["tokenizer"], scheduler=tiny["scheduler"])
    if size == "tiny":
        return dict(parts, vae=tiny["vae"], text_encoder=tiny["text_encoder"])
    torch.manual_seed(0)
    if size == "sd15":
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32,
            sample_size=512,
        )
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    else:
        vae = tiny["vae"]
        text = CLIPTextConfig(
            hidden_size=text_dim, intermediate_size=4 * text_dim, num_hidden_layers=4, num_attention_heads=8
        )
    tokenizer = tiny["tokenizer"]
    text.vocab_size, text.max_position_embeddings = len(tokenizer), 77
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    return dict(parts, vae=vae.eval(), text_encoder=CLIPTextModel(text).eval())


def main(argv: list[str] | None = None) -> dict:
    from miva.training.synthetic import write_synthetic_dataset
    from miva.training.train import LOG_FILE, MIVATrainer
    from miva.training.train_config import TrainConfig

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="sd15" if cuda else "tiny")
    parser.add_argument("--frames", type=int, default=None, help="default: 16 sd15, 8 otherwise")
    parser.add_argument("--height", type=int, default=None, help="default: 320 sd15, 64 tiny, 128 small")
    parser.add_argument("--width", type=int, default=None, help="default: 512 sd15, 64 tiny, 192 small")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="fp16" if cuda else "no")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up ones)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    frames, height, width = (v or d for v, d in zip((args.frames, args.height, args.width), DEFAULT_SHAPES[args.size]))
    checkpointing = not args.no_gradient_checkpointing

    started = time.perf_counter()
    components = build_components(args.size)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(
            Path(tmp, "clips"),
            num_clips=2,
            num_frames=frames,
            height=height,
            width=width,
            prompt="a photo of clouds moving",
            fmt="frames",
        )
        config = TrainConfig(
            output_dir=str(Path(tmp, "run")),
            tiny=True,
            video_root=str(Path(tmp, "clips")),
            num_frames=frames,
            sample_frame_rate=1,
            width=width,
            height=height,
            adapter=dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True),
            max_train_steps=args.warmup + args.steps,
            checkpointing_steps=None,
            validation_steps=None,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=checkpointing,
            use_8bit_adam=False,
            report_to="none",
            learning_rate=1e-5,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = MIVATrainer(config, components=components)
        trainer.train()
        times = [json.loads(line)["step_time"] for line in Path(tmp, "run", LOG_FILE).read_text().splitlines()]
    unet_params = sum(p.numel() for p in trainer.unet.parameters())
    trainable = sum(p.numel() for p in trainer.trainable.values())
    result = dict(
        size=args.size,
        frames=frames,
        height=height,
        width=width,
        device=str(trainer.accelerator.device),
        gpu=torch.cuda.get_device_name() if cuda else None,
        mixed_precision=trainer.accelerator.mixed_precision,
        gradient_checkpointing=checkpointing,
        optimizer=type(trainer.optimizer.optimizer).__name__,
        unet_parameters=unet_params,
        trainable_parameters=trainable,
        warmup_steps=args.warmup,
        step_times_s=times[args.warmup :],
        median_step_s=statistics.median(times[args.warmup :]),
        build_s=build_seconds,
        torch=torch.__version__,
    )
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        memory = f"{result['peak_allocated_gib']:.2f} GiB allocated ({result['peak_reserved_gib']:.2f} reserved)"
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        memory = f"{result['peak_rss_gib']:.2f} GiB RSS"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"training_{args.size}_{'cuda' if cuda else 'cpu'}_{args.mixed_precision}{'' if checkpointing else '_nogc'}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| size | F x H x W | device | precision | grad. ckpt | trainable / UNet params | step (median) | peak memory |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.size} | {frames}x{height}x{width} | {result['gpu'] or 'cpu'} | {result['mixed_precision']} | "
        f"{'on' if checkpointing else 'off'} | {trainable / 1e6:.1f}M / {unet_params / 1e6:.0f}M | "
        f"{result['median_step_s']:.3f} s | {memory} |"
    )
    return result


if __name__ == "__main__":
    main()

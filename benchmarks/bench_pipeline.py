"""Denoising-step cost of MIVA against stock diffusers AnimateDiff, as ratios measured in one run.

One denoising step of `AnimateDiffPipeline` / `MIVAPipeline` is one `UNetMotionModel` call on the classifier-free
guidance batch (2 videos) plus a scheduler update that both share; the UNet call is what MIVA changes, so that is
what we time. Stock = a copy of the same UNet with diffusers' own processors and no hooks. For each variant the
stock and MIVA calls alternate (A/B/A/B ...) after warm-up, and the ratio of the medians is reported, so machine
noise hits both sides alike.

    python benchmarks/bench_pipeline.py --size small
    python benchmarks/bench_pipeline.py --size sd15 --device cuda --dtype float16 --frames 16 --height 320 --width 512
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import SIZES, build_unet_motion, randomise_adapters  # noqa: E402

from miva.attention_processors import (  # noqa: E402
    MIVAAdapterConfig,
    add_miva_adapter,
    install_miva_processors,
    set_miva_adapters,
)

FULL = dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True)
VARIANTS = {
    "no adapter": [],
    "1 full adapter": [FULL],
    "STQ r=4 + rope_3d": [dict(FULL, q_downsample=True, q_downsample_ratio=4, ca_pe_mode="rope_3d")],
    "implicit prompt": [dict(FULL, use_ca_lora=False, ca_mode="implicit")],
    "2 adapters residual": [FULL] * 2,
    "4 adapters residual": [FULL] * 4,
    "4 adapters weights fused": [FULL] * 4,
}


def configure(unet, adapters: list[dict], variant: str) -> None:
    """Install MIVA processors on `unet` and activate `adapters` (random weights; equal weights summing to 1)."""
    install_miva_processors(unet)
    names = [f"a{i}" for i in range(len(adapters))]
    for name, fields in zip(names, adapters):
        add_miva_adapter(unet, name, MIVAAdapterConfig(**fields))
    randomise_adapters(unet)
    if not names:
        return
    weights = [1.0 / len(names)] * len(names)
    mode = "weights" if "weights" in variant else "residual"
    set_miva_adapters(unet, names, weights, parallel_mode=mode)
    if "fused" in variant:
        from miva.attention_processors import fuse_miva_adapters

        fuse_miva_adapters(unet)


def make_inputs(text_dim: int, frames: int, height: int, width: int, device, dtype):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, frames, height // 8, width // 8, generator=generator)
    text = torch.randn(2 * frames, 77, text_dim, generator=generator)
    return sample.to(device, dtype), torch.tensor(500, device=device), text.to(device, dtype)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory_gib(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def run(args) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    base, text_dim = build_unet_motion(args.size)
    stock = base.to(device, dtype)
    sample, t, text = make_inputs(text_dim, args.frames, args.height, args.width, device, dtype)

    def call(unet):
        return lambda: unet(sample, t, encoder_hidden_states=text)

    rows = []
    for variant, adapters in VARIANTS.items():
        if args.variants and variant not in args.variants:
            continue
        ours = copy.deepcopy(stock)
        try:
            configure(ours, adapters, variant)
        except ImportError as e:
            print(f"skipping {variant!r}: {e}", file=sys.stderr)
            continue
        ours.to(device, dtype)
        for _ in range(args.warmup):
            call(stock)(), call(ours)()
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(call(stock), device))
            b.append(timed(call(ours), device))
        stock_s, ours_s = statistics.median(a), statistics.median(b)
        rows.append({
            "variant": variant, "stock_s_per_step": stock_s, "miva_s_per_step": ours_s, "ratio": ours_s / stock_s,
            "stock_peak_gib": peak_memory_gib(call(stock), device), "miva_peak_gib": peak_memory_gib(call(ours), device),
        })
        print(f"{variant:28s} stock {stock_s:.4f}s  miva {ours_s:.4f}s  ratio {ours_s / stock_s:.3f}", flush=True)
        del ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "size": args.size, "device": str(device), "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "dtype": args.dtype, "frames": args.frames, "height": args.height,
        "width": args.width, "cfg_batch": 2, "repeats": args.repeats, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [f"{result['size']} | {result['device_name']} | {result['dtype']} | {result['frames']}x{result['height']}"
             f"x{result['width']}, CFG batch 2",
             "",
             "| variant | stock s/step | MIVA s/step | ratio | stock peak GiB | MIVA peak GiB |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        mem = [f"{row[k]:.2f}" if row[k] is not None else "n/a" for k in ("stock_peak_gib", "miva_peak_gib")]
        lines.append(f"| {row['variant']} | {row['stock_s_per_step']:.4f} | {row['miva_s_per_step']:.4f} | "
                     f"{row['ratio']:.3f}x | {mem[0]} | {mem[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=None, help="pixels (default: 64 tiny, 256 small, 320 sd15)")
    parser.add_argument("--width", type=int, default=None, help="pixels (default: 64 tiny, 384 small, 512 sd15)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    default_hw = {"tiny": (64, 64), "small": (256, 384), "sd15": (320, 512)}[args.size]
    args.height = args.height or default_hw[0]
    args.width = args.width or default_hw[1]
    result = run(args)
    print(markdown(result))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"pipeline_{args.size}_{args.device.split(':')[0]}_{args.dtype}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

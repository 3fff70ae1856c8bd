"""Denoising-step cost of MIVA against stock diffusers AnimateDiff, as ratios measured in one run.

One denoising step of `AnimateDiffPipeline` / `MIVAPipeline` is one `UNetMotionModel` call on the classifier-free
guidance batch (2 videos) plus a scheduler update that both share; the UNet call is what MIVA changes, so that is
what we time. Stock = a copy of the same UNet with diffusers' own processors and no hooks. For each variant the
stock and MIVA calls alternate (A/B/A/B ...) after warm-up. The reported times are the fastest of the repeats and
their quotient is the wall ratio (other processes only ever slow a run down, so on a shared machine the minimum is
the best estimate of the undisturbed cost, as `timeit` advises). On a CPU device the reported ratio is the median
over pairs of the ratio of process CPU time, which other processes do not inflate; on CUDA it is the wall ratio.
Every raw time is in the JSON. Inference runs without autograd, as in the pipeline.

    python benchmarks/bench_pipeline.py --size small                  # CPU table of benchmarks/README.md
    python benchmarks/bench_pipeline.py --size sd15 --device cuda --dtype float16    # 16x320x512, CFG

Prints a markdown table (with the targets of docs/research.md#targets checked) and writes
`benchmarks/results/pipeline_<size>_<device>_<dtype>[_<frames>x<height>x<width>].json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
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
    fuse_miva_adapters,
    install_miva_processors,
    set_miva_adapters,
)

FULL = dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True)  # cross-frame branch + MotionLoRA + CA-LoRA
LORA = dict(use_i2v=False, use_motion_lora=True, use_ca_lora=True)  # only fusable parts
VARIANTS = {
    "no adapter": [],
    "1 full adapter": [FULL],
    "1 LoRA adapter (MotionLoRA + CA-LoRA)": [LORA],
    "STQ r=4 + rope_3d": [dict(FULL, q_downsample=True, q_downsample_ratio=4, ca_pe_mode="rope_3d")],
    "implicit prompt": [dict(FULL, use_ca_lora=False, ca_mode="implicit")],
    "2 adapters residual": [FULL] * 2,
    "4 adapters residual": [FULL] * 4,
    "4 adapters weights": [FULL] * 4,
    "4 LoRA adapters weights fused": [LORA] * 4,
    "4 adapters weights fused": [FULL] * 4,
}
# docs/research.md#targets: (label, numerator variant, denominator variant or None for stock, limit).
TARGETS = [
    ("no adapter vs stock", "no adapter", None, 1.03),
    ("one full adapter vs stock", "1 full adapter", None, 1.25),
    ("4 residual adapters vs one full adapter", "4 adapters residual", "1 full adapter", 2.0),
    ("4 LoRA adapters 'weights' fused vs stock", "4 LoRA adapters weights fused", None, 1.03),
]
DEFAULT_SHAPES = {"tiny": (8, 64, 64), "small": (16, 160, 256), "sd15": (16, 320, 512)}  # frames, height, width


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
        fuse_miva_adapters(unet)


def make_inputs(text_dim: int, frames: int, height: int, width: int, device, dtype):
    """CFG-sized inputs: sample (2, 4, F, H/8, W/8), timestep (), text (2*F, 77, text_dim)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, frames, height // 8, width // 8, generator=generator)
    text = torch.randn(2 * frames, 77, text_dim, generator=generator)
    return sample.to(device, dtype), torch.tensor(500, device=device), text.to(device, dtype)


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def peak_memory_gib(fn, device) -> float | None:
    """Peak allocated GiB of one call on CUDA (None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2**30


def run(args) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
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
        configure(ours, adapters, variant)
        ours.to(device, dtype)
        for _ in range(args.warmup):
            call(stock)(), call(ours)()
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(call(stock), device))
            b.append(timed(call(ours), device))
        row = summarise(variant, a, b, cpu_clock=device.type == "cpu")
        row["stock_peak_gib"], row["miva_peak_gib"] = peak_memory_gib(call(stock), device), peak_memory_gib(
            call(ours), device)
        rows.append(row)
        print(f"{variant:40s} stock {row['stock_s_per_step']:.4f}s  miva {row['miva_s_per_step']:.4f}s  ratio "
              f"{row['ratio']:.3f} (wall, fastest: {row['wall_ratio']:.3f})", flush=True)
        del ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "size": args.size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype, "frames": args.frames, "height": args.height, "width": args.width, "cfg_batch": 2,
        "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "targets": check_targets(rows),
    }


def summarise(variant: str, stock: list[tuple[float, float]], ours: list[tuple[float, float]],
              cpu_clock: bool) -> dict:
    """One table row from the (wall, CPU) seconds of the A/B pairs.

    s/step = the fastest wall time of each side. `wall_ratio` = their quotient (other processes only slow a run
    down). `ratio`: on CUDA the same; on a CPU device the median over pairs of the ratio of process CPU time, which
    other processes on a shared machine do not inflate (they delay our threads, they do not add to their work).
    """
    stock_wall, ours_wall = [w for w, _ in stock], [w for w, _ in ours]
    wall_ratio = min(ours_wall) / min(stock_wall)
    cpu_ratio = statistics.median(o[1] / s[1] for s, o in zip(stock, ours))
    return {
        "variant": variant, "stock_s_per_step": min(stock_wall), "miva_s_per_step": min(ours_wall),
        "ratio": cpu_ratio if cpu_clock else wall_ratio, "wall_ratio": wall_ratio, "cpu_time_ratio": cpu_ratio,
        "median_pair_wall_ratio": statistics.median(o / s for s, o in zip(stock_wall, ours_wall)),
        "stock_times_s": stock_wall, "miva_times_s": ours_wall,
        "stock_cpu_times_s": [c for _, c in stock], "miva_cpu_times_s": [c for _, c in ours],
    }


def check_targets(rows: list[dict]) -> list[dict]:
    """The docs/research.md#targets speed targets that these rows can decide."""
    ratio = {row["variant"]: row["ratio"] for row in rows}
    out = []
    for label, numerator, denominator, limit in TARGETS:
        if numerator not in ratio or (denominator is not None and denominator not in ratio):
            continue
        value = ratio[numerator] / (ratio[denominator] if denominator else 1.0)
        out.append({"target": label, "ratio": value, "limit": limit, "met": value <= limit})
    return out


def markdown(result: dict) -> str:
    cpu = result["device"] == "cpu"
    lines = [f"`{result['size']}` | {result['device_name']} ({result['threads']} threads) | {result['dtype']} | "
             f"{result['frames']}x{result['height']}x{result['width']}, CFG batch 2 | {result['repeats']} A/B pairs "
             f"(s/step: fastest wall time; ratio: {'median CPU-time ratio' if cpu else 'wall'})",
             "",
             "| variant | stock s/step | MIVA s/step | ratio | wall ratio | stock peak GiB | MIVA peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        mem = [f"{row[k]:.2f}" if row[k] is not None else "n/a" for k in ("stock_peak_gib", "miva_peak_gib")]
        lines.append(f"| {row['variant']} | {row['stock_s_per_step']:.4f} | {row['miva_s_per_step']:.4f} | "
                     f"{row['ratio']:.3f}x | {row['wall_ratio']:.3f}x | {mem[0]} | {mem[1]} |")
    if result["targets"]:
        lines += ["", "| target (docs/research.md#targets) | measured | limit | met |", "|---|---|---|---|"]
        for target in result["targets"]:
            lines.append(f"| {target['target']} | {target['ratio']:.3f}x | {target['limit']:.2f}x | "
                         f"{'yes' if target['met'] else 'NO'} |")
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser, variants) -> None:
    """The model, shape, device and A/B arguments shared by the step benchmarks (`--variants`: a subset of
    `variants`)."""
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--frames", type=int, default=None, help="default: 8 tiny, 16 small and sd15")
    parser.add_argument("--height", type=int, default=None, help="pixels (default: 64 tiny, 160 small, 320 sd15)")
    parser.add_argument("--width", type=int, default=None, help="pixels (default: 64 tiny, 256 small, 512 sd15)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {list(variants)}")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))


def parse_common(parser: argparse.ArgumentParser, variants, argv=None) -> argparse.Namespace:
    """Parse `argv`, check `--variants` against `variants` and fill the size's default frames/height/width."""
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants or [] if v not in variants]
    if unknown:
        parser.error(f"--variants {unknown} not in {list(variants)}")
    defaults = DEFAULT_SHAPES[args.size]
    args.frames, args.height, args.width = (v or d for v, d in zip((args.frames, args.height, args.width), defaults))
    return args


def write_result(result: dict, args: argparse.Namespace, prefix: str) -> Path:
    """Write `result` to `<out>/<prefix>_<size>_<device>_<dtype>[_<frames>x<height>x<width>].json` (the shape
    suffix only when it is not the size's default)."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    shape = (args.frames, args.height, args.width)
    suffix = "" if shape == DEFAULT_SHAPES[args.size] else f"_{args.frames}x{args.height}x{args.width}"
    path = Path(args.out) / f"{prefix}_{args.size}_{args.device.split(':')[0]}_{args.dtype}{suffix}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, VARIANTS)
    args = parse_common(parser, VARIANTS, argv)
    result = run(args)
    print(markdown(result))
    write_result(result, args, "pipeline")
    return result


if __name__ == "__main__":
    main()

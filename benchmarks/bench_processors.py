"""Per-processor micro-benchmarks on SD1.5 shapes: stock `AttnProcessor2_0` vs the MIVA processors.

Shapes: 16 frames of a 320x512 video, i.e. latents 40x64 at level 0 (C=320), 20x32 (640), 10x16 (1280); text
77x768; CFG batch 2. Each MIVA processor runs on the same `Attention` module as the stock one, alternating A/B,
without autograd (inference); times are the fastest of the repeats (other processes only slow runs down), the
ratio their quotient. The FLOP ratio (matmuls and attention, `bench_compile.count_flops`)
is the floor a compute-bound kernel cannot beat: a time ratio near it leaves nothing to remove but arithmetic.

    python benchmarks/bench_processors.py --level 2            # CPU-friendly
    python benchmarks/bench_processors.py --level 0 --device cuda --dtype float16

Prints a markdown table and writes `benchmarks/results/processors_level<L>_<device>_<dtype>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compile import count_flops  # noqa: E402
from models import randomise_adapters  # noqa: E402

from miva.attention_processors import (  # noqa: E402
    MIVAAdapterConfig,
    MIVAContext,
    MIVACrossAttnProcessor,
    MIVASelfAttnProcessor,
    MIVATemporalAttnProcessor,
    miva_call,
)

LEVELS = {0: (320, 40, 64), 1: (640, 20, 32), 2: (1280, 10, 16)}
STQ = dict(use_ca_lora=True, q_downsample=True, q_downsample_ratio=4, ca_pe_mode="rope_3d")
# case -> (processor class, adapter fields, layout, number of adapters, parallel mode)
CASES = {
    "self-attn, cross-frame branch (first)": (MIVASelfAttnProcessor, dict(use_i2v=True), "spatial", 1, "residual"),
    "self-attn, cross-frame first_prev adaptive": (
        MIVASelfAttnProcessor, dict(use_i2v=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2"),
        "spatial", 1, "residual"),
    "self-attn, 4 cross-frame branches": (MIVASelfAttnProcessor, dict(use_i2v=True), "spatial", 4, "residual"),
    "cross-attn, CA-LoRA": (MIVACrossAttnProcessor, dict(use_ca_lora=True), "cross", 1, "residual"),
    "cross-attn, STQ r=4 rope_3d": (MIVACrossAttnProcessor, STQ, "cross", 1, "residual"),
    "cross-attn, implicit prompt": (MIVACrossAttnProcessor, dict(ca_mode="implicit"), "cross", 1, "residual"),
    "cross-attn, 4 CA-LoRA residual": (MIVACrossAttnProcessor, dict(use_ca_lora=True), "cross", 4, "residual"),
    "cross-attn, 4 CA-LoRA weights": (MIVACrossAttnProcessor, dict(use_ca_lora=True), "cross", 4, "weights"),
    "temporal, MotionLoRA": (MIVATemporalAttnProcessor, dict(use_motion_lora=True), "temporal", 1, "residual"),
    "temporal, MotionLoRA + motion embedding": (
        MIVATemporalAttnProcessor, dict(use_motion_lora=True, use_motion_embed=True), "temporal", 1, "residual"),
    "temporal, 4 MotionLoRA residual": (
        MIVATemporalAttnProcessor, dict(use_motion_lora=True), "temporal", 4, "residual"),
    "temporal, 4 MotionLoRA weights": (
        MIVATemporalAttnProcessor, dict(use_motion_lora=True), "temporal", 4, "weights"),
}


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_case(case: str, channels: int, size: tuple[int, int], frames: int, batch: int, device, dtype):
    """(attn, MIVA processor, call values) for `case`, adapters randomised and active with equal weights summing to
    1; the call values (for `miva_call`) are what the UNet's hooks would record."""
    kind, fields, layout, count, mode = CASES[case]
    cross = layout == "cross"
    attn = Attention(channels, cross_attention_dim=768 if cross else None, heads=8, dim_head=channels // 8,
                     out_bias=True).to(device, dtype).eval()
    context = MIVAContext(temb_channels=1280, parallel_mode=mode)
    values = dict(num_frames=frames, spatial_sizes={case: size}, timestep=torch.full((batch,), 500, device=device),
                  temb=torch.randn(batch, 1280).to(device, dtype))
    processor = kind(context, layer_name=case)
    names = [f"a{i}" for i in range(count)]
    for name in names:
        processor.add_adapter(attn, name, MIVAAdapterConfig(**fields))
    randomise_adapters(processor)
    context.active = [(name, 1.0 / count) for name in names]
    return attn, processor, values


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", type=int, choices=sorted(LEVELS), default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cases", nargs="*", default=None, help=f"subset of {list(CASES)}")
    parser.add_argument("--flops-only", action="store_true", help="only the FLOP ratios (no timing): the floors")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    channels, h, w = LEVELS[args.level]
    frames, batch = args.frames, 2
    generator = torch.Generator().manual_seed(0)
    spatial = torch.randn(batch * frames, h * w, channels, generator=generator).to(device, dtype)
    temporal = torch.randn(batch * h * w, frames, channels, generator=generator).to(device, dtype)
    text = torch.randn(batch * frames, 77, 768, generator=generator).to(device, dtype)
    print(f"level {args.level}: C={channels}, latents {h}x{w}, {frames} frames, CFG batch {batch}, {args.dtype} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}\n")
    print("| case | stock ms | MIVA ms | ratio | FLOP ratio |\n|---|---|---|---|---|")
    rows = []
    for case, (_, _, layout, _, _) in CASES.items():
        if args.cases and case not in args.cases:
            continue
        attn, processor, values = build_case(case, channels, (h, w), frames, batch, device, dtype)
        x = temporal if layout == "temporal" else spatial
        ehs = text if layout == "cross" else None
        stock = AttnProcessor2_0()

        def ours_fn(attn=attn, processor=processor, x=x, ehs=ehs):
            return processor(attn, x, ehs)

        def stock_fn(attn=attn, stock=stock, x=x, ehs=ehs):
            return stock(attn, x, ehs)

        a, b = [], []
        with miva_call(processor.context, **values):  # one call state for the case, as one pipeline call would
            ours_fn(), stock_fn()
            flop_ratio = count_flops(ours_fn)[0] / count_flops(stock_fn)[0]
            if args.flops_only:
                print(f"| {case} | | | | {flop_ratio:.2f}x |", flush=True)
                rows.append({"case": case, "flop_ratio": flop_ratio})
                continue
            for _ in range(args.repeats):
                a.append(timed(stock_fn, device))
                b.append(timed(ours_fn, device))
        row = {"case": case, "stock_ms": 1e3 * min(a), "miva_ms": 1e3 * min(b), "ratio": min(b) / min(a),
               "median_pair_ratio": statistics.median(y / x for x, y in zip(a, b)), "flop_ratio": flop_ratio,
               "stock_s": a, "miva_s": b}
        rows.append(row)
        print(f"| {case} | {row['stock_ms']:.2f} | {row['miva_ms']:.2f} | {row['ratio']:.3f}x | {flop_ratio:.2f}x |", flush=True)
    result = {"level": args.level, "channels": channels, "grid": [h, w], "frames": frames, "device": str(device),
              "dtype": args.dtype, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "torch": torch.__version__, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"processors_level{args.level}_{device.type}_{args.dtype}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

"""Per-processor micro-benchmarks on SD1.5 shapes: stock `AttnProcessor2_0` vs the MIVA processors.

Shapes: 16 frames of a 320x512 video, i.e. latents 40x64 at level 0 (C=320), 20x32 (640), 10x16 (1280); text
77x768; CFG batch 2. Each MIVA processor runs on the same `Attention` module as the stock one, alternating A/B.

    python benchmarks/bench_processors.py --level 2            # CPU-friendly
    python benchmarks/bench_processors.py --level 0 --device cuda --dtype float16
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
from models import randomise_adapters  # noqa: E402

from miva.attention_processors import (  # noqa: E402
    MIVAAdapterConfig,
    MIVAContext,
    MIVACrossAttnProcessor,
    MIVASelfAttnProcessor,
    MIVATemporalAttnProcessor,
)

LEVELS = {0: (320, 40, 64), 1: (640, 20, 32), 2: (1280, 10, 16)}
CASES = {
    "self-attn + cross-frame branch": (MIVASelfAttnProcessor, dict(use_i2v=True), "spatial"),
    "cross-attn + CA-LoRA": (MIVACrossAttnProcessor, dict(use_ca_lora=True), "cross"),
    "cross-attn + STQ r=4 rope_3d": (
        MIVACrossAttnProcessor, dict(use_ca_lora=True, q_downsample=True, ca_pe_mode="rope_3d"), "cross"),
    "cross-attn + implicit prompt": (MIVACrossAttnProcessor, dict(ca_mode="implicit"), "cross"),
    "temporal + MotionLoRA": (MIVATemporalAttnProcessor, dict(use_motion_lora=True), "temporal"),
}


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", type=int, choices=sorted(LEVELS), default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    channels, h, w = LEVELS[args.level]
    frames, batch = args.frames, 2
    generator = torch.Generator().manual_seed(0)
    spatial = torch.randn(batch * frames, h * w, channels, generator=generator).to(device, dtype)
    temporal = torch.randn(batch * h * w, frames, channels, generator=generator).to(device, dtype)
    text = torch.randn(batch * frames, 77, 768, generator=generator).to(device, dtype)
    rows = []
    for case, (kind, fields, layout) in CASES.items():
        cross = layout == "cross"
        attn = Attention(channels, cross_attention_dim=768 if cross else None, heads=8, dim_head=channels // 8,
                         out_bias=True).to(device, dtype).eval()
        attn.miva_spatial_size = (h, w)
        context = MIVAContext(num_frames=frames, temb_channels=1280)
        context.timestep = torch.full((batch,), 500, device=device)
        processor = kind(context, layer_name=case)
        processor.add_adapter(attn, "a", MIVAAdapterConfig(**fields))
        randomise_adapters(processor)
        context.active = [("a", 1.0)]
        x = temporal if layout == "temporal" else spatial
        ehs = text if cross else None
        stock = AttnProcessor2_0()
        ours_fn = lambda: processor(attn, x, ehs)  # noqa: E731
        stock_fn = lambda: stock(attn, x, ehs)  # noqa: E731
        ours_fn(), stock_fn()
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(stock_fn, device))
            b.append(timed(ours_fn, device))
        row = {"case": case, "stock_ms": 1e3 * statistics.median(a), "miva_ms": 1e3 * statistics.median(b)}
        row["ratio"] = row["miva_ms"] / row["stock_ms"]
        rows.append(row)
        print(f"| {case} | {row['stock_ms']:.2f} | {row['miva_ms']:.2f} | {row['ratio']:.3f}x |", flush=True)
    result = {"level": args.level, "channels": channels, "grid": [h, w], "frames": frames, "device": str(device),
              "dtype": args.dtype, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"processors_level{args.level}_{device.type}_{args.dtype}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

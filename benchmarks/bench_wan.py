"""Cost of MIVA adapters on Wan2.1's DiT against the stock `WanTransformer3DModel`, as ratios measured in one run.

One denoising step is one transformer call (guidance 1, the official recipe); stock = the same weights without MIVA.
Variants: one adapter (cross-frame branch `first_prev` + adaptive weight, implicit prompt), four such adapters
composed (`"residual"`), and one MotionLoRA + CA-LoRA adapter fused. Stock and MIVA calls alternate after warm-up;
the fastest repeat of each is reported and their quotient is the ratio. `--train` adds one training step (flow
matching loss + backward on the adapter only): time and, on CUDA, peak memory.

    python benchmarks/bench_wan.py --size tiny                                   # CPU, test-size model
    python benchmarks/bench_wan.py --size 1.3b --device cuda --dtype bfloat16 --frames 17 81 --train   # GPU

`--size 1.3b` builds a random-weight Wan2.1-T2V-1.3B transformer (dim 1536, 30 layers, 12 heads, ffn 8960,
text 4096) at 480x832 (latent 60x104). Prints a markdown table and writes `benchmarks/results/wan_<size>_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from miva.attention_processors import fuse_miva_adapters, get_miva_adapter_modules, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter
from miva.backbones.wan.tiny import tiny_wan_transformer
from miva.backbones.wan.training import wan_flow_matching_loss

SIZES = {
    "tiny": dict(config={}, latent=(8, 8), text=(16, 32)),
    "1.3b": dict(config=dict(num_attention_heads=12, attention_head_dim=128, text_dim=4096, ffn_dim=8960,
                             num_layers=30, rope_max_seq_len=1024), latent=(60, 104), text=(512, 4096)),
}
ADAPTER = dict(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", ca_mode="implicit")
LORA = dict(use_i2v=False, use_motion_lora=True, use_ca_lora=True)


def build(size: str, device, dtype, variant: str):
    torch.manual_seed(0)
    model = tiny_wan_transformer(**SIZES[size]["config"]).eval()
    if dtype != torch.float32 or device.type != "cpu":  # keeps diffusers quiet about fp32 modules on CPU runs
        model = model.to(device, dtype)
    if variant == "stock":
        return model
    configs = {"one": [ADAPTER], "four": [ADAPTER] * 4, "fused": [LORA]}[variant]
    names = [f"a{i}" for i in range(len(configs))]
    for name, config in zip(names, configs):
        add_wan_adapter(model, name, WanAdapterConfig(**config))
        for module in get_miva_adapter_modules(model, name).values():
            for p in module.parameters():
                p.data.add_(torch.randn_like(p) * 0.02)
    set_miva_adapters(model, names, weights=[1.0 / len(names)] * len(names))
    if variant == "fused":
        fuse_miva_adapters(model)
    return model


def inputs(size: str, frames: int, device, dtype, batch: int = 1):
    latent_frames = (frames - 1) // 4 + 1
    h, w = SIZES[size]["latent"]
    tokens, text_dim = SIZES[size]["text"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, latent_frames, h, w, generator=g).to(device, dtype)
    text = torch.randn(batch, tokens, text_dim, generator=g).to(device, dtype)
    return x, torch.full((batch,), 700.0, device=device), text


def timed(device, fn, *args) -> float:
    """Seconds of `fn(*args)` (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_step(model, x, text) -> None:
    wan_flow_matching_loss(model, x, text, torch.Generator().manual_seed(0)).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--frames", type=int, nargs="+", default=[17])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    stock = build(args.size, device, dtype, "stock")
    rows, results = [], {}
    for frames in args.frames:
        x, t, text = inputs(args.size, frames, device, dtype)
        with torch.no_grad():
            for variant in ("one", "four", "fused"):
                model = build(args.size, device, dtype, variant)
                for _ in range(2):  # warm-up
                    stock(x, t, text), model(x, t, text)
                base, ours = [], []
                for _ in range(args.repeats):
                    base.append(timed(device, stock, x, t, text))
                    ours.append(timed(device, model, x, t, text))
                results[f"{variant}_{frames}"] = dict(stock_s=base, miva_s=ours)
                rows.append((frames, variant, min(base), min(ours), min(ours) / min(base)))
                del model
        if args.train:
            model = build(args.size, device, dtype, "one")
            model.enable_gradient_checkpointing()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = timed(device, train_step, model, x, text)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            results[f"train_{frames}"] = dict(seconds=seconds, peak_gib=peak)
            rows.append((frames, "train step (1 adapter, checkpointing)", float("nan"), seconds, peak))
            del model
    print("| frames | variant | stock s | MIVA s | ratio (train: peak GiB) |\n|---|---|---|---|---|")
    for frames, variant, base, ours, ratio in rows:
        print(f"| {frames} | {variant} | {base:.4f} | {ours:.4f} | {ratio:.2f} |")
    out = Path(__file__).parent / "results" / f"wan_{args.size}_{device.type}.json"
    os.makedirs(out.parent, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), results=results, torch=torch.__version__), indent=2) + "\n")


if __name__ == "__main__":
    main()

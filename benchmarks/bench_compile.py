"""torch.compile and MFU of one denoising step, stock diffusers vs MIVA, as ratios measured in one run.

Same step as `bench_pipeline.py` (one `UNetMotionModel` call on the CFG batch of 2 videos, stock copy vs MIVA
UNet, built by its helpers), for the variants no adapter, one full adapter (cross-frame + MotionLoRA + CA-LoRA) and
2 adapters "residual". Per variant four callables alternate after warm-up: stock eager, MIVA eager, stock compiled,
MIVA compiled (`torch.compile(unet)`, `--backend` inductor by default). Every call is one "denoising step": fresh
latents and a new timestep (999 down), as in the pipeline's loop, so a compiled UNet that guards on anything that
changes per step would recompile and show it. Reported per compiled UNet, from `torch._dynamo.utils.counters`:
graphs and graph breaks at its first call (the compile) and new graphs and breaks over the timed steps
(recompiles). When a UNet breaks, `torch._dynamo.explain` gives the reasons (in the JSON and printed).

Times and ratios as in `bench_pipeline.py` (s/step: fastest wall time; ratio: wall on CUDA, median CPU-time ratio
on a CPU). MFU = FLOPs of one UNet call (counted once in eager by `torch.utils.flop_counter.FlopCounterMode`: the
model FLOPs, also for the compiled call) / s/step / the device's dense fp16/bf16 peak from `PEAK_DENSE_TFLOPS`;
on a CPU, an unknown GPU or fp32 the achieved TFLOP/s are reported and MFU is "n/a" with the reason (on a CPU also
TFLOP per CPU-second of the process, and eager/compiled speedups from CPU time, which other jobs do not dilute).

    python benchmarks/bench_compile.py --size tiny --repeats 3                    # CPU
    python benchmarks/bench_compile.py --size sd15 --device cuda --dtype float16  # 16x320x512, CFG

Prints markdown tables and writes `benchmarks/results/compile_<size>_<device>_<dtype>[_<F>x<H>x<W>].json`.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import (  # noqa: E402
    VARIANTS,
    add_common_arguments,
    configure,
    make_inputs,
    parse_common,
    peak_memory_gib,
    summarise,
    timed,
    write_result,
)
from models import build_unet_motion  # noqa: E402

COMPILE_VARIANTS = ("no adapter", "1 full adapter", "2 adapters residual")
SIDES = ("stock eager", "MIVA eager", "stock compiled", "MIVA compiled")
# (substring of torch.cuda.get_device_name, dense fp16/bf16 tensor-core TFLOP/s without sparsity, from NVIDIA's
# datasheets: half of the "with sparsity" figure). First match wins, so the specific names come first.
PEAK_DENSE_TFLOPS = (
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu` (shapes (B, heads, tokens, dim)), which
    `FlopCounterMode` has no formula for: the same two matmuls as its CUDA kernels."""
    return sdpa_flop_count(query, key, value)


def count_flops(fn) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of one call of `fn` (a matmul of (m, k) by (k, n) = 2mkn FLOPs; convolutions
    and attention likewise; elementwise ops and norms count 0, as in `FlopCounterMode`)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as mode:
        fn()
    return mode.get_total_flops(), {str(op): n for op, n in mode.get_flop_counts()["Global"].items()}


def peak_tflops(device: torch.device, dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense peak TFLOP/s of `device` for `dtype`, where it comes from); (None, why not) when there is none."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, ("CPU: no dense peak we can trust (it depends on the cores, AVX-512/AMX and clocks, and this "
                      "machine's cores are shared)")
    name = torch.cuda.get_device_name(device)
    if dtype not in ("float16", "bfloat16"):
        return None, f"{dtype}: the table has fp16/bf16 tensor-core peaks only"
    for key, peak in PEAK_DENSE_TFLOPS:
        if key in name:
            return peak, f"{key} dense fp16/bf16 datasheet peak"
    return None, f"{name!r} is not in PEAK_DENSE_TFLOPS (pass --peak-tflops)"


def bind(fn, call: tuple[tuple, dict]):
    """`fn` applied to one step's `(args, kwargs)`, as a callable of no arguments."""
    return lambda: fn(*call[0], **call[1])


def dynamo_state() -> tuple[int, int]:
    """(graphs compiled so far, graph breaks so far) in this process, from `torch._dynamo.utils.counters`."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def break_reasons(unet, call) -> list[str]:
    """Why `unet` breaks: `torch._dynamo.explain`'s reasons, each with the innermost user frame."""
    explanation = torch._dynamo.explain(unet)(*call[0], **call[1])
    out = []
    for reason in explanation.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" at {frame.filename}:{frame.lineno} ({frame.name})" if frame else ""
        out.append(f"{reason.reason.strip().splitlines()[0]}{where}")  # the headline; the rest is hints
    return out


class CompiledSide:
    """One compiled UNet with its dynamo record: graphs and breaks at the first call (`compile_*`), new graphs and
    breaks on every later call (`step_*`, recompiles when > 0)."""

    def __init__(self, unet, *, backend: str, mode: str | None):
        self.unet = unet
        self.compiled = torch.compile(unet, backend=backend, mode=mode)
        self.compile_s = self.compile_graphs = self.compile_breaks = None
        self.step_graphs = self.step_breaks = 0

    def __call__(self, *args, **kwargs):
        graphs, breaks = dynamo_state()
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        new_graphs, new_breaks = (now - before for now, before in zip(dynamo_state(), (graphs, breaks)))
        if self.compile_s is None:
            self.compile_s, self.compile_graphs, self.compile_breaks = time.perf_counter() - start, new_graphs, new_breaks
        else:
            self.step_graphs, self.step_breaks = self.step_graphs + new_graphs, self.step_breaks + new_breaks
        return out

    def record(self) -> dict:
        """The dynamo record so far (`broke`: it broke or made more than one graph; `break_reasons` filled later)."""
        broke = bool(self.compile_breaks or self.step_breaks or self.compile_graphs != 1)
        return {"compile_s": self.compile_s, "graphs": self.compile_graphs, "graph_breaks": self.compile_breaks,
                "recompiles": self.step_graphs, "step_graph_breaks": self.step_breaks, "broke": broke,
                "break_reasons": []}


@torch.no_grad()
def run(args) -> dict:
    """Measure every variant of `args.variants` (default `COMPILE_VARIANTS`) without autograd, as in the pipeline;
    returns the JSON-able result."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Stock and every MIVA UNet compile the same `UNetMotionModel.forward`; room for all of them, never a silent
    # fall-back to eager at the limit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    peak, peak_source = peak_tflops(device, args.dtype, args.peak_tflops)
    base, text_dim = build_unet_motion(args.size)
    stock = base.to(device, dtype)
    sample, _, text = make_inputs(text_dim, args.frames, args.height, args.width, device, dtype)
    generator = torch.Generator().manual_seed(1)
    steps = iter(range(10**6))

    def step_args():
        """One denoising step's UNet arguments: fresh latents, the next timestep (999, 979, ... as with 50 steps)."""
        t = torch.tensor(999 - 20 * (next(steps) % 50), device=device)
        return (torch.randn(sample.shape, generator=generator).to(device, dtype), t), {"encoder_hidden_states": text}

    first = step_args()
    stock_flops, stock_ops = count_flops(bind(stock, first))
    stock_compiled = CompiledSide(stock, backend=args.backend, mode=args.mode)
    rows = []
    for variant in args.variants or COMPILE_VARIANTS:
        ours = copy.deepcopy(stock)
        configure(ours, VARIANTS[variant], variant)
        ours.to(device, dtype)
        ours_flops, ours_ops = count_flops(bind(ours, first))
        sides = dict(zip(SIDES, (stock, ours, stock_compiled, CompiledSide(ours, backend=args.backend, mode=args.mode))))
        for _ in range(args.warmup):  # the compiled sides compile at their first call
            for fn in sides.values():
                fn(*first[0], **first[1])
        times = {side: [] for side in SIDES}
        for _ in range(args.repeats):
            call = step_args()
            for side, fn in sides.items():
                times[side].append(timed(bind(fn, call), device))
        row = {"variant": variant, "stock_flops": stock_flops, "miva_flops": ours_flops,
               "stock_flops_by_op": stock_ops, "miva_flops_by_op": ours_ops,
               "eager": summarise(variant, times["stock eager"], times["MIVA eager"], cpu_clock=device.type == "cpu"),
               "compiled": summarise(variant, times["stock compiled"], times["MIVA compiled"],
                                     cpu_clock=device.type == "cpu"),
               "stock_dynamo": stock_compiled.record(), "miva_dynamo": sides["MIVA compiled"].record()}
        for side in ("stock compiled", "MIVA compiled"):
            row[f"{side.replace(' ', '_').lower()}_peak_gib"] = peak_memory_gib(bind(sides[side], first), device)
        row["mfu"] = mfu_rows(row, peak, cpu_clock=device.type == "cpu")
        rows.append(row)
        print_row(row)
        ours = sides = None  # free this variant's UNet before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    explain_breaks(rows, stock, first)
    return {
        "size": args.size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype, "frames": args.frames, "height": args.height, "width": args.width, "cfg_batch": 2,
        "repeats": args.repeats, "warmup": args.warmup, "backend": args.backend, "mode": args.mode,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "peak_tflops": peak, "peak_source": peak_source, "rows": rows,
    }


def explain_breaks(rows: list[dict], stock, call) -> None:
    """Fill `break_reasons` of every UNet that broke, after all timing (`torch._dynamo.explain` resets dynamo, which
    would make the next compiled call recompile); a MIVA UNet is rebuilt from `stock` for it."""
    for row in rows:
        if row["stock_dynamo"]["broke"]:
            row["stock_dynamo"]["break_reasons"] = break_reasons(stock, call)
        if row["miva_dynamo"]["broke"]:
            ours = copy.deepcopy(stock)
            configure(ours, VARIANTS[row["variant"]], row["variant"])
            row["miva_dynamo"]["break_reasons"] = break_reasons(ours, call)
        for side in ("stock", "miva"):
            for reason in row[f"{side}_dynamo"]["break_reasons"]:
                print(f"{row['variant']}: {side} breaks: {reason}", flush=True)


def mfu_rows(row: dict, peak: float | None, cpu_clock: bool) -> list[dict]:
    """Achieved TFLOP/s (per fastest wall second) and MFU (None without a peak) of the four sides of one variant;
    with `cpu_clock` also TFLOP per CPU-second of the process (fastest; all threads), which other processes on a
    shared CPU do not dilute."""
    out = []
    for side, flops, summary, key in (("stock eager", row["stock_flops"], row["eager"], "stock"),
                                      ("MIVA eager", row["miva_flops"], row["eager"], "miva"),
                                      ("stock compiled", row["stock_flops"], row["compiled"], "stock"),
                                      ("MIVA compiled", row["miva_flops"], row["compiled"], "miva")):
        seconds = summary[f"{key}_s_per_step"]
        tflops = flops / seconds / 1e12
        per_cpu_s = flops / min(summary[f"{key}_cpu_times_s"]) / 1e12 if cpu_clock else None
        out.append({"side": side, "gflop": flops / 1e9, "s_per_step": seconds, "tflops": tflops,
                    "tflop_per_cpu_s": per_cpu_s, "mfu": tflops / peak if peak else None})
    return out


def compile_speedup(row: dict, side: str, cpu_clock: bool) -> float:
    """Eager over compiled time of `side` ("stock" / "miva"): the quotient of the fastest wall times, or on a CPU the
    median over rounds of the CPU-time quotient (eager and compiled ran in the same round)."""
    eager, compiled = row["eager"], row["compiled"]
    if not cpu_clock:
        return eager[f"{side}_s_per_step"] / compiled[f"{side}_s_per_step"]
    return statistics.median(e / c for e, c in zip(eager[f"{side}_cpu_times_s"], compiled[f"{side}_cpu_times_s"]))


def print_row(row: dict) -> None:
    eager, compiled, ours = row["eager"], row["compiled"], row["miva_dynamo"]
    print(f"{row['variant']:22s} eager {eager['stock_s_per_step']:.4f}/{eager['miva_s_per_step']:.4f}s "
          f"({eager['ratio']:.3f}x)  compiled {compiled['stock_s_per_step']:.4f}/{compiled['miva_s_per_step']:.4f}s "
          f"({compiled['ratio']:.3f}x)  MIVA graphs {ours['graphs']} breaks {ours['graph_breaks']} "
          f"recompiles {ours['recompiles']}", flush=True)


def markdown(result: dict) -> str:
    cpu = result["device"] == "cpu"
    mode = f", mode {result['mode']}" if result["mode"] else ""
    lines = [f"`{result['size']}` | {result['device_name']} ({result['threads']} threads) | {result['dtype']} | "
             f"{result['frames']}x{result['height']}x{result['width']}, CFG batch 2 | torch.compile backend "
             f"{result['backend']}{mode} | {result['repeats']} rounds of 4 (s/step: fastest wall time; ratio: "
             f"{'median CPU-time ratio' if cpu else 'wall'})",
             "",
             "| variant | stock compiled s/step | MIVA compiled s/step | compiled ratio | eager ratio | eager / "
             "compiled stock, MIVA | graphs stock/MIVA | graph breaks stock/MIVA | recompiles over steps stock/MIVA | "
             "compile s stock/MIVA |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        eager, compiled, s, m = row["eager"], row["compiled"], row["stock_dynamo"], row["miva_dynamo"]
        lines.append(f"| {row['variant']} | {compiled['stock_s_per_step']:.4f} | {compiled['miva_s_per_step']:.4f} | "
                     f"{compiled['ratio']:.3f}x | {eager['ratio']:.3f}x | "
                     f"{compile_speedup(row, 'stock', cpu):.2f}x, {compile_speedup(row, 'miva', cpu):.2f}x | "
                     f"{s['graphs']}/{m['graphs']} | "
                     f"{s['graph_breaks'] + s['step_graph_breaks']}/{m['graph_breaks'] + m['step_graph_breaks']} | "
                     f"{s['recompiles']}/{m['recompiles']} | {s['compile_s']:.0f}/{m['compile_s']:.0f} |")
    peak = result["peak_tflops"]
    lines += ["", f"MFU: peak {f'{peak:.1f} TFLOP/s' if peak else 'n/a'} ({result['peak_source']}); FLOPs counted "
              "once in eager (FlopCounterMode) and used for the compiled call too.", "",
              f"| variant | side | GFLOP/step | s/step | TFLOP/s |{' TFLOP/CPU-s |' if cpu else ''} MFU |",
             f"|---|---|---|---|---|{'---|' if cpu else ''}---|"]
    for row in result["rows"]:
        for m in row["mfu"]:
            mfu = f"{100 * m['mfu']:.1f}%" if m["mfu"] is not None else "n/a"
            per_cpu_s = f" {m['tflop_per_cpu_s']:.3f} |" if cpu else ""
            lines.append(f"| {row['variant']} | {m['side']} | {m['gflop']:.2f} | {m['s_per_step']:.4f} | "
                         f"{m['tflops']:.3f} |{per_cpu_s} {mfu} |")
    reasons = [(row["variant"], side, r) for row in result["rows"] for side in ("stock", "miva")
               for r in row[f"{side}_dynamo"]["break_reasons"]]
    if reasons:
        lines += ["", "Graph breaks (`torch._dynamo.explain`):"] + [f"- {v}, {s}: {r}" for v, s, r in reasons]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, COMPILE_VARIANTS)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager / aot_eager to check "
                        "graph breaks and recompiles without code generation)")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default: its default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak of a device not in the table")
    parser.set_defaults(repeats=5)
    args = parse_common(parser, COMPILE_VARIANTS, argv)
    result = run(args)
    print(markdown(result))
    write_result(result, args, "compile")
    return result


if __name__ == "__main__":
    main()

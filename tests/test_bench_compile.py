"""`benchmarks/bench_compile.py` on the tiny UNet on the CPU: its FLOP count sees exactly the stock work when no
adapter is active and more with one, the compiled no-adapter step has one graph, no break and no recompile over
denoising steps, and the MFU peak table answers only for known GPUs. The compile uses dynamo's `eager` backend
(the trace and the guards are what is checked; inductor's C++ code generation would take minutes here), ~30 s."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compile.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_compile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its siblings
    return module


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_flops_equal_stock_without_adapter_and_grow_with_one(bench):
    """FlopCounterMode on one UNet call (CFG batch, 4 frames 32x32): MIVA with no adapter does the stock matmuls,
    convolutions and attentions (attention counted on the CPU kernel too); one full adapter adds its branch and
    LoRA deltas, 2 residual adapters more again."""
    stock, text_dim = bench.build_unet_motion("tiny")
    sample, t, text = bench.make_inputs(text_dim, 4, 32, 32, torch.device("cpu"), torch.float32)
    call = ((sample, t), {"encoder_hidden_states": text})
    flops = {}
    with torch.no_grad():
        stock_flops, stock_ops = bench.count_flops(bench.bind(stock, call))
        for variant in bench.COMPILE_VARIANTS:
            ours = bench.copy.deepcopy(stock)
            bench.configure(ours, bench.VARIANTS[variant], variant)
            flops[variant], ops = bench.count_flops(bench.bind(ours, call))
            if variant == "no adapter":
                assert ops == stock_ops
    assert stock_ops["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    assert flops["no adapter"] == pytest.approx(stock_flops, rel=1e-6)
    assert flops["1 full adapter"] > 1.01 * stock_flops
    assert flops["2 adapters residual"] > flops["1 full adapter"]


def test_compiled_step_without_adapter_has_one_graph_no_break_no_recompile(bench, fresh_dynamo, tmp_path):
    """The script end to end: the stock and the MIVA UNet each compile into one graph at the first call and never
    again over the following steps (new latents, new timestep each); on a CPU MFU is n/a, TFLOP/s are reported."""
    result = bench.main(["--size", "tiny", "--frames", "4", "--height", "32", "--width", "32", "--backend", "eager",
                         "--variants", "no adapter", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)])
    (row,) = result["rows"]
    for side in ("stock_dynamo", "miva_dynamo"):
        record = row[side]
        assert (record["graphs"], record["graph_breaks"], record["recompiles"], record["step_graph_breaks"]) == (
            1, 0, 0, 0), (side, record)
        assert not record["broke"] and record["break_reasons"] == []
    assert row["stock_flops"] == row["miva_flops"]
    assert result["peak_tflops"] is None and "CPU" in result["peak_source"]
    assert all(m["mfu"] is None and m["tflops"] > 0 for m in row["mfu"])
    assert (tmp_path / "compile_tiny_cpu_float32_4x32x32.json").is_file()
    assert torch.is_grad_enabled()  # the benchmark leaves the global autograd mode alone


@pytest.mark.parametrize(("name", "dtype", "peak"), [
    ("NVIDIA H200", "float16", 989.4),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "float16", 756.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA H200", "float32", None),
    ("NVIDIA GeForce GTX 1080", "float16", None),
])
def test_peak_table(bench, monkeypatch, name, dtype, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    value, source = bench.peak_tflops(torch.device("cuda"), dtype)
    assert value == peak and source
    assert bench.peak_tflops(torch.device("cpu"), "float16")[0] is None
    assert bench.peak_tflops(torch.device("cuda"), dtype, override=100.0) == (100.0, "--peak-tflops")


class _Breaks(torch.nn.Module):
    def forward(self, x):
        x = x.sin()
        torch._dynamo.graph_break()
        return x.cos()


def test_counters_see_breaks_and_recompiles(bench, fresh_dynamo):
    """The zeros above are not vacuous: a module with a graph break shows 2 graphs and 1 break at its compile, none
    on the next call of the same shape, and a recompile on a new shape; `explain` names the break."""
    side = bench.CompiledSide(_Breaks(), backend="eager", mode=None)
    side(torch.randn(3))
    side(torch.randn(3))
    record = side.record()
    assert (record["graphs"], record["graph_breaks"], record["recompiles"], record["broke"]) == (2, 1, 0, True)
    side(torch.randn(5, 2))
    assert side.record()["recompiles"] > 0
    (reason,) = bench.break_reasons(_Breaks(), ((torch.randn(3),), {}))
    assert "graph_break" in reason and __file__ in reason

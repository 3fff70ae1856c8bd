"""xformers: the attention backend switch of the MIVA processors, batch splitting, and the pipeline switch.

The xformers layout and chunking run with a fake attention function; which calls reach xformers is checked with a
spy and a CPU tensor that reports `is_cuda`; the pipeline switch is checked on CPU (a clear error) and with
diffusers' own switch stubbed. Only the numerical comparison of real xformers kernels with SDPA needs CUDA and
xformers, and is skipped (with that reason) without them.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from diffusers import AnimateDiffPipeline
from diffusers.models.attention_processor import Attention, XFormersAttnProcessor

from miva import MIVAAdapterConfig, MIVAPipeline
from miva.attention_processors import (
    MIVACrossAttnProcessor,
    MIVASelfAttnProcessor,
    MIVATemporalAttnProcessor,
    get_miva_context,
    install_miva_processors,
    set_miva_attention_backend,
)
from miva.attention_processors.attention_utils import (
    XFORMERS_MAX_BATCH,
    attend,
    batch_chunked,
    check_xformers_usable,
    xformers_attention,
)
from miva.attention_processors.base import MIVAProcessorBase
from miva.tiny import tiny_unet_motion

FULL = dict(use_i2v=True, use_motion_lora=True, use_ca_lora=True)


def fake_memory_efficient_attention(calls):
    """xformers' contract, (batch, tokens, heads, head_dim) in and out, written with SDPA; records batch sizes."""

    def fn(q, k, v):
        calls.append(q.shape[0])
        assert q.dim() == 4 and q.stride(-1) == 1 and k.shape[2] == q.shape[2]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return fn


def test_batch_chunked_splits_above_the_limit():
    calls = []

    def fn(a, b):
        calls.append((a.shape[0], b.shape[0]))
        return a * 2 + b

    a, b = torch.randn(7, 3), torch.randn(7, 3)
    out = batch_chunked(fn, a, b, max_batch=3)
    assert calls == [(3, 3), (3, 3), (1, 1)]
    torch.testing.assert_close(out, a * 2 + b, atol=0, rtol=0)
    calls.clear()
    batch_chunked(fn, a, b, max_batch=7)
    assert calls == [(7, 7)]  # at the limit: one call
    with pytest.raises(ValueError, match="max_batch=0 must be a positive"):
        batch_chunked(fn, a, b, max_batch=0)
    with pytest.raises(ValueError, match=r"one batch size, got \[\(7, 3\), \(6, 3\)\]"):
        batch_chunked(fn, a, b[:6], max_batch=3)
    assert XFORMERS_MAX_BATCH == 65535


@pytest.mark.parametrize("q_tokens, kv_tokens", [(10, 10), (12, 77)])
def test_xformers_layout_and_chunks_equal_sdpa(q_tokens, kv_tokens):
    torch.manual_seed(0)
    batch, heads, channels = 9, 4, 32
    query = torch.randn(batch, q_tokens, channels)
    key, value = torch.randn(batch, kv_tokens, channels), torch.randn(batch, kv_tokens, channels)
    expected = attend(query, key, value, heads)
    calls = []
    out = xformers_attention(query, key, value, heads, attention_fn=fake_memory_efficient_attention(calls), max_batch=4)
    assert calls == [4, 4, 1]
    assert out.shape == (batch, q_tokens, channels)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports `is_cuda`: lets the routing decision of `attend` be tested without a GPU."""

    @property
    def is_cuda(self):
        return True


def test_attend_routes_cuda_tensors_without_mask_to_xformers(monkeypatch):
    """`attend(backend="xformers")` calls xformers only for CUDA tensors without a mask; CPU tensors and masked calls
    go to SDPA (xformers has no CPU kernels). The routing is checked with a spy, not by comparing numbers."""
    import miva.attention_processors.attention_utils as utils

    calls = []

    def spy(query, key, value, heads, attention_op=None):
        calls.append((type(query), heads, attention_op))
        return torch.zeros_like(query)

    monkeypatch.setattr(utils, "xformers_attention", spy)
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 5, 8, generator=generator) for _ in range(3))
    op = object()
    cpu = utils.attend(query, key, value, 2, backend="xformers", attention_op=op)
    assert calls == [] and cpu.abs().max() > 0  # CPU: SDPA ran
    cuda_like = [t.as_subclass(_CudaLooking) for t in (query, key, value)]
    assert cuda_like[0].is_cuda
    utils.attend(*cuda_like, 2, backend="xformers", attention_op=op)
    assert calls == [(_CudaLooking, 2, op)]
    utils.attend(*cuda_like, 2, backend="sdpa", attention_op=op)  # the default backend never reaches xformers
    mask = torch.zeros(2, 2, 5, 5).as_subclass(_CudaLooking)
    utils.attend(*cuda_like, 2, attention_mask=mask, backend="xformers", attention_op=op)  # masks: SDPA
    assert len(calls) == 1


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("xformers") is None,
    reason="needs a CUDA device and xformers (the xformers kernels exist only on CUDA)",
)
def test_xformers_backend_on_cuda_equals_sdpa():
    unet = tiny_unet_motion(seed=0).to("cuda")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 4, 8, 8, generator=generator).cuda()
    text = torch.randn(4, 77, 32, generator=generator).cuda()
    install_miva_processors(unet)
    with torch.no_grad():
        expected = unet(sample, 500, encoder_hidden_states=text).sample
        set_miva_attention_backend(unet, "xformers")
        out = unet(sample, 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_attention_backend_switch_and_errors():
    unet = tiny_unet_motion(seed=0)
    context = install_miva_processors(unet)
    assert context.attention_backend == "sdpa"
    assert install_miva_processors(unet, attention_backend="xformers") is context
    assert context.attention_backend == "xformers" and context.attention_op is None
    op = object()
    set_miva_attention_backend(unet, "xformers", attention_op=op)
    assert context.attention_op is op
    set_miva_attention_backend(unet, "sdpa", attention_op=op)
    assert context.attention_backend == "sdpa" and context.attention_op is None
    with pytest.raises(ValueError, match=r"attention_backend='flash' is not one of \['sdpa', 'xformers'\]"):
        set_miva_attention_backend(unet, "flash")
    with pytest.raises(ValueError, match="attention_backend='xformer' is not one of"):
        install_miva_processors(unet, attention_backend="xformer")


def test_processors_route_attention_through_the_context_backend(monkeypatch):
    """Every attention call of the three processors goes through `MIVAProcessorBase.attend`, which passes the
    context's backend and op on (so on CUDA all of them reach xformers)."""
    seen = []
    import miva.attention_processors.base as base

    real = base.attend

    def spy(query, key, value, heads, attention_mask=None, backend="sdpa", attention_op=None):
        seen.append((backend, attention_op))
        return real(query, key, value, heads, attention_mask=attention_mask)

    monkeypatch.setattr(base, "attend", spy)
    unet = tiny_unet_motion(seed=0)
    from miva.attention_processors import add_miva_adapter, set_miva_adapters

    install_miva_processors(unet)
    add_miva_adapter(unet, "a", MIVAAdapterConfig(**FULL))
    set_miva_adapters(unet, ["a"])
    op = object()
    set_miva_attention_backend(unet, "xformers", attention_op=op)
    with torch.no_grad():
        unet(torch.randn(1, 4, 4, 8, 8), 500, encoder_hidden_states=torch.randn(4, 77, 32))
    # 44 layers + one cross-frame attention per spatial attn1 (11), all on the chosen backend.
    assert len(seen) == 44 + 11
    assert set(seen) == {("xformers", op)}


@pytest.fixture
def pipe(components):
    pipe = MIVAPipeline(**components)
    pipe.add_adapter("w", MIVAAdapterConfig(**FULL))
    return pipe


def test_enable_xformers_on_cpu_raises_a_clear_error(pipe):
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match="xformers needs a CUDA device; this pipeline is on cpu"):
        pipe.enable_xformers_memory_efficient_attention()
    after = pipe.unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())  # nothing was swapped
    assert get_miva_context(pipe.unet).attention_backend == "sdpa"
    with pytest.raises(ValueError, match="this pipeline is on cpu"):
        check_xformers_usable("cpu")


def test_enable_xformers_keeps_processors_and_adapters(pipe, monkeypatch):
    """With diffusers' switch stubbed (it needs CUDA and xformers), our override puts the MIVA processors back with
    their adapters and routes them through xformers; disabling returns to SDPA."""

    def stock_switch(self, attention_op=None):  # what diffusers does on CUDA: xformers processors everywhere
        for module in self.unet.modules():
            if isinstance(module, Attention):
                module.set_processor(XFormersAttnProcessor(attention_op=attention_op))

    monkeypatch.setattr(AnimateDiffPipeline, "enable_xformers_memory_efficient_attention", stock_switch)
    monkeypatch.setattr("miva.pipelines.processor_swaps.check_xformers_usable", lambda device: None)
    before = dict(pipe.unet.attn_processors)
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items() if ".adapters.w." in k}
    op = object()
    pipe.enable_xformers_memory_efficient_attention(attention_op=op)
    after = pipe.unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())
    kinds = {type(p) for p in after.values()}
    assert kinds == {MIVASelfAttnProcessor, MIVACrossAttnProcessor, MIVATemporalAttnProcessor}
    assert all("w" in p.adapters for p in after.values() if isinstance(p, MIVAProcessorBase) and p.adapters)
    new_state = pipe.unet.state_dict()
    assert state and all(torch.equal(new_state[k], v) for k, v in state.items())
    context = get_miva_context(pipe.unet)
    assert context.attention_backend == "xformers" and context.attention_op is op
    pipe.disable_xformers_memory_efficient_attention()
    assert context.attention_backend == "sdpa" and context.attention_op is None
    assert all(pipe.unet.attn_processors[name] is processor for name, processor in before.items())

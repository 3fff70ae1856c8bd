"""torch.compile: the UNet with MIVA processors and active adapters traces into one graph and matches eager.

The recorders that feed the per-call state (`CallState`) sit on submodules and exist only during a call; the two hooks
on the UNet itself only open a call for a bare forward, and dynamo runs them outside the graph. The processors
branch only on Python values (weights, shapes, modes), never on tensor values. Checked on the
tiny UNet (8x8 latents, 4 frames) in two traces of ~25 s each: one adapter with the cross-frame branch
(`first_prev`, adaptive weight), MotionLoRA, motion embedding and CA-LoRA with Q-LoRA (autograd path, through
`torch._dynamo.explain`); and two "residual" adapters with spatiotemporal Q (r=2, rope_3d), each on its own prompt
(inference path, through `torch.compile(fullgraph=True)`, compared with eager).
"""

import pytest
import torch

from miva.attention_processors import (
    MIVAAdapterConfig,
    add_miva_adapter,
    get_miva_adapter_modules,
    install_miva_processors,
    miva_call,
    set_miva_adapters,
)
from miva.tiny import tiny_unet_motion

FRAMES, TOKENS, TEXT_DIM = 4, 77, 32
STQ = dict(q_downsample=True, q_downsample_ratio=2, ca_pe_mode="rope_3d")
LORA = dict(use_motion_lora=True, use_ca_lora=True, motion_lora_rank=4, ca_lora_rank=4)
ADAPTERS = {
    "full": dict(LORA, use_i2v=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", use_motion_embed=True,
                 use_q_lora=True),
    "stq_a": dict(LORA, use_i2v=True, sa_mode="first", use_q_lora=True, use_motion_lora=False, **STQ),
    "stq_b": dict(use_ca_lora=True, ca_lora_rank=4, use_i2v=False, use_motion_lora=False, use_motion_embed=True, **STQ),
}


def _unet(names: list[str]):
    """The tiny UNet with only `names` added (every adapter's modules lengthen the trace: diffusers'
    `ModelMixin.dtype`, read in each forward, walks all submodules), randomised and active."""
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    generator = torch.Generator().manual_seed(0)
    for name in names:
        add_miva_adapter(unet, name, MIVAAdapterConfig(**ADAPTERS[name]))
        with torch.no_grad():
            for module in get_miva_adapter_modules(unet, name).values():
                for parameter in module.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return unet


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(prompts: int = 1):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, FRAMES, 8, 8, generator=generator)
    text = torch.randn(FRAMES, TOKENS * prompts, TEXT_DIM, generator=generator)
    return sample, torch.tensor(700), text


def test_full_adapter_has_no_graph_break():
    """`torch._dynamo.explain` on the autograd (training) path: one graph, no break."""
    unet = _unet(["full"])
    set_miva_adapters(unet, ["full"])
    sample, timestep, text = _inputs()
    explanation = torch._dynamo.explain(unet)(sample, timestep, encoder_hidden_states=text)
    assert explanation.break_reasons == []
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_fullgraph_compile_matches_eager_with_two_residual_adapters_and_prompts():
    """`torch.compile(fullgraph=True)` (which raises on any break) on the inference path of two "residual"
    adapters, each on its own prompt, with weights that need the base branch; equal to eager."""
    unet = _unet(["stq_a", "stq_b"])
    set_miva_adapters(unet, ["stq_a", "stq_b"], [0.6, 0.3], parallel_mode="residual")
    sample, timestep, text = _inputs(prompts=3)
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(unet, fullgraph=True, backend=backend)
    with torch.no_grad():
        with miva_call(unet, adapter_prompts=True):  # the call state (its hooks' writes included) traces in-graph
            eager = unet(sample, timestep, encoder_hidden_states=text).sample
            out = compiled(sample, timestep, encoder_hidden_states=text).sample
        with miva_call(unet, adapter_prompts=True):  # a second call registers its own recorders: no new trace
            unet(sample, timestep, encoder_hidden_states=text)  # (the same recorded state as the first call's)
            again = compiled(sample, timestep, encoder_hidden_states=text).sample
        set_miva_adapters(unet, [])
        base = unet(sample, timestep, encoder_hidden_states=text[:, :TOKENS]).sample
    assert len(graphs) == 1
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    assert (eager - base).abs().max() > 1e-3  # the adapters are really in the graph
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)

"""Adapter masks and schedules on Wan (`MIVAWanPipeline(adapter_masks=..., adapter_schedules=...)`,
docs/regions.md): a binary mask confines each part (MotionLoRA at attn1, CA-LoRA and the implicit prompt at attn2,
the cross-frame branch) to its tokens on a non-square token grid, in both parallel modes; the exact identities
through the pipeline with CFG and per-adapter prompts; the token grid the hooks record."""

import pytest
import torch
from wan_helpers import randomize, wan_inputs

from miva.attention_processors import get_miva_adapter_modules, miva_call
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.tiny import tiny_wan_components
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
from miva.tiny import make_test_image

FULL = dict(use_i2v=True, use_motion_lora=True, motion_lora_rank=4, use_ca_lora=True, use_q_lora=False,
            ca_lora_rank=4, ca_lora_scale=None)
IMPLICIT = dict(use_i2v=False, ca_mode="implicit")
GRID = (2, 2, 3)  # token frames, h, w: non-square
CALL = dict(num_frames=5, height=32, width=48, num_inference_steps=2, max_sequence_length=16, output_type="latent")


def pipe_with(configs, weights, mode="residual"):
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.set_progress_bar_config(disable=True)
    for i, (name, kwargs) in enumerate(configs):
        pipe.add_adapter(name, WanAdapterConfig(**kwargs), activate=False)
        for module in get_miva_adapter_modules(pipe.transformer, name).values():
            randomize(module, seed=i)
    pipe.set_adapters([name for name, _ in configs], weights=weights, parallel_mode=mode)
    return pipe


def left_mask():
    """(4, 6) -> the (2, 3) token level by 2x2 area means: 1 on token column 0, else 0."""
    mask = torch.zeros(4, 6)
    mask[:, :2] = 1.0
    return mask


INSIDE = (torch.arange(GRID[0] * GRID[1] * GRID[2]) % GRID[2] == 0)[None, :, None]  # frame-major tokens


@torch.no_grad()
@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("layer", ["attn1", "attn2", "implicit", "cross_frame"])
def test_a_binary_mask_confines_each_part(layer, mode):
    pipe = pipe_with([("i", IMPLICIT)] if layer == "implicit" else [("a", FULL)], [0.7], mode)
    model, name = pipe.transformer, "i" if layer == "implicit" else "a"
    block = model.blocks[1]
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(2, 12, 24, generator=g), torch.randn(2, 7, 24, generator=g)

    def call(active, **gates):
        pipe.set_adapters(active, weights=[0.7] * len(active), parallel_mode=mode)
        with miva_call(model, num_frames=GRID[0], grid=GRID, **gates):
            if layer == "attn1":
                return block.attn1(x, None, None, None)
            if layer == "cross_frame":
                out = block.attn1.processor.cross_frame(x)
                return torch.zeros_like(x) if out is None else out
            return block.attn2(x, text, None, None)

    full, base = call([name]), call([])
    masked = call([name], adapter_masks={name: left_mask()})
    assert (full - base).abs().max() > 1e-3
    torch.testing.assert_close(masked, torch.where(INSIDE, full, base), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_the_hooks_record_the_token_grid():
    pipe = pipe_with([("a", FULL)], [1.0])
    latents, timestep, text = wan_inputs(frames=3, size=4)
    latents = torch.cat([latents, latents[..., :2]], dim=-1)  # (1, 16, 3, 4, 6): non-square
    with miva_call(pipe.transformer) as state:
        pipe.transformer(latents, timestep[:1], text)
        assert state.forward.grid == (3, 2, 3)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["residual", "weights"])
def test_exact_identities_with_cfg_and_batch_prompt(mode):
    pipe = pipe_with([("a", FULL), ("b", FULL)], [0.6, 0.3], mode)
    image = make_test_image(48, 32)
    extra = dict(guidance_scale=3.0, negative_prompt="blur", batch_prompt=["a dog", "a river"])

    def run(**kw):
        return pipe(image=image, prompt="a cat", generator=torch.Generator().manual_seed(0), **CALL, **kw).frames

    both = run(**extra)
    mask = torch.zeros(32, 48)
    mask[:, :24] = 1.0
    assert (run(adapter_masks={"a": mask}, **extra) - both).abs().max() > 1e-4
    assert torch.equal(run(adapter_masks={"a": torch.ones(5, 32, 48)}, **extra), both)
    assert torch.equal(run(adapter_schedules={"b": {"frames": [1.0] * 5, "steps": [1.0, 1.0]}}, **extra), both)
    zero = run(adapter_masks={"a": torch.zeros(32, 48)}, **extra)
    pipe.set_adapters(["b"], weights=[0.3], parallel_mode=mode)
    only_b = run(**{**extra, "batch_prompt": ["a river"]})
    assert torch.equal(zero, only_b)
    pipe.set_adapters(["a", "b"], weights=[1.0, 0.3], parallel_mode=mode)
    assert torch.equal(run(adapter_schedules={"a": [0.6] * 5}, **extra), both)
    with pytest.raises(ValueError, match=r"^adapter_schedules\['a'\] has 2 values but the call has 5 frames"):
        run(adapter_schedules={"a": [1.0, 0.5]})


@torch.no_grad()
def test_step_schedule_equals_switching_the_adapter_off_by_hand():
    pipe = pipe_with([("a", FULL), ("b", FULL)], [0.6, 0.3])
    image = make_test_image(48, 32)

    def run(**kw):
        return pipe(image=image, prompt="a cat", generator=torch.Generator().manual_seed(0), **CALL, **kw).frames

    scheduled = run(adapter_schedules={"a": {"steps": [1.0, 0.0]}})

    def switch(p, i, t, tensors):  # after step 0, "a" leaves the active adapters (the reference, by hand)
        p.set_adapters(["b"], weights=[0.3])
        return tensors

    by_hand = run(callback_on_step_end=switch)
    pipe.set_adapters(["a", "b"], weights=[0.6, 0.3])
    assert torch.equal(scheduled, by_hand)
    assert (scheduled - run()).abs().max() > 1e-4

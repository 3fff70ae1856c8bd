"""Per-adapter masks and schedules (`adapter_masks` / `adapter_schedules`, docs/regions.md): the normalisation in
`gates.py` against references written here, and at processor level that a binary mask confines an adapter's effect
to its tokens (the masked tokens equal the adapter's own output, the others the output without it) at spatial self-
and cross-attention and temporal attention, in both parallel modes, on non-square levels."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import Attention
from processor_harness import activate, add_standalone_adapter, standalone_processor

from miva.attention_processors import (
    MIVAAdapterConfig,
    MIVACrossAttnProcessor,
    MIVASelfAttnProcessor,
    MIVATemporalAttnProcessor,
    miva_call,
)
from miva.attention_processors.gates import CallGates, temporal_level

DIM, TEXT_DIM, HEADS = 32, 24, 4
SIZE = (4, 6)  # a non-square level: sizes must come from what the call recorded
MASK_SIZE = (8, 12)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _left(columns=3, size=MASK_SIZE):
    """A binary mask `size` that is 1 on the level's first `columns` columns (the level is half the mask size)."""
    mask = torch.zeros(size)
    mask[:, : 2 * columns] = 1.0
    return mask


# ------------------------------------------------------------------------------------------ normalisation


def test_area_downsampling_of_a_non_square_mask_equals_block_means():
    mask = torch.rand(64, 96, generator=_gen(0))
    gates = CallGates({"a": mask}, None, active=["a"], num_frames=2, num_steps=None)
    reference = mask.view(8, 8, 12, 8).mean(dim=(1, 3))  # each 8x8 pixel block -> its latent token
    torch.testing.assert_close(gates.level("a", 2, (8, 12))[0].float(), reference)
    assert gates.level("a", 2, (4, 6)).shape == (1, 4, 6)  # (H, W): one gate for all frames
    up = gates.level("a", 2, (128, 192))  # a level larger than the mask: bilinear, stays in [0, 1]
    assert up.shape == (1, 128, 192) and 0 <= float(up.min()) and float(up.max()) <= 1


def test_pil_masks_read_luminance_and_numpy_masks_are_accepted():
    red = PIL.Image.new("RGB", (6, 4), (255, 0, 0))
    red.paste((255, 255, 255), (0, 0, 3, 4))
    gates = CallGates({"a": red, "b": np.eye(4, 6, dtype=np.float64)}, None, active=["a", "b"], num_frames=1,
                      num_steps=None)
    expected = torch.full((4, 6), 76 / 255)  # ITU-R 601 luma of pure red: round(0.299 * 255) = 76
    expected[:, :3] = 1.0
    torch.testing.assert_close(gates.fields["a"][0].float(), expected)
    torch.testing.assert_close(gates.fields["b"][0].float(), torch.eye(4, 6))


def test_constants_fold_into_the_weight_and_step_factors_follow_the_step():
    schedules = {"a": [0.5, 0.5], "b": {"frames": [1.0, 0.0]}, "c": {"steps": [1.0, 0.25, 0.0]}}
    gates = CallGates({"a": torch.full((4, 4), 0.8, dtype=torch.float64), "d": torch.ones(2, 3, 3)}, schedules, active=list("abcd"),
                      num_frames=2, num_steps=3)
    assert gates.constants == {"a": 0.4, "d": 1.0} and set(gates.fields) == {"b"}
    assert [gates.scale("c") for gates.step in range(3)] == [1.0, 0.25, 0.0]
    assert gates.scale("a") == 0.4 and gates.scale("b") == 1.0
    torch.testing.assert_close(gates.level("b", 2, (2, 2)).float(), torch.tensor([1.0, 0.0]).view(2, 1, 1).expand(2, 2, 2))
    assert CallGates({"a": None}, {"a": None}, active=["a"], num_frames=2, num_steps=3).names == set()  # None: none
    calls = []
    CallGates(None, {"a": lambda f: calls.append(f) or f / 2}, active=["a"], num_frames=3, num_steps=None)
    assert calls == [0, 1, 2]


def test_layouts_spatial_temporal_and_dit_tokens():
    field = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3) / 12  # (frames, h, w), all distinct
    gates = CallGates({"a": field}, None, active=["a"], num_frames=2, num_steps=None)
    x = torch.zeros(1)
    spatial = gates.spatial("a", frames=2, size=(2, 3), rows=4, window=None, like=x)  # (videos*frames, h*w, 1)
    assert spatial.shape == (4, 6, 1)
    for row in range(4):
        torch.testing.assert_close(spatial[row, :, 0], field[row % 2].flatten())  # `like` x: float32
    chunk = gates.spatial("a", frames=2, size=(2, 3), rows=2, window=(1, 3), like=x)  # split inference's rows 1..2
    torch.testing.assert_close(chunk, spatial[1:3])
    temporal = gates.temporal("a", frames=2, size=(2, 3), rows=12, window_frames=2, like=x)  # (videos*h*w, F, 1)
    for row in range(12):
        torch.testing.assert_close(temporal[row, :, 0], field[:, (row % 6) // 3, row % 3])
    tokens = gates.tokens("a", grid=(2, 2, 3), batch=2, like=x)  # (batch, f*h*w, 1), frame-major
    torch.testing.assert_close(tokens[1, :, 0], field.flatten())
    with pytest.raises(ValueError, match="FreeNoise's 1-frame windows of 2 frames"):
        gates.temporal("a", frames=2, size=(2, 3), rows=6, window_frames=1, like=x)


def test_video_frames_group_onto_causal_latent_frames():
    values = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # 9 video frames -> 3 latent frames (t = 4)
    gates = CallGates({"a": torch.ones(2, 2)}, {"a": values}, active=["a"], num_frames=9, num_steps=None)
    torch.testing.assert_close(gates.level("a", 3, (2, 2))[:, 0, 0].float(), torch.tensor([0.0, 0.25, 0.75]))
    with pytest.raises(ValueError, match=r"has 9 frames, which do not map onto this layer's 4 frames"):
        gates.level("a", 4, (2, 2))


def test_temporal_level_comes_from_its_blocks_spatial_layers():
    sizes = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor": (4, 6),
             "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor": (6, 4)}
    assert temporal_level(sizes, "up_blocks.1.motion_modules.0.transformer_blocks.0.attn1.processor", 24) == (6, 4)
    assert temporal_level(sizes, "down_blocks.0.motion_modules.1.transformer_blocks.0.attn2.processor", 24) == (4, 6)
    with pytest.raises(ValueError, match="level size of its 24 pixels was not recorded"):
        temporal_level(sizes, "mid_block.motion_modules.0.transformer_blocks.0.attn1.processor", 24)


@pytest.mark.parametrize("masks, schedules, message", [
    ({"w": torch.ones(4, 4)}, None,
     "adapter_masks['w']: 'w' is not an active adapter; the active adapters are ['water', 'pan']"),
    ({"water": torch.ones(2, 2, 4, 4)}, None,
     r"adapter_masks['water'] has shape (2, 2, 4, 4); give (H, W) for the whole video or (F, H, W) per frame"),
    ({"water": torch.full((4, 4), 1.5)}, None,
     r"adapter_masks['water'] has values in [1.5, 1.5]; give soft values in [0, 1]"),
    ({"water": torch.ones(3, 4, 4)}, None,
     r"adapter_masks['water'] has 3 frames (shape (3, 4, 4)) but the call has num_frames=8; give (H, W) or (8, H, W)"),
    ({"water": torch.tensor([[0.5, float("nan")]])}, None, r"adapter_masks['water'] contains NaN; give values in [0, 1]"),
    ({"water": "mask.png"}, None, "adapter_masks['water'] is a str; give a PIL image, a numpy array or a torch tensor"),
    (None, {"pan": [1, 1, 0.5]}, r"adapter_schedules['pan'] has 3 values but the call has 8 frames"),
    (None, {"pan": {"steps": [1.0] * 3}}, r"adapter_schedules['pan']['steps'] has 3 values but the call has 4 steps"),
    (None, {"pan": {"frame": [1.0] * 8}}, r"adapter_schedules['pan'] has keys ['frame']; a schedule dict takes"),
    (None, {"pan": [float("nan")] * 8}, r"adapter_schedules['pan'] contains NaN; give finite numbers"),
    (None, [1.0], "adapter_schedules=list; give a dict keyed by active adapter name"),
])
def test_bad_input_names_the_field_the_value_and_what_is_valid(masks, schedules, message):
    with pytest.raises(ValueError) as error:
        CallGates(masks, schedules, active=["water", "pan"], num_frames=8, num_steps=4)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------- processor level


def _attn(cross: bool, seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, cross_attention_dim=TEXT_DIM if cross else None, heads=HEADS,
                     dim_head=DIM // HEADS, out_bias=True).eval()


def _with_adapters(kind, attn, config, mode, names=("a", "b")):
    processor = standalone_processor(kind, layer_name=LAYERS[kind], parallel_mode=mode)
    for seed, name in enumerate(names):
        add_standalone_adapter(processor, attn, config, name=name)
        with torch.no_grad():
            for p in processor.adapters[name].parameters():
                p.copy_(torch.randn(p.shape, generator=_gen(10 + seed)) * 0.3)
    return processor


LAYERS = {
    MIVACrossAttnProcessor: "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
    MIVASelfAttnProcessor: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor",
    MIVATemporalAttnProcessor: "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor",
}
SPATIAL = LAYERS[MIVASelfAttnProcessor]
VIDEOS, FRAMES = 2, 3  # two videos (as under CFG)
CASES = {  # case -> (processor class, adapter config)
    "ca_lora": (MIVACrossAttnProcessor, dict(use_i2v=False, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=4)),
    "spatiotemporal_q": (MIVACrossAttnProcessor, dict(use_i2v=False, use_motion_lora=False, use_ca_lora=True,
                                                      ca_lora_rank=4, q_downsample=True, q_downsample_ratio=2)),
    "implicit": (MIVACrossAttnProcessor, dict(use_i2v=False, use_motion_lora=False, ca_mode="implicit",
                                              implicit_rank=4)),
    "cross_frame": (MIVASelfAttnProcessor, dict(use_motion_lora=False, sa_mode="first_prev")),
    "motion": (MIVATemporalAttnProcessor, dict(use_i2v=False, motion_lora_rank=4, use_motion_embed=True)),
}


def _inputs(kind):
    """`(hidden_states, encoder_hidden_states)` in the processor's layout at level SIZE, and the token mask of
    `_left()` in that layout (True: inside)."""
    h, w = SIZE
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[:, :3] = True
    if kind is MIVATemporalAttnProcessor:  # (videos*h*w, frames, C), pixel inner
        x = torch.randn(VIDEOS * h * w, FRAMES, DIM, generator=_gen(1))
        return x, None, inside.flatten().repeat(VIDEOS)[:, None].expand(-1, FRAMES)
    x = torch.randn(VIDEOS * FRAMES, h * w, DIM, generator=_gen(1))
    text = torch.randn(VIDEOS, 7, TEXT_DIM, generator=_gen(2)).repeat_interleave(FRAMES, dim=0)
    return x, (text if kind is MIVACrossAttnProcessor else None), inside.flatten()[None].expand(VIDEOS * FRAMES, -1)


def _run(processor, attn, x, text, active, **gates):
    activate(processor, active)
    sizes = {SPATIAL: SIZE, LAYERS[MIVACrossAttnProcessor]: SIZE}  # what the UNet's hooks record
    values = dict(num_frames=FRAMES, spatial_sizes=sizes, timestep=torch.tensor([500.0] * VIDEOS))
    with torch.no_grad(), miva_call(processor.context, **values, **gates):
        return processor(attn, x, text)


@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_binary_mask_confines_the_adapter_to_its_tokens(case, mode):
    kind, config = CASES[case]
    attn = _attn(kind is MIVACrossAttnProcessor)
    processor = _with_adapters(kind, attn, MIVAAdapterConfig(**config), mode, names=("a",))
    x, text, inside = _inputs(kind)
    full = _run(processor, attn, x, text, [("a", 0.7)])
    base = _run(processor, attn, x, text, [])
    got = _run(processor, attn, x, text, [("a", 0.7)], adapter_masks={"a": _left()})
    assert (full - base).abs().max() > 1e-2  # the adapter acts
    expected = torch.where(inside[..., None], full, base)  # the reference: its own output inside, none outside
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["residual", "weights"])
@pytest.mark.parametrize("case", ["ca_lora", "motion"])
def test_disjoint_masks_give_each_region_its_own_adapter(case, mode):
    kind, config = CASES[case]
    attn = _attn(kind is MIVACrossAttnProcessor)
    processor = _with_adapters(kind, attn, MIVAAdapterConfig(**config), mode)
    x, text, inside = _inputs(kind)
    only_a = _run(processor, attn, x, text, [("a", 0.6)])
    only_b = _run(processor, attn, x, text, [("b", 0.8)])
    both = _run(processor, attn, x, text, [("a", 0.6), ("b", 0.8)])
    assert (only_a - only_b).abs().max() > 1e-2 and (both - only_a).abs().max() > 1e-2
    masks = {"a": _left(), "b": 1.0 - _left()}
    got = _run(processor, attn, x, text, [("a", 0.6), ("b", 0.8)], adapter_masks=masks)
    torch.testing.assert_close(got, torch.where(inside[..., None], only_a, only_b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["ca_lora", "cross_frame"])
def test_a_soft_mask_scales_the_residual_difference(case):
    """"residual": `y = y_base + w g (y_1 - y_base)`, written out per token with g = 0.25 left, 0.75 right."""
    kind, config = CASES[case]
    attn = _attn(kind is MIVACrossAttnProcessor)
    processor = _with_adapters(kind, attn, MIVAAdapterConfig(**config), "residual", names=("a",))
    x, text, inside = _inputs(kind)
    one = _run(processor, attn, x, text, [("a", 1.0)])
    base = _run(processor, attn, x, text, [])
    mask = 0.75 - 0.5 * _left()
    got = _run(processor, attn, x, text, [("a", 0.6)], adapter_masks={"a": mask})
    g = torch.where(inside, 0.25, 0.75)[..., None]
    torch.testing.assert_close(got, base + 0.6 * g * (one - base), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["ca_lora", "cross_frame", "motion"])
def test_a_frame_schedule_switches_frames_off(case):
    kind, config = CASES[case]
    attn = _attn(kind is MIVACrossAttnProcessor)
    processor = _with_adapters(kind, attn, MIVAAdapterConfig(**config), "residual", names=("a",))
    x, text, _ = _inputs(kind)
    full = _run(processor, attn, x, text, [("a", 1.0)])
    base = _run(processor, attn, x, text, [])
    got = _run(processor, attn, x, text, [("a", 1.0)], adapter_schedules={"a": [1.0, 0.0, 1.0]})
    on = torch.tensor([True, False, True])
    # Spatial layouts: frame = row % frames; temporal: the frame axis.
    on = on.repeat(VIDEOS)[:, None, None] if kind is not MIVATemporalAttnProcessor else on[None, :, None]
    torch.testing.assert_close(got, torch.where(on, full, base), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["residual", "weights"])
def test_a_masked_adapter_beside_an_unmasked_one(mode):
    """Inside the mask both adapters act, outside only the unmasked one ("weights": `y_W(U) + g (y_W(U + a) -
    y_W(U))`, U = the unmasked adapters; "residual" likewise, each adapter's difference added)."""
    kind, config = CASES["ca_lora"]
    attn = _attn(True)
    processor = _with_adapters(kind, attn, MIVAAdapterConfig(**config), mode)
    x, text, inside = _inputs(kind)
    both = _run(processor, attn, x, text, [("a", 0.6), ("b", 0.8)])
    only_b = _run(processor, attn, x, text, [("b", 0.8)])
    got = _run(processor, attn, x, text, [("a", 0.6), ("b", 0.8)], adapter_masks={"a": _left()})
    torch.testing.assert_close(got, torch.where(inside[..., None], both, only_b), rtol=1e-5, atol=1e-5)

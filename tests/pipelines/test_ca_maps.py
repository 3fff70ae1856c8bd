"""Cross-attention maps: store layout (with and without spatiotemporal Q), level names, pipeline capture, images."""

import numpy as np
import PIL.Image
import pytest
import torch

from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline, MIVAPipelineOutput, save_ca_maps
from miva.pipelines.ca_maps import (
    CAMapStore,
    cross_attention_levels,
    jet_colormap,
    named_levels,
    resolve_ca_map_resolutions,
)
from miva.tiny import make_test_image, tiny_components

B, F, H, W, T = 2, 3, 2, 4, 5
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"


def value(b, f, y, x, k):
    """A distinct number for every (video, frame, row, column, token)."""
    return b * 10000 + f * 1000 + y * 100 + x * 10 + k


def expected_maps():
    grid = np.indices((B, F, H, W, T))
    return torch.tensor(value(*grid), dtype=torch.float32)


def test_store_orders_frames_rows_columns_without_stq():
    probs = torch.zeros(B * F, H * W, T)
    for b, f, y, x, k in np.ndindex(B, F, H, W, T):
        probs[b * F + f, y * W + x, k] = value(b, f, y, x, k)  # diffusers: frame inner in the batch, row-major
    store = CAMapStore({LAYER: "high"})
    store.add(LAYER, probs, num_frames=F, size=(H, W), spatiotemporal=False)
    torch.testing.assert_close(store.maps()["high"], expected_maps(), rtol=0, atol=0)


def test_store_orders_frames_rows_columns_with_stq():
    probs = torch.zeros(B, F * H * W, T)
    for b, f, y, x, k in np.ndindex(B, F, H, W, T):
        probs[b, (f * H + y) * W + x, k] = value(b, f, y, x, k)  # spatiotemporal Q: (frame, row, column) tokens
    store = CAMapStore({LAYER: "low"})
    store.add(LAYER, probs, num_frames=F, size=(H, W), spatiotemporal=True)
    torch.testing.assert_close(store.maps()["low"], expected_maps(), rtol=0, atol=0)


def test_store_averages_layers_and_steps_per_level():
    other = LAYER.replace("attentions.0", "attentions.1")
    store = CAMapStore({LAYER: "high", other: "high"}, text_tokens=T)
    assert store.wants(LAYER) and not store.wants("mid_block.attentions.0.transformer_blocks.0.attn2.processor")
    for scale in (1.0, 2.0, 6.0):
        store.add(
            LAYER if scale < 6 else other,
            torch.full((F, H * W, T), scale),
            num_frames=F,
            size=(H, W),
            spatiotemporal=False,
        )
    torch.testing.assert_close(store.maps()["high"], torch.full((1, F, H, W, T), 3.0))
    with pytest.raises(ValueError, match="queries"):
        store.add(LAYER, torch.zeros(F, H * W + 1, T), num_frames=F, size=(H, W), spatiotemporal=False)
    store.reset()
    assert store.maps() == {}


class _FakeUNet:
    """Layer names of an SD1.5-shaped UNetMotionModel: cross-attention in down 0-2, mid, up 1-3."""

    def __init__(self):
        names = []
        for block in range(3):
            names += [
                f"down_blocks.{block}.attentions.{i}.transformer_blocks.0.attn{a}.processor"
                for i in range(2)
                for a in (1, 2)
            ]
            names += [f"down_blocks.{block}.motion_modules.0.transformer_blocks.0.attn2.processor"]
        names.append("mid_block.attentions.0.transformer_blocks.0.attn2.processor")
        for block in range(1, 4):
            names += [f"up_blocks.{block}.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)]
        self.attn_processors = dict.fromkeys(names)
        self.up_blocks = [None] * 4


def test_level_names_on_sd_and_tiny_unets():
    sd = _FakeUNet()
    assert named_levels(sd) == {"high": 0, "middle": 1, "low": 2}
    levels = cross_attention_levels(sd)
    assert len(levels) == 6 + 9  # mid block and motion modules excluded
    chosen = resolve_ca_map_resolutions(sd, ["low"])
    assert sorted(chosen) == sorted(
        [n for n in levels if n.startswith("down_blocks.2.") or n.startswith("up_blocks.1.")]
    )
    assert set(resolve_ca_map_resolutions(sd, "all").values()) == {"low", "middle", "high"}
    assert resolve_ca_map_resolutions(sd, None) == {}

    tiny = MIVAPipeline(**tiny_components(seed=0)).unet
    assert named_levels(tiny) == {"high": 0, "low": 1}
    assert set(resolve_ca_map_resolutions(tiny, "all").values()) == {"high", "low"}
    with pytest.raises(ValueError, match="ca_map_resolutions"):
        resolve_ca_map_resolutions(tiny, ["middle"])
    with pytest.raises(ValueError, match="ca_map_resolutions"):
        resolve_ca_map_resolutions(tiny, [])


@pytest.fixture(scope="module")
def pipe():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, **kwargs):
    options = dict(
        prompt="a waterfall",
        num_frames=8,
        height=64,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        ca_map_resolutions="all",
    )
    options.update(kwargs)
    return pipe(make_test_image(48, 64), **options)


def test_pipeline_returns_maps_with_and_without_stq(pipe):
    plain = _call(pipe, guidance_scale=7.5)
    assert {k: tuple(v.shape) for k, v in plain.ca_maps.items()} == {"high": (1, 8, 8, 6, 77), "low": (1, 8, 4, 3, 77)}
    for maps in plain.ca_maps.values():  # softmax over the prompt's tokens, averaged: rows sum to one
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)

    # Spatiotemporal Q with r = 1 and no PE equals ordinary cross-attention: same video, same maps.
    pipe.add_adapter(
        "stq1", MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, q_downsample=True, q_downsample_ratio=1)
    )
    try:
        stq1 = _call(pipe, guidance_scale=7.5)
        for level, maps in plain.ca_maps.items():
            torch.testing.assert_close(stq1.ca_maps[level], maps, atol=1e-6, rtol=1e-5)
        pipe.add_adapter(
            "stq2", MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, q_downsample=True, q_downsample_ratio=2)
        )
        stq2 = _call(pipe, guidance_scale=1.0, ca_map_resolutions=["low"], batch_prompt=["clouds"])
    finally:
        pipe.delete_adapters([n for n in ("stq1", "stq2") if n in pipe.get_list_adapters().get("miva", [])])
    assert {k: tuple(v.shape) for k, v in stq2.ca_maps.items()} == {"low": (1, 8, 2, 2, 77)}
    assert pipe.unet.miva_context.call_state().attention_store is None  # the store ended with the call


def test_save_ca_maps_blends_heat_over_frames(tmp_path):
    frames = np.full((1, 2, 16, 16, 3), 0.25, dtype=np.float32)
    maps = torch.zeros(1, 2, 4, 4, 3)
    maps[0, 1, 0, 0, 1] = 1.0  # frame 1, token 1: one hot cell in the top-left corner
    output = MIVAPipelineOutput(frames=frames, ca_maps={"high": maps})

    paths = save_ca_maps(output, tmp_path, token_index=1, frames=[1], alpha=1.0)
    assert paths == [str(tmp_path / "high" / "video0_token01_frame01.png")]
    with PIL.Image.open(paths[0]) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (16, 16, 3)
    assert pixels[0, 0, 0] > 100 and pixels[0, 0, 2] == 0  # hot: red end of the ramp
    np.testing.assert_array_equal(pixels[15, 15], [0, 0, 128])  # cold: dark blue

    unchanged = save_ca_maps(output, tmp_path / "plain", token_index="all", alpha=0.0)
    assert len(unchanged) == 2 * 3
    with PIL.Image.open(unchanged[0]) as image:
        assert (np.asarray(image) == 64).all()  # alpha 0 is the frame itself (0.25 * 255)
    with pytest.raises(ValueError, match="token_index"):
        save_ca_maps(output, tmp_path, token_index=3)
    with pytest.raises(ValueError, match="ca_maps"):
        save_ca_maps(MIVAPipelineOutput(frames=frames), tmp_path)


def test_save_ca_maps_from_a_pipeline_call(pipe, tmp_path):
    output = _call(pipe, guidance_scale=1.0, output_type="pil", ca_map_resolutions=["high"])
    paths = save_ca_maps(output, tmp_path, token_index=[1, 2], frames=[0, 7])
    assert len(paths) == 4 and all(p.endswith(".png") for p in paths)
    with PIL.Image.open(paths[-1]) as image:
        assert image.size == (48, 64)


def test_jet_colormap_ends():
    np.testing.assert_allclose(jet_colormap(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


# ----------------------------------------------------------------------------------- maps under guidance, by hand


def _capture_attn2_inputs(unet):
    """Forward pre-hooks on every spatial attn2: records (hidden_states, encoder_hidden_states) of each call."""
    calls, handles = [], []
    for blocks in (unet.down_blocks, unet.up_blocks):
        for block in blocks:
            for transformer in getattr(block, "attentions", None) or []:
                for layer in transformer.transformer_blocks:
                    hook = lambda m, args, kwargs: calls.append((m, args[0], kwargs["encoder_hidden_states"]))  # noqa: E731
                    handles.append(layer.attn2.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


def _hand_maps(calls, frames, size, half, ratio=1, k_lora=None):
    """Mean over the recorded calls on the `size` grid of softmax(q k^T / sqrt(d)) averaged over heads, for batch
    half `half` (0 = unconditional, 1 = conditional) of one video: (frames, h', w', tokens), rows/cols in image
    order. `ratio` > 1: the query grid keeps rows/cols 0, r, 2r, ... (standard spatiotemporal Q). `k_lora(attn, e)`
    adds a key delta."""
    h, w = size
    total, count = 0.0, 0
    for attn, x, text in calls:
        if x.shape[1] != h * w:
            continue
        x, text = x[half * frames : (half + 1) * frames].double(), text[half * frames].double()
        grid = x.reshape(frames, h, w, -1)[:, ::ratio, ::ratio]
        q = grid.reshape(-1, grid.shape[-1]) @ attn.to_q.weight.double().T  # (frames*h'*w', C), frame-major
        k = text @ attn.to_k.weight.double().T
        if k_lora is not None:
            k = k + k_lora(attn, text)
        d = q.shape[-1] // attn.heads
        probs = sum(
            torch.softmax(q[:, i * d : (i + 1) * d] @ k[:, i * d : (i + 1) * d].T / d**0.5, dim=-1)
            for i in range(attn.heads)
        ) / attn.heads
        total, count = total + probs.reshape(*grid.shape[:3], -1), count + 1
    assert count > 0
    return (total / count).float()


def test_guided_maps_are_the_conditional_halfs_maps_computed_by_hand(pipe, randomize_adapter):
    frames, size = 8, (8, 6)  # 64x48 pixels: the "high" level is the 8x6 latent grid
    calls, handles = _capture_attn2_inputs(pipe.unet)
    try:
        out = _call(pipe, guidance_scale=7.5, negative_prompt="a blurry picture", ca_map_resolutions=["high"])
    finally:
        for handle in handles:
            handle.remove()
    maps = out.ca_maps["high"]
    assert maps.shape == (1, frames, *size, 77)
    conditional = _hand_maps(calls, frames, size, half=1)
    torch.testing.assert_close(maps[0], conditional, atol=1e-5, rtol=1e-4)
    assert (_hand_maps(calls, frames, size, half=0) - conditional).abs().max() > 1e-3  # the halves differ

    # Spatiotemporal Q (r = 2, ceil grid) with a CA-LoRA whose key delta changes the maps; alpha/rank written here.
    config = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, use_ca_lora=True, ca_lora_rank=4,
                               ca_lora_scale=2.0, q_downsample=True, q_downsample_ratio=2)
    pipe.add_adapter("stq_maps", config)
    try:
        randomize_adapter(pipe, "stq_maps", seed=2, std=1.0)
        calls, handles = _capture_attn2_inputs(pipe.unet)
        try:
            out = _call(pipe, guidance_scale=7.5, negative_prompt="a blurry picture", ca_map_resolutions=["high"])
        finally:
            for handle in handles:
                handle.remove()

        def k_lora(attn, e):  # the layer's own key delta, alpha / rank = 2 / 4 written here
            delta = attn.processor.adapters["stq_maps"].to_k_lora
            return e @ delta.down.weight.double().T @ delta.up.weight.double().T * (2.0 / 4)

        expected = _hand_maps(calls, frames, size, half=1, ratio=2, k_lora=k_lora)
        assert out.ca_maps["high"].shape == (1, frames, 4, 3, 77)
        torch.testing.assert_close(out.ca_maps["high"][0], expected, atol=1e-5, rtol=1e-4)
        without_delta = _hand_maps(calls, frames, size, half=1, ratio=2)
        assert (expected - without_delta).abs().max() > 1e-3  # the adapter's key delta shows in the maps
        assert (_hand_maps(calls, frames, size, half=0, ratio=2, k_lora=k_lora) - expected).abs().max() > 1e-3
    finally:
        pipe.delete_adapters(["stq_maps"])

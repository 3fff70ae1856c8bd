"""Tests for `MIVASelfAttnProcessor`: stock equivalence and the cross-frame (I2V) branch against a per-frame loop.

Everything runs on a stand-alone diffusers self-attention `Attention` (width 32, 4 heads) with inputs laid out as
the spatial transformer passes them: `(videos*frames, h*w, channels)`, frame the inner factor.
"""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from processor_harness import add_standalone_adapter, call_values, run_processor, standalone_processor

from miva.attention_processors import MIVAAdapterConfig, MIVASelfAttnProcessor

HEADS, DIM, TEMB = 4, 32, 16
VIDEOS, FRAMES, TOKENS = 2, 6, 5
SA_ONLY = dict(use_motion_lora=False)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _attn(seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS, out_bias=True).eval()


def _processor(attn, config=None, weight=1.0, seed=1):
    """A processor with its own context; with `config`, adapter "a" is added, randomised and active."""
    processor = standalone_processor(MIVASelfAttnProcessor, attn, config, weight=weight,
                                     layer_name="test.attn1.processor", temb_channels=TEMB)
    if config is not None:
        generator = _gen(seed)
        with torch.no_grad():
            adapter = processor.adapters["a"]
            trained = [adapter.to_out] + ([adapter.weight_module] if adapter.weight_module is not None else [])
            for p in (p for module in trained for p in module.parameters()):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return processor


def _inputs(seed=3, frames=FRAMES):
    return torch.randn(VIDEOS * frames, TOKENS, DIM, generator=_gen(seed))


def _reference_attention(q, k, v, heads=HEADS):
    """(N, C) x (M, C) -> (N, C): per-head softmax(q k^T / sqrt(d)) v."""
    d = q.shape[-1] // heads
    q, k, v = (t.reshape(-1, heads, d).transpose(0, 1) for t in (q, k, v))
    probs = (q @ k.transpose(-1, -2) / d**0.5).softmax(dim=-1)
    return (probs @ v).transpose(0, 1).reshape(-1, heads * d)


def _reference_branch(attn, adapter, x, frames, mode, s=None):
    """The branch output built one frame at a time: (videos*frames, tokens, C)."""
    to_q = adapter.to_q if adapter.to_q is not None else attn.to_q
    out = torch.empty_like(x)
    for b in range(x.shape[0] // frames):
        for f in range(frames):
            first, prev, row = b * frames, b * frames + max(f - 1, 0), b * frames + f
            q = to_q(x[row])
            if mode == "first":
                k, v = attn.to_k(x[first]), attn.to_v(x[first])
            elif mode == "prev":
                k, v = attn.to_k(x[prev]), attn.to_v(x[prev])
            else:
                s_b = s if isinstance(s, float) else float(s[b])  # one weight, or one per video
                k = torch.cat([attn.to_k(x[first]), attn.to_k(x[prev])])
                v = torch.cat([s_b * attn.to_v(x[first]), (1 - s_b) * attn.to_v(x[prev])])
            out[row] = adapter.to_out(_reference_attention(q, k, v))
    return out


def _branch(processor, attn, x, frames=FRAMES, call=None):
    """Processor output minus the frozen self-attention: the adapter branch alone. `call`: per-call values the UNet's
    hooks would record (`timestep`, `temb`)."""
    with torch.no_grad():
        return run_processor(processor, attn, x, num_frames=frames, call=call) - AttnProcessor2_0()(attn, x)


# ------------------------------------------------------------------------------------------------ stock equality


def test_no_adapter_and_fresh_adapter_equal_stock():
    attn = _attn()
    x = _inputs()
    expected = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(_processor(attn)(attn, x), expected, atol=1e-6, rtol=0)
    processor = _processor(attn)
    config = MIVAAdapterConfig(sa_mode="first_prev", i2v_train_q=True, **SA_ONLY)
    add_standalone_adapter(processor, attn, config)
    assert torch.count_nonzero(processor.adapters["a"].to_out.weight) == 0  # zero-init: a new adapter is a no-op
    torch.testing.assert_close(run_processor(processor, attn, x, num_frames=FRAMES), expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- branch formulas


@pytest.mark.parametrize("mode", ["first", "prev", "first_prev"])
def test_branch_equals_per_frame_reference(mode):
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(sa_mode=mode, sa_first_frame_scale=0.3, **SA_ONLY), weight=0.7)
    x = _inputs()
    with torch.no_grad():
        expected = 0.7 * _reference_branch(attn, processor.adapters["a"], x, FRAMES, mode, s=0.3)
        branch = _branch(processor, attn, x)
    torch.testing.assert_close(branch, expected, atol=1e-5, rtol=1e-5)
    assert branch.abs().max() > 1e-2


def _changed_frames(processor, attn, frame):
    """Which rows of video 0 / video 1 change their branch output when `frame` of video 0 changes."""
    x = _inputs()
    y = x.clone()
    y[frame] += torch.randn(TOKENS, DIM, generator=_gen(11))
    diff = (_branch(processor, attn, y) - _branch(processor, attn, x)).abs().amax(dim=(1, 2)).view(VIDEOS, FRAMES)
    assert torch.all(diff[1] <= 1e-6)  # the other video never notices
    return {f for f in range(FRAMES) if diff[0, f] > 1e-4}, diff[0]


@pytest.mark.parametrize(
    "mode, frame, expected",
    [
        ("first", 3, {3}),  # only frame 3's own queries changed
        ("first", 0, set(range(FRAMES))),  # every frame reads frame 0's keys/values
        ("prev", 3, {3, 4}),  # frame 3's queries and frame 4's keys/values
        ("prev", 0, {0, 1}),  # frame 0 attends to itself, frame 1 to frame 0
        ("first_prev", 3, {3, 4}),
        ("first_prev", 0, set(range(FRAMES))),
    ],
)
def test_branch_reads_only_its_frames(mode, frame, expected):
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(sa_mode=mode, **SA_ONLY))
    changed, diff = _changed_frames(processor, attn, frame)
    assert changed == expected
    assert all(diff[f] <= 1e-6 for f in range(FRAMES) if f not in expected)


def test_frames_from_context_when_not_passed():
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(sa_mode="prev", **SA_ONLY))
    x = _inputs()
    with torch.no_grad():
        from_unet = run_processor(processor, attn, x, call=dict(num_frames=FRAMES))  # as the UNet's hooks record it
        expected = AttnProcessor2_0()(attn, x) + _reference_branch(attn, processor.adapters["a"], x, FRAMES, "prev")
        torch.testing.assert_close(from_unet, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_frames is unknown"):  # never a silent single frame
        processor(attn, x)
    with pytest.raises(ValueError, match=r"batch 12 is not a multiple of num_frames=5"):
        run_processor(processor, attn, x, num_frames=5)


# ----------------------------------------------------------------------------------------- first-frame scale


def test_linear_scale_uses_the_timestep():
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="linear", **SA_ONLY))
    x = _inputs()
    with pytest.raises(RuntimeError, match="needs the timestep"):
        run_processor(processor, attn, x, num_frames=FRAMES)
    timestep = dict(timestep=torch.tensor([250, 900]))
    with call_values(processor, **timestep) as state:
        s = processor.adapters["a"].first_frame_weight(state, FRAMES)
    assert s.shape == (VIDEOS * FRAMES, 1, 1)
    torch.testing.assert_close(s.flatten(), torch.tensor([0.25] * FRAMES + [0.9] * FRAMES))
    with torch.no_grad():
        expected = _reference_branch(attn, processor.adapters["a"], x, FRAMES, "first_prev", s=[0.25, 0.9])
        torch.testing.assert_close(_branch(processor, attn, x, call=timestep), expected, atol=1e-5, rtol=1e-5)


def test_adaptive_scale_responds_to_the_time_embedding():
    attn = _attn()
    config = MIVAAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2", **SA_ONLY)
    processor = _processor(attn, config)
    adapter = processor.adapters["a"]
    assert adapter.weight_module.in_features == TEMB and adapter.weight_module.out_features == 2
    assert adapter.weight_module.weight.requires_grad
    x = _inputs()
    with pytest.raises(RuntimeError, match="needs the time embedding"):
        run_processor(processor, attn, x, num_frames=FRAMES)
    temb = torch.randn(VIDEOS, TEMB, generator=_gen(20))
    with torch.no_grad(), call_values(processor, temb=temb) as state:
        logits = F.silu(temb) @ adapter.weight_module.weight.T + adapter.weight_module.bias
        s = (logits / 0.2).softmax(dim=-1)[:, 0]
        assert torch.all((s > 0) & (s < 1)) and abs(float(s[0] - s[1])) > 1e-3
        got = adapter.first_frame_weight(state, FRAMES)
        torch.testing.assert_close(got.flatten(), s.repeat_interleave(FRAMES), atol=1e-6, rtol=1e-6)
        branch = _branch(processor, attn, x, call=dict(temb=temb))
        torch.testing.assert_close(
            branch, _reference_branch(attn, adapter, x, FRAMES, "first_prev", s=s), atol=1e-5, rtol=1e-5
        )
        other = dict(temb=torch.randn(VIDEOS, TEMB, generator=_gen(21)))
        moved = (_branch(processor, attn, x, call=other) - branch).abs().amax(dim=(1, 2)).view(VIDEOS, FRAMES)
    # Frames 0 and 1 (whose previous frame is frame 0) read [K0; K0] with values [s V0; (1-s) V0]: that is half
    # the plain output whatever s is. Every later frame mixes frame 0 and its predecessor by s.
    assert torch.all(moved[:, :2] <= 1e-6)
    assert torch.all(moved[:, 2:] > 1e-4)


def test_i2v_train_q_is_a_trainable_copy_of_attn1_to_q():
    attn = _attn()
    processor = _processor(attn, MIVAAdapterConfig(sa_mode="first", i2v_train_q=True, **SA_ONLY))
    to_q = processor.adapters["a"].to_q
    assert to_q is not attn.to_q
    assert torch.equal(to_q.weight, attn.to_q.weight)
    assert to_q.weight.data_ptr() != attn.to_q.weight.data_ptr()
    assert to_q.weight.requires_grad
    x = _inputs()
    with torch.no_grad():
        before = _branch(processor, attn, x)
        to_q.weight.add_(torch.randn(to_q.weight.shape, generator=_gen(30)) * 0.5)
        after = _branch(processor, attn, x)
        assert (after - before).abs().max() > 1e-3  # the branch uses its own W_Q
        expected = _reference_branch(attn, processor.adapters["a"], x, FRAMES, "first")
        torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    assert processor.adapters["a"].group_key("a") == ("first",)
    without = _processor(attn, MIVAAdapterConfig(sa_mode="first", **SA_ONLY))
    assert without.adapters["a"].to_q is None

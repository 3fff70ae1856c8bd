"""Standard-style spatiotemporal Q with every `ca_pe_mode`, against a from-scratch reference (docs/research.md#positional-encodings).

The reference below imports nothing from `miva.attention_processors.positional` or `cross_attention`: it walks the
query grid token by token, writes the sinusoid and rotary formulas out in float64 and does the attention with an
explicit softmax. Sizes are non-square and not divisible by the ratio, so the grid is the standard (ceil) one:
rows/columns `0, r, 2r, ...` are kept and each coarse cell is copied back onto the r x r block it starts, cropped
at the edge. Several videos and frames, so a mix-up of frame and video (or of frame positions) shows.
"""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention
from processor_harness import run_processor, standalone_processor

from miva.attention_processors import MIVAAdapterConfig, MIVACrossAttnProcessor

HEADS, QUERY_DIM, TEXT_DIM, TEXT_TOKENS = 4, 32, 24, 7
RANK, ALPHA = 4, 3.0
VIDEOS, FRAMES = 2, 3
MODES = [None, "naive", "temporal", "temporal_sine", "rope_1d", "rope_3d", "ropeQ_3d", "ropeQK_1d", "ropeQKV_1d"]


# ------------------------------------------------------------------------------------------- written-out maths


def sinusoid(position: int, dim: int) -> torch.Tensor:
    """Textbook sinusoid: `[sin(p w_0), cos(p w_0), sin(p w_1), ...]`, `w_k = 10000^(-2k/dim)`, float64."""
    out = torch.zeros(dim, dtype=torch.float64)
    for k in range(dim // 2):
        angle = position * 10000.0 ** (-2.0 * k / dim)
        out[2 * k], out[2 * k + 1] = math.sin(angle), math.cos(angle)
    return out


def sine_only(position: int, dim: int) -> torch.Tensor:
    """`temporal_sine`: `sin(p 10000^(-j/dim))` for every channel j."""
    return torch.tensor([math.sin(position * 10000.0 ** (-j / dim)) for j in range(dim)], dtype=torch.float64)


def rotate(vector: torch.Tensor, position: int) -> torch.Tensor:
    """Rotate interleaved pairs `(a, b)` of `vector (d,)` by `p * 10000^(-2k/d)`: `(a cos - b sin, b cos + a sin)`."""
    dim = vector.shape[-1]
    out = vector.clone()
    for k in range(dim // 2):
        angle = position * 10000.0 ** (-2.0 * k / dim)
        a, b = vector[2 * k], vector[2 * k + 1]
        out[2 * k] = a * math.cos(angle) - b * math.sin(angle)
        out[2 * k + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


def rotate_3d(vector: torch.Tensor, frame: int, row: int, col: int) -> torch.Tensor:
    """Axial 3-D rotary: quarters `[frame | row | col | untouched]`, each a rotary of dim C/4 at its own position."""
    quarter = vector.shape[-1] // 4
    parts = [rotate(vector[i * quarter : (i + 1) * quarter], p) for i, p in enumerate((frame, row, col))]
    return torch.cat([*parts, vector[3 * quarter :]])


def lora(x: torch.Tensor, delta) -> torch.Tensor:
    """`up(down(x)) * alpha / rank` with alpha and rank of this file (not read from the delta)."""
    return x @ delta.down.weight.double().T @ delta.up.weight.double().T * (ALPHA / RANK)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, C) x (M, C) -> (N, C): per head `softmax(q k^T / sqrt(d)) v`, float64."""
    d = q.shape[-1] // HEADS
    heads = []
    for h in range(HEADS):
        qh, kh, vh = (t[:, h * d : (h + 1) * d] for t in (q, k, v))
        heads.append(torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1) @ vh)
    return torch.cat(heads, dim=-1)


def reference(attn, adapter, x, text, size, ratio, mode):
    """Standard-style STQ cross-attention of `x (videos*frames, h*w, C)` with CA-LoRA (Q, K, V, out)."""
    h, w = size
    rows, cols = list(range(0, h, ratio)), list(range(0, w, ratio))  # kept pixels (ceil grid)
    wq_ = attn.to_q.weight.double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(VIDEOS):
        tokens, positions = [], []  # token order: frame, then row, then column
        for f in range(FRAMES):
            for i, y in enumerate(rows):
                for j, xx in enumerate(cols):
                    tokens.append(x[b * FRAMES + f, y * w + xx].double())
                    positions.append((f, i, j))
        inputs = []
        for n, (token, (f, i, j)) in enumerate(zip(tokens, positions)):
            if mode == "naive":
                token = token + sinusoid(n, QUERY_DIM)
            elif mode == "temporal":
                token = token + (sinusoid(f, QUERY_DIM) if f > 0 else 0.0)  # frame 0: no shift
            elif mode == "temporal_sine":
                token = token + sine_only(f, QUERY_DIM)
            elif mode == "rope_1d":
                token = rotate(token, f)
            elif mode == "rope_3d":
                token = rotate_3d(token, f, i, j)
            inputs.append(token)
        xs = torch.stack(inputs)
        q = xs @ wq_.T + lora(xs, adapter.to_q_lora)
        if mode == "ropeQ_3d":
            q = torch.stack([rotate_3d(q[n], *positions[n]) for n in range(len(positions))])
        elif mode in ("ropeQK_1d", "ropeQKV_1d"):
            q = torch.stack([rotate(q[n], positions[n][0]) for n in range(len(positions))])
        e = text[b * FRAMES].double()  # one prompt per video
        k = e @ attn.to_k.weight.double().T + lora(e, adapter.to_k_lora)
        v = e @ attn.to_v.weight.double().T + lora(e, adapter.to_v_lora)
        if mode in ("ropeQK_1d", "ropeQKV_1d"):  # one copy of the text per frame, at that frame's position
            k = torch.cat([torch.stack([rotate(row, f) for row in k]) for f in range(FRAMES)])
            v = torch.cat([torch.stack([rotate(row, f) for row in v]) if mode == "ropeQKV_1d" else v
                           for f in range(FRAMES)])
        a = multi_head_attention(q, k, v)
        y = a @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double() + lora(a, adapter.to_out_lora)
        for n, (f, i, j) in enumerate(positions):  # each coarse cell fills its r x r block, cropped at the edge
            for y_pix in range(i * ratio, min((i + 1) * ratio, h)):
                for x_pix in range(j * ratio, min((j + 1) * ratio, w)):
                    out[b * FRAMES + f, y_pix * w + x_pix] = y[n]
    return out.float()


# ------------------------------------------------------------------------------------------------------ tests


def _attn():
    torch.manual_seed(0)
    attn = Attention(query_dim=QUERY_DIM, cross_attention_dim=TEXT_DIM, heads=HEADS, dim_head=QUERY_DIM // HEADS,
                     out_bias=True).eval()
    return attn


@pytest.mark.parametrize("size, ratio", [((5, 9), 2), ((6, 10), 4)])
@pytest.mark.parametrize("mode", MODES)
def test_standard_stq_with_every_pe_mode_equals_the_written_out_reference(mode, size, ratio, randomize_adapter):
    attn = _attn()
    config = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, use_ca_lora=True, use_q_lora=True,
                               ca_lora_rank=RANK, ca_lora_scale=ALPHA, q_downsample=True, q_downsample_ratio=ratio,
                               ca_pe_mode=mode, pe_style="standard")
    processor = standalone_processor(MIVACrossAttnProcessor, attn, config, layer_name="test.attn2.processor")
    randomize_adapter(processor, "a", seed=3)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(VIDEOS * FRAMES, size[0] * size[1], QUERY_DIM, generator=generator)
    text = torch.randn(VIDEOS, TEXT_TOKENS, TEXT_DIM, generator=generator).repeat_interleave(FRAMES, dim=0)
    with torch.no_grad():
        out = run_processor(processor, attn, x, text, size=size, num_frames=FRAMES)
        # Inside the UNet the frame count comes from the call state (recorded by the hooks).
        from_context = run_processor(processor, attn, x, text, size=size, call=dict(num_frames=FRAMES))
    expected = reference(attn, processor.adapters["a"], x, text, size, ratio, mode)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(from_context, out, atol=0, rtol=0)
    if mode is not None:  # the encoding matters here: the reference without it is far off
        plain = reference(attn, processor.adapters["a"], x, text, size, ratio, None)
        assert (expected - plain).abs().max() > 1e-3

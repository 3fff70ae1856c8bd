"""Tests for `miva.attention_processors.positional` (the `ca_pe_mode` encodings of the spatiotemporal query)."""

import math

import pytest
import torch
import torch.nn.functional as F

from miva.attention_processors import positional as pe
from miva.attention_processors import positional_tables as tables
from miva.attention_processors.positional import (
    PE_MODES,
    apply_rotary,
    encode_key_value,
    encode_query_input,
    encode_query_output,
    normalize_pe_mode,
    pe_uses_kv,
    rotary_3d,
    rotary_angles,
    sinusoid_table,
    temporal_table,
)

STYLES = ("standard", "research")


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rotate(x, positions):
    cos, sin = rotary_angles(torch.as_tensor(positions), x.shape[-1])
    return apply_rotary(x, cos, sin)


# ---------------------------------------------------------------------------------------------------- mode handling


def test_normalize_pe_mode():
    assert normalize_pe_mode(None) is None
    assert normalize_pe_mode("null") is None
    assert normalize_pe_mode("none") is None
    for mode in PE_MODES:
        assert normalize_pe_mode(mode) == mode
    assert len(PE_MODES) == 8
    with pytest.raises(ValueError, match=r"did you mean 'rope_3d'") as err:
        normalize_pe_mode("rope3d")
    assert "ca_pe_mode='rope3d'" in str(err.value)
    with pytest.raises(ValueError, match=r"did you mean 'ropeQK_1d'"):
        normalize_pe_mode("ropeqk_1d")
    with pytest.raises(ValueError, match="ca_pe_mode"):
        normalize_pe_mode(3)
    with pytest.raises(ValueError, match="pe_style"):
        encode_query_input(torch.zeros(1, 1, 2, 2, 8), "naive", "textbook")


def test_registry_is_the_one_list_of_modes(monkeypatch):
    """Modes, normalisation, K/V use, channel checks and the adapter config all derive from `PE_REGISTRY`: a new
    mode is one entry."""
    from miva.attention_processors.adapter_config import CA_PE_MODES, MIVAAdapterConfig

    assert PE_MODES == tuple(pe.PE_REGISTRY) and CA_PE_MODES == PE_MODES
    for name, spec in pe.PE_REGISTRY.items():
        assert spec.name == name and (spec.encode_input or spec.encode_output or spec.encode_kv)
    double = pe.PEMode("double", encode_input=lambda x, style: 2 * x.reshape(x.shape[0], -1, x.shape[-1]),
                       channel_multiple=4, channel_rule="a multiple of 4 channels")
    monkeypatch.setitem(pe.PE_REGISTRY, "double", double)
    assert MIVAAdapterConfig(q_downsample=True, ca_pe_mode="double").ca_pe_mode == "double"
    x = _randn(1, 2, 3, 3, 8)
    assert torch.equal(encode_query_input(x, "double"), 2 * x.reshape(1, 18, 8))
    with pytest.raises(ValueError, match="ca_pe_mode='double' needs a multiple of 4 channels, got channels=6"):
        encode_query_input(_randn(1, 2, 3, 3, 6), "double")
    assert not pe_uses_kv("double")


def test_pe_uses_kv():
    assert [m for m in PE_MODES if pe_uses_kv(m)] == ["ropeQK_1d", "ropeQKV_1d"]
    assert not pe_uses_kv(None) and not pe_uses_kv("null")


def test_channel_validation_names_channels_and_mode():
    with pytest.raises(ValueError, match=r"ca_pe_mode='rope_3d'.*channels=12"):
        encode_query_input(torch.zeros(1, 2, 2, 2, 12), "rope_3d", "standard")
    with pytest.raises(ValueError, match=r"ca_pe_mode='rope_1d'.*channels=7"):
        encode_query_input(torch.zeros(1, 2, 2, 2, 7), "rope_1d", "standard")
    with pytest.raises(ValueError, match=r"ca_pe_mode='ropeQK_1d'.*channels=5"):
        encode_key_value(torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), 2, "ropeQK_1d", "standard")
    # non-rotary modes do not care
    encode_query_input(torch.zeros(1, 2, 2, 2, 12), "temporal", "standard")


# ---------------------------------------------------------------------------------------------------- sinusoids


@pytest.mark.parametrize("style", STYLES)
def test_sinusoid_table_formula(style):
    dim, positions = 8, [0, 1, 2, 3]
    sign = -1 if style == "standard" else 1
    expected = torch.zeros(len(positions), dim, dtype=torch.float64)
    for row, p in enumerate(positions):
        for i in range(dim // 2):
            w = 10000.0 ** (sign * 2 * i / dim)
            expected[row, 2 * i] = math.sin(p * w)
            expected[row, 2 * i + 1] = math.cos(p * w)
    got = sinusoid_table(torch.tensor(positions), dim, style)
    assert got.shape == (4, 8) and got.dtype == torch.float32
    # research frequencies reach 1000 here: float32 rounding of p*w limits the agreement
    torch.testing.assert_close(got.double(), expected, atol=1e-5 if style == "standard" else 2e-3, rtol=0)


@pytest.mark.parametrize("style", STYLES)
def test_temporal_table_formula(style):
    frames, dim = 4, 6
    sign = -1 if style == "standard" else 1
    table = temporal_table(frames, dim, style)
    sine = temporal_table(frames, dim, style, sine_only=True, dtype=torch.float16)
    assert table.shape == sine.shape == (frames, dim) and sine.dtype == torch.float16
    assert torch.all(table[0] == 0) and torch.all(sine[0] == 0)
    torch.testing.assert_close(table[1:], sinusoid_table(torch.arange(1, frames), dim, style))
    for f in range(1, frames):
        for j in range(dim):
            assert sine[f, j].item() == pytest.approx(math.sin(f * 10000.0 ** (sign * j / dim)), abs=2e-3)


# ---------------------------------------------------------------------------------------------------- rotary


def test_rotary_angles_frequencies():
    cos, sin = rotary_angles(torch.tensor([0.0, 3.0]), 8)
    assert cos.shape == sin.shape == (2, 8)
    assert torch.all(cos[0] == 1) and torch.all(sin[0] == 0)
    for k in range(4):
        angle = 3.0 * 10000.0 ** (-2 * k / 8)
        for c in (2 * k, 2 * k + 1):  # duplicated on the interleaved pair
            assert cos[1, c].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[1, c].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_apply_rotary_pair_formula_and_norm():
    x = _randn(5, 16)
    positions = torch.arange(5) * 3
    y = _rotate(x, positions)
    cos, sin = rotary_angles(positions, 16)
    a, b = x[:, 0::2], x[:, 1::2]
    torch.testing.assert_close(y[:, 0::2], a * cos[:, 0::2] - b * sin[:, 0::2])
    torch.testing.assert_close(y[:, 1::2], b * cos[:, 0::2] + a * sin[:, 0::2])
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x))


def test_rotary_relative_position():
    q, k = _randn(1, 32, seed=1), _randn(1, 32, seed=2)

    def score(p1, p2):
        return (_rotate(q, [p1]) * _rotate(k, [p2])).sum().item()

    assert score(5, 2) == pytest.approx(score(9, 6), abs=1e-4)
    assert score(3, 3) == pytest.approx((q * k).sum().item(), abs=1e-4)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_rotary_3d_relative_position_per_axis():
    channels = 32
    q, k = _randn(channels, seed=3), _randn(channels, seed=4)
    grid = (6, 7, 8)

    def score(pos_q, pos_k):
        x = torch.zeros(2, *grid, channels)
        x[(0, *pos_q)] = q
        x[(1, *pos_k)] = k
        y = rotary_3d(x)
        return (y[(0, *pos_q)] * y[(1, *pos_k)]).sum().item()

    for axis in range(3):
        p1, p2 = [1, 1, 1], [1, 1, 1]
        p1[axis], p2[axis] = 4, 2
        base = score(p1, p2)
        shifted_q, shifted_k = list(p1), list(p2)
        shifted_q[axis], shifted_k[axis] = 5, 3
        assert base == pytest.approx(score(shifted_q, shifted_k), abs=1e-4), axis
        p2[axis] = 0
        assert abs(base - score(p1, p2)) > 1e-3, axis
    # shifting all three axes at once keeps the score too
    assert score((3, 4, 5), (1, 2, 3)) == pytest.approx(score((5, 6, 7), (3, 4, 5)), abs=1e-4)


def test_rotary_3d_layout():
    x = _randn(2, 3, 4, 5, 32)
    y = rotary_3d(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[..., 24:], x[..., 24:])  # last quarter untouched
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # standard 3-D preserves the norm
    torch.testing.assert_close(y[:, 0, 0, 0], x[:, 0, 0, 0])  # origin: identity
    # frame quarter only depends on the frame index, row quarter on the row, col quarter on the column
    f, r, c = 2, 3, 4
    torch.testing.assert_close(y[:, f, r, c, :8], _rotate(x[:, f, r, c, :8], [f]))
    torch.testing.assert_close(y[:, f, r, c, 8:16], _rotate(x[:, f, r, c, 8:16], [r]))
    torch.testing.assert_close(y[:, f, r, c, 16:24], _rotate(x[:, f, r, c, 16:24], [c]))


# ---------------------------------------------------------------------------------------------------- query input


@pytest.mark.parametrize("frames", [1, 8, 16])
@pytest.mark.parametrize("rows,cols", [(5, 9), (6, 10)])
@pytest.mark.parametrize("channels", [32, 64])
def test_shapes_all_modes(frames, rows, cols, channels):
    x = _randn(2, frames, rows, cols, channels)
    tokens = frames * rows * cols
    for style in STYLES:
        for mode in (None, *PE_MODES):
            flat = encode_query_input(x, mode, style)
            assert flat.shape == (2, tokens, channels) and flat.dtype == x.dtype, (mode, style)
            q = encode_query_output(flat * 0.5, flat, (frames, rows, cols), mode, style)
            assert q.shape == flat.shape, (mode, style)
            k, v = encode_key_value(_randn(2, 7, channels), _randn(2, 7, channels), frames, mode, style)
            text = 7 * frames if pe_uses_kv(mode) else 7
            assert k.shape == v.shape == (2, text, channels), (mode, style)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", [None, "ropeQ_3d", "ropeQK_1d", "ropeQKV_1d"])
def test_modes_without_input_pe_just_flatten(mode, style):
    x = _randn(2, 3, 4, 5, 16).permute(0, 1, 3, 2, 4)  # non-contiguous, like after interpolation/permute
    torch.testing.assert_close(encode_query_input(x, mode, style), x.reshape(2, 60, 16))


@pytest.mark.parametrize("style", STYLES)
def test_naive_adds_token_sinusoid(style):
    x = _randn(1, 2, 3, 4, 16)
    out = encode_query_input(x, "naive", style)
    expected = x.reshape(1, 24, 16) + sinusoid_table(torch.arange(24), 16, style)
    torch.testing.assert_close(out, expected)


def test_naive_research_token_limit():
    x = torch.zeros(1, 16, 10, 17, 8)  # 2720 tokens > 2560
    with pytest.raises(ValueError, match="2560"):
        encode_query_input(x, "naive", "research")
    assert encode_query_input(x, "naive", "standard").shape == (1, 2720, 8)
    assert encode_query_input(torch.zeros(1, 16, 10, 16, 8), "naive", "research").shape == (1, 2560, 8)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", ["temporal", "temporal_sine"])
def test_temporal_modes_shift_per_frame(mode, style):
    x = _randn(2, 4, 3, 5, 16)
    out = encode_query_input(x, mode, style).reshape(x.shape)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # frame 0 (the given image) unshifted
    shift = out - x
    table = temporal_table(4, 16, style, sine_only=mode == "temporal_sine")
    # every token of a frame gets that frame's vector
    torch.testing.assert_close(shift, table[None, :, None, None, :].expand_as(shift), atol=1e-6, rtol=0)
    assert shift[:, 1:].abs().amax() > 0.1


def test_rope_1d_standard_rotates_by_frame():
    x = _randn(2, 4, 3, 5, 16)
    out = encode_query_input(x, "rope_1d", "standard").reshape(x.shape)
    torch.testing.assert_close(out[:, 0], x[:, 0])  # position 0: identity
    for f in range(4):
        torch.testing.assert_close(out[:, f], _rotate(x[:, f], [f]))


def test_rope_1d_research_is_additive_with_gradient():
    x = _randn(2, 4, 3, 5, 16).requires_grad_()
    out = encode_query_input(x, "rope_1d", "research").reshape(x.shape)
    torch.testing.assert_close(out[:, 0], 2 * x[:, 0])  # x + R(x), R = identity at frame 0
    for f in range(4):
        torch.testing.assert_close(out[:, f], x[:, f] + _rotate(x[:, f], [f]))
    g = _randn(*x.shape, seed=5)
    (out * g).sum().backward()
    assert not torch.allclose(x.grad, g)  # gradient flows through the rotated term too (unlike 3-D)


def test_rope_3d_input_modes():
    x = _randn(2, 3, 4, 5, 32)
    torch.testing.assert_close(encode_query_input(x, "rope_3d", "standard"), rotary_3d(x).reshape(2, 60, 32))

    x.requires_grad_()
    out = encode_query_input(x, "rope_3d", "research")
    torch.testing.assert_close(out, (x + rotary_3d(x)).reshape(2, 60, 32))
    torch.testing.assert_close(out[..., 24:], 2 * x.reshape(2, 60, 32)[..., 24:])  # untouched quarter doubles
    g = _randn(2, 60, 32, seed=6)
    (out * g).sum().backward()
    assert torch.equal(x.grad.reshape(2, 60, 32), g)  # stop-grad on the rotated term: identity gradient


# ---------------------------------------------------------------------------------------------------- query output


def test_ropeQ_3d_output():
    grid, shape = (3, 4, 5), (2, 60, 32)
    x_in, q = _randn(*shape, seed=7), _randn(*shape, seed=8)
    expected = x_in + rotary_3d(x_in.reshape(2, *grid, 32)).reshape(shape)
    torch.testing.assert_close(encode_query_output(q, x_in, grid, "ropeQ_3d", "research"), expected)
    torch.testing.assert_close(encode_query_output(-q, x_in, grid, "ropeQ_3d", "research"), expected)  # q ignored
    torch.testing.assert_close(
        encode_query_output(q, x_in, grid, "ropeQ_3d", "standard"), rotary_3d(q.reshape(2, *grid, 32)).reshape(shape)
    )


@pytest.mark.parametrize("mode", ["ropeQK_1d", "ropeQKV_1d"])
def test_ropeQK_query_output(mode):
    grid = (3, 2, 2)
    q, x_in = _randn(1, 12, 8, seed=9), _randn(1, 12, 8, seed=10)
    assert encode_query_output(q, x_in, grid, mode, "research") is q
    out = encode_query_output(q, x_in, grid, mode, "standard")
    torch.testing.assert_close(out, _rotate(q, torch.arange(3).repeat_interleave(4)))
    for mode in (None, "naive", "temporal", "temporal_sine", "rope_1d", "rope_3d"):
        assert encode_query_output(q, x_in, grid, mode, "standard") is q


# ---------------------------------------------------------------------------------------------------- keys / values


def _explicit_tiling(x, frames, style, rotate):
    """Slow reference: one token at a time."""
    batch, text, channels = x.shape
    out = torch.zeros(batch, text * frames, channels)
    for index in range(text * frames):
        if style == "standard":
            f, n = divmod(index, text)  # frame-major
        else:
            n, f = divmod(index, frames)  # token-major
        token = x[:, n]
        if rotate:
            position = index // text
            rotated = _rotate(token[:, None], [position])[:, 0]
            token = rotated if style == "standard" else token + rotated
        out[:, index] = token
    return out


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", ["ropeQK_1d", "ropeQKV_1d"])
def test_key_value_tiling(mode, style):
    frames, text = 4, 7
    k, v = _randn(2, text, 16, seed=11), _randn(2, text, 16, seed=12)
    k_out, v_out = encode_key_value(k, v, frames, mode, style)
    torch.testing.assert_close(k_out, _explicit_tiling(k, frames, style, rotate=True))
    torch.testing.assert_close(v_out, _explicit_tiling(v, frames, style, rotate=mode == "ropeQKV_1d"))
    if style == "standard":  # each key sits at its frame's position
        for f in range(frames):
            torch.testing.assert_close(k_out[:, f * text : (f + 1) * text], _rotate(k, [f]))


@pytest.mark.parametrize("style", STYLES)
def test_kv_untouched_for_other_modes(style):
    k, v = _randn(1, 7, 16), _randn(1, 7, 16, seed=1)
    for mode in (None, "naive", "temporal", "temporal_sine", "rope_1d", "rope_3d", "ropeQ_3d"):
        k_out, v_out = encode_key_value(k, v, 4, mode, style)
        assert k_out is k and v_out is v


@pytest.mark.parametrize("style", STYLES)
def test_tiled_kv_without_pe_keeps_attention(style):
    # ropeQK_1d tiles V without rotating it; with K merely tiled as well, attention is unchanged.
    frames, text, heads, channels = 3, 7, 2, 16
    q, k, v = _randn(2, 10, channels, seed=13), _randn(2, text, channels, seed=14), _randn(2, text, channels, seed=15)
    _, v_tiled = encode_key_value(k, v, frames, "ropeQK_1d", style)
    k_tiled = k.repeat(1, frames, 1) if style == "standard" else k.repeat_interleave(frames, dim=1)

    def attend(q, k, v):
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v))

    torch.testing.assert_close(attend(q, k_tiled, v_tiled), attend(q, k, v))


# ---------------------------------------------------------------------------------------------------- dtype / cache


def test_half_precision_and_cache(monkeypatch):
    monkeypatch.setattr(tables, "_TABLE_CACHE", {})
    x = _randn(1, 2, 3, 4, 16, dtype=torch.bfloat16)
    for mode in PE_MODES:
        assert encode_query_input(x, mode, "standard").dtype == torch.bfloat16
    n_tables = len(tables._TABLE_CACHE)
    assert n_tables > 0
    for mode in PE_MODES:  # second pass: all hits
        encode_query_input(x, mode, "standard")
    assert len(tables._TABLE_CACHE) == n_tables
    for size in range(tables._CACHE_MAX_ENTRIES + 5):  # bounded
        encode_query_input(torch.zeros(1, 1, 1, size + 1, 8), "naive", "standard")
    assert len(tables._TABLE_CACHE) <= tables._CACHE_MAX_ENTRIES


def test_inference_mode_table_reused_with_grad():
    tables._TABLE_CACHE.clear()
    x = _randn(1, 2, 2, 2, 8)
    with torch.inference_mode():
        encode_query_input(x, "rope_1d", "standard")
    x.requires_grad_()
    encode_query_input(x, "rope_1d", "standard").sum().backward()  # must not reuse an inference tensor
    assert x.grad is not None


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()

    def encode(x, k, v):
        q = encode_query_input(x, "rope_3d", "research")
        q = encode_query_output(q, q, (2, 3, 4), "ropeQKV_1d", "standard")
        return (q, *encode_key_value(k, v, 2, "ropeQKV_1d", "standard"))

    x, k = _randn(1, 2, 3, 4, 16), _randn(1, 5, 16)
    compiled = torch.compile(encode, backend="eager", fullgraph=True)
    for got, expected in zip(compiled(x, k, k), encode(x, k, k)):
        torch.testing.assert_close(got, expected)

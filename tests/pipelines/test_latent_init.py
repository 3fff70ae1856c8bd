import math

import pytest
import torch

from miva.pipelines.latent_init import (
    ADAIN_MODES,
    adain,
    adain_last,
    adain_step,
    build_initial_latents,
    check_adain_mode,
    cil_analytic_noise_std,
    cinemo_base,
    dct_3d,
    dct_init,
    dct_low_pass_mask,
    dct_matrix,
    idct_3d,
    mix_shared_noise,
    scale_timesteps,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


@pytest.fixture(scope="module")
def ddim():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# ---------------------------------------------------------------- DCT


@pytest.mark.parametrize("n", [1, 2, 5, 15, 40])
def test_dct_matrix_is_orthonormal(n):
    d = dct_matrix(n, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(d.T @ d, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert dct_matrix(n).dtype == torch.float32


def test_dct_matrix_entries():
    n = 6
    d = dct_matrix(n, dtype=torch.float64)
    for k in range(n):
        s = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        for i in range(n):
            assert d[k, i].item() == pytest.approx(s * math.cos(math.pi * (2 * i + 1) * k / (2 * n)), abs=1e-12)


def test_dct_3d_matches_explicit_triple_sum():
    x = _randn(3, 4, 5, dtype=torch.float64)
    f_n, h_n, w_n = x.shape

    def coef(k, n, size):
        s = math.sqrt(1 / size) if k == 0 else math.sqrt(2 / size)
        return s * math.cos(math.pi * (2 * n + 1) * k / (2 * size))

    ref = torch.zeros_like(x)
    for kf in range(f_n):
        for kh in range(h_n):
            for kw in range(w_n):
                total = 0.0
                for f in range(f_n):
                    for h in range(h_n):
                        for w in range(w_n):
                            total += coef(kf, f, f_n) * coef(kh, h, h_n) * coef(kw, w, w_n) * x[f, h, w].item()
                ref[kf, kh, kw] = total
    out = dct_3d(x)
    assert out.dtype == torch.float64  # cast back to the input dtype
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dct_3d_roundtrip_and_energy():
    x = _randn(2, 4, 15, 40, 64)
    coeffs = dct_3d(x)
    assert coeffs.shape == x.shape
    torch.testing.assert_close(idct_3d(coeffs), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(coeffs.pow(2).sum(), x.pow(2).sum(), rtol=1e-5, atol=0)


def test_dct_3d_of_constant_is_dc_only():
    x = torch.full((1, 2, 3, 4, 5), 2.0)
    coeffs = dct_3d(x)
    expected_dc = 2.0 * math.sqrt(3 * 4 * 5)
    torch.testing.assert_close(coeffs[..., 0, 0, 0], torch.full((1, 2), expected_dc))
    rest = coeffs.clone()
    rest[..., 0, 0, 0] = 0
    assert rest.abs().max() < 1e-5


def test_dct_3d_half_precision_input():
    x = _randn(1, 4, 3, 8, 8).half()
    out = idct_3d(dct_3d(x))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x.float(), atol=1e-2, rtol=0)


# ---------------------------------------------------------------- masks


def test_rect_mask_is_9x14_at_40x64():
    mask = dct_low_pass_mask(15, 40, 64, 0.23, "rect")
    assert mask.shape == (15, 40, 64) and mask.dtype == torch.float32
    assert torch.all(mask[:, :9, :14] == 1)
    assert mask.sum() == 15 * 9 * 14


def test_tri_mask_inside_rect_and_matches_inequality():
    h, w, ratio = 40, 64, 0.23
    tri = dct_low_pass_mask(15, h, w, ratio, "tri")
    rect = dct_low_pass_mask(15, h, w, ratio, "rect")
    assert torch.all(tri <= rect)
    assert tri[0, 0, 0] == 1 and tri[0, 8, 13] == 0
    _assert_tri_matches_inequality(tri, h, w, ratio)
    # The inequality alone would also pass (9, 0): the rectangle restricts it, as in the research code.
    assert 9 / h + 0 / w < ratio and tri[0, 9, 0] == 0


def test_tri_mask_is_strict_inequality():
    tri = dct_low_pass_mask(2, 10, 10, 0.5, "tri")
    assert 2 / 10 + 3 / 10 == 0.5 and tri[0, 2, 3] == 0
    _assert_tri_matches_inequality(tri, 10, 10, 0.5)


def _assert_tri_matches_inequality(tri, h, w, ratio):
    assert torch.all(tri == tri[:1])  # all temporal frequencies pass
    cy, cx = int(h * ratio), int(w * ratio)
    for y in range(h):
        for x in range(w):
            expected = 1.0 if (y < cy and x < cx and y / h + x / w < ratio) else 0.0
            assert tri[0, y, x].item() == expected, (y, x)


def test_mask_validation_names_arguments():
    with pytest.raises(ValueError, match="dct_cutoff_shape='circle'.*rect"):
        dct_low_pass_mask(2, 8, 8, 0.23, "circle")
    with pytest.raises(ValueError, match="dct_cutoff_ratio"):
        dct_low_pass_mask(2, 8, 8, 1.5)
    with pytest.raises(ValueError, match="dct_cutoff_ratio"):
        dct_low_pass_mask(2, 8, 8, -0.1)


# ---------------------------------------------------------------- DCTInit


def test_dct_init_limits_and_low_frequencies():
    base = _randn(1, 4, 15, 40, 64, seed=1)
    noise = _randn(1, 4, 15, 40, 64, seed=2)
    torch.testing.assert_close(dct_init(base, noise, 0.0), noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(dct_init(base, noise, 1.0, "rect"), base, atol=1e-5, rtol=0)

    mixed = dct_init(base, noise, 0.23, "rect")
    mixed_f, base_f, noise_f = dct_3d(mixed), dct_3d(base), dct_3d(noise)
    torch.testing.assert_close(mixed_f[..., :9, :14], base_f[..., :9, :14], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed_f[..., 9:, :], noise_f[..., 9:, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed_f[..., :9, 14:], noise_f[..., :9, 14:], atol=1e-5, rtol=0)


def test_dct_init_returns_base_dtype():
    base = _randn(1, 4, 3, 8, 8, seed=1).half()
    noise = _randn(1, 4, 3, 8, 8, seed=2).half()
    out = dct_init(base, noise, 0.5, "tri")
    assert out.dtype == torch.float16 and out.shape == base.shape


# ---------------------------------------------------------------- shared noise and cinemo


def test_mix_shared_noise():
    noise = _randn(2, 4, 6, 5, 7)
    r = 0.2
    out = mix_shared_noise(noise, r)
    torch.testing.assert_close(out[:, :, 0], noise[:, :, 0], atol=0, rtol=0)
    for f in range(1, 6):
        torch.testing.assert_close(out[:, :, f], r * noise[:, :, 0] + (1 - r) * noise[:, :, f])
    assert torch.equal(mix_shared_noise(noise, 0.0), noise)
    assert torch.equal(mix_shared_noise(noise, 1.0), noise[:, :, :1].expand_as(noise))
    with pytest.raises(ValueError, match="shared_noise_ratio"):
        mix_shared_noise(noise, 1.1)


def test_cinemo_base_is_forward_diffusion_at_975(ddim):
    abar = ddim.alphas_cumprod[975].item()
    assert abar == pytest.approx(0.0062, abs=5e-5)
    assert math.sqrt(abar) == pytest.approx(0.0787, abs=5e-4)
    z = _randn(1, 4, 1, 5, 6, seed=3)
    eps = _randn(2, 4, 3, 5, 6, seed=4)
    out = cinemo_base(z, eps, ddim)
    assert out.shape == (2, 4, 3, 5, 6)
    expected = math.sqrt(abar) * z + math.sqrt(1 - abar) * eps
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- CIL


def test_scale_timesteps_rounds_and_keeps_dtype(ddim):
    t = torch.tensor([981, 961, 1])
    out = scale_timesteps(t, 0.9)
    assert out.dtype == torch.long
    assert out.tolist() == [883, 865, 1]
    assert torch.equal(scale_timesteps(t, 1.0), t)
    ddim.set_timesteps(50)
    scaled = scale_timesteps(ddim.timesteps, 0.9)
    assert scaled.dtype == ddim.timesteps.dtype
    assert scaled.tolist() == [round(v * 0.9) for v in ddim.timesteps.tolist()]
    t32 = torch.tensor([981.0, 500.0])
    assert scale_timesteps(t32, 0.5).dtype == torch.float32
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="cil_ratio"):
            scale_timesteps(t, bad)


def test_cil_analytic_noise_std(ddim):
    abar = ddim.alphas_cumprod[883].item()
    assert cil_analytic_noise_std(ddim.alphas_cumprod, 883) == pytest.approx(math.sqrt(abar * 0.566 + 1 - abar))
    assert cil_analytic_noise_std(ddim.alphas_cumprod, torch.tensor(883)) == pytest.approx(
        math.sqrt(abar * 0.566 + 1 - abar)
    )
    assert cil_analytic_noise_std(ddim.alphas_cumprod, 883) < 1.0


# ---------------------------------------------------------------- AdaIN


def _stats(x):  # per (batch, channel) over (h, w): x (B, C, h, w)
    return x.mean(dim=(-2, -1)), x.var(dim=(-2, -1), unbiased=True).sqrt()


def test_adain_matches_reference_statistics():
    x = _randn(2, 4, 10, 12, seed=5) * 3 + 1
    ref = _randn(2, 4, 10, 12, seed=6) * 0.5 - 2
    out = adain(x, ref)
    mo, so = _stats(out)
    mr, sr = _stats(ref)
    torch.testing.assert_close(mo, mr, atol=1e-5, rtol=0)
    torch.testing.assert_close(so, sr, atol=1e-5, rtol=0)
    # explicit formula with eps on the unbiased variance
    mx = x.mean(dim=(-2, -1), keepdim=True)
    sx = (x.var(dim=(-2, -1), keepdim=True) + 1e-8).sqrt()
    mr_, sr_ = ref.mean(dim=(-2, -1), keepdim=True), (ref.var(dim=(-2, -1), keepdim=True) + 1e-8).sqrt()
    torch.testing.assert_close(out, (x - mx) / sx * sr_ + mr_)
    # eps is added to the unbiased variance (a large eps makes both visible)
    sx = (x.var(dim=(-2, -1), keepdim=True, unbiased=True) + 1.0).sqrt()
    sr_ = (ref.var(dim=(-2, -1), keepdim=True, unbiased=True) + 1.0).sqrt()
    torch.testing.assert_close(adain(x, ref, eps=1.0), (x - mx) / sx * sr_ + mr_)
    assert adain(x.half(), ref.half()).dtype == torch.float16


def test_adain_last_matches_every_frame_to_frame_0():
    lat = _randn(2, 4, 5, 8, 9, seed=7) * torch.arange(1, 6).view(1, 1, 5, 1, 1)
    out = adain_last(lat)
    assert torch.equal(out[:, :, 0], lat[:, :, 0])
    m0, s0 = _stats(lat[:, :, 0])
    for f in range(1, 5):
        mf, sf = _stats(out[:, :, f])
        torch.testing.assert_close(mf, m0, atol=1e-5, rtol=0)
        torch.testing.assert_close(sf, s0, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, :, f], adain(lat[:, :, f], lat[:, :, 0]))


def _research_adain_on(latents, i):
    """Per-frame loop of the research pipeline, as described in docs/research.md#sampling (mode "on")."""
    latents = latents.clone()
    for f in range(1, latents.shape[2]):
        old = latents.clone()
        if i > 30:
            latents[:, :, f] = adain(latents[:, :, f], latents[:, :, 0])
        if f > 1:
            latents[:, :, f] = adain(old[:, :, f], old[:, :, 1])
    return latents


@pytest.mark.parametrize("step_index", [0, 30, 31, 49])
def test_adain_step(step_index):
    lat = _randn(2, 4, 6, 8, 9, seed=8) * torch.arange(1, 7).view(1, 1, 6, 1, 1) + 0.5
    before = lat.clone()
    out = adain_step(lat, step_index)
    assert torch.equal(lat, before)  # input untouched
    assert out.shape == lat.shape
    assert torch.equal(out[:, :, 0], lat[:, :, 0])
    torch.testing.assert_close(out, _research_adain_on(lat, step_index), atol=1e-5, rtol=1e-5)
    if step_index <= 30:
        assert torch.equal(out[:, :, 1], lat[:, :, 1])
    else:
        torch.testing.assert_close(out[:, :, 1], adain(lat[:, :, 1], lat[:, :, 0]))
    m1, s1 = _stats(out[:, :, 1])
    for f in range(2, 6):
        mf, sf = _stats(out[:, :, f])
        torch.testing.assert_close(mf, m1, atol=1e-5, rtol=0)
        torch.testing.assert_close(sf, s1, atol=1e-4, rtol=1e-5)
    two = adain_step(lat[:, :, :2], 40)
    torch.testing.assert_close(two[:, :, 1], adain(lat[:, :, 1], lat[:, :, 0]))


def test_check_adain_mode():
    for mode in ADAIN_MODES:
        assert check_adain_mode(mode) == mode
    with pytest.raises(ValueError, match=r"use_adain_norm='always'.*'off', 'on', 'last'"):
        check_adain_mode("always")


# ---------------------------------------------------------------- build_initial_latents


def test_build_lamp():
    z = _randn(1, 4, 1, 5, 6, seed=9)
    noise = _randn(2, 4, 4, 5, 6, seed=10)
    out = build_initial_latents(z, noise)
    assert out.shape == noise.shape
    assert torch.equal(out[:, :, :1], z.expand(2, -1, -1, -1, -1))
    assert torch.equal(out[:, :, 1:], noise[:, :, 1:])

    out = build_initial_latents(z, noise, shared_noise_ratio=0.2)
    torch.testing.assert_close(out[:, :, 1:], 0.2 * noise[:, :, :1] + 0.8 * noise[:, :, 1:])
    assert torch.equal(out[:, :, :1], z.expand(2, -1, -1, -1, -1))


def test_build_cinemo(ddim):
    abar = ddim.alphas_cumprod[975].item()
    z = _randn(1, 4, 1, 8, 10, seed=11)
    noise = _randn(2, 4, 5, 8, 10, seed=12)
    out = build_initial_latents(z, noise, first_frame_cond_type="cinemo", scheduler=ddim, shared_noise_ratio=0.05)
    mixed = mix_shared_noise(noise, 0.05)
    assert out.shape == noise.shape
    assert torch.equal(out[:, :, :1], z.expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(out[:, :, 1:], math.sqrt(abar) * z + math.sqrt(1 - abar) * mixed[:, :, 1:])

    for shape in ("rect", "tri"):
        out = build_initial_latents(
            z.half(),
            noise.half(),
            first_frame_cond_type="cinemo",
            use_dct_init=True,
            dct_cutoff_ratio=0.3,
            dct_cutoff_shape=shape,
            scheduler=ddim,
        )
        assert out.shape == noise.shape and out.dtype == torch.float16
        assert torch.equal(out[:, :, :1], z.half().expand(2, -1, -1, -1, -1))
        base = cinemo_base(z.half(), noise.half()[:, :, 1:], ddim)
        torch.testing.assert_close(out[:, :, 1:], dct_init(base, noise.half()[:, :, 1:], 0.3, shape))


def test_build_errors_name_arguments(ddim):
    z = torch.zeros(1, 4, 1, 5, 6)
    noise = torch.zeros(1, 4, 3, 5, 6)
    with pytest.raises(ValueError, match="use_dct_init"):
        build_initial_latents(z, noise, use_dct_init=True)
    with pytest.raises(ValueError, match="first_frame_cond_type='svd'.*'lamp', 'cinemo'"):
        build_initial_latents(z, noise, first_frame_cond_type="svd")
    with pytest.raises(ValueError, match="dct_cutoff_shape"):
        build_initial_latents(
            z, noise, first_frame_cond_type="cinemo", use_dct_init=True, dct_cutoff_shape="oval", scheduler=ddim
        )
    with pytest.raises(ValueError, match="dct_cutoff_ratio"):
        build_initial_latents(
            z, noise, first_frame_cond_type="cinemo", use_dct_init=True, dct_cutoff_ratio=2.0, scheduler=ddim
        )
    with pytest.raises(ValueError, match="shared_noise_ratio"):
        build_initial_latents(z, noise, shared_noise_ratio=-0.5)
    with pytest.raises(ValueError, match="scheduler"):
        build_initial_latents(z, noise, first_frame_cond_type="cinemo")
    with pytest.raises(ValueError, match="image_latent"):
        build_initial_latents(torch.zeros(1, 4, 1, 5, 7), noise)

"""Initial latents and per-step latent tricks for image-to-video sampling (docs/research.md#sampling).

Pure torch functions, no pipeline code. Latent videos are laid out as in diffusers AnimateDiff:
`(batch, channels, frames, height, width)`, with frame 0 the clean VAE latent of the input image, which is never
denoised. The pipeline (`pipeline_miva.py`) composes these:

- `build_initial_latents`: `z_T` from the image latent and the drawn noise (shared noise, "lamp" / "cinemo",
  DCTInit);
- `scale_timesteps` / `cil_analytic_noise_std`: CIL (smaller first timestep, analytic initial noise);
- `adain_step` (mode "on", after every scheduler step) and `adain_last` (mode "last", once after the loop).

DCTInit and its orthonormal 3-D DCT-II live in `dct.py` (re-exported here).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .dct import DCT_CUTOFF_SHAPES, dct_3d, dct_init, dct_low_pass_mask, dct_matrix, idct_3d

__all__ = [
    "ADAIN_MODES",
    "DCT_CUTOFF_SHAPES",
    "FIRST_FRAME_COND_TYPES",
    "CINEMO_TIMESTEP",
    "CIL_DATA_VARIANCE",
    "ADAIN_FRAME0_AFTER_STEP",
    "mix_shared_noise",
    "cinemo_base",
    "dct_matrix",
    "dct_3d",
    "idct_3d",
    "dct_low_pass_mask",
    "dct_init",
    "scale_timesteps",
    "cil_analytic_noise_std",
    "adain",
    "adain_step",
    "adain_last",
    "check_adain_mode",
    "build_initial_latents",
]

ADAIN_MODES = ("off", "on", "last")
FIRST_FRAME_COND_TYPES = ("lamp", "cinemo")
CINEMO_TIMESTEP = 975  # fixed forward-diffusion timestep of the "cinemo" base, independent of steps and CIL
CIL_DATA_VARIANCE = 0.566  # variance of the data (SD latents) in CIL Eq. 5
ADAIN_FRAME0_AFTER_STEP = 30  # mode "on": frame 1 is matched to frame 0 only for step_index > 30 (LAMP)


def _check_video(name: str, x: Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(
            f"{name} must be a latent video (batch, channels, frames, height, width), got {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------------------------------------------
# Shared noise and the "cinemo" base
# --------------------------------------------------------------------------------------------------------------


def mix_shared_noise(noise: Tensor, ratio: float) -> Tensor:
    """LAMP shared noise: `n_f <- ratio * n_0 + (1 - ratio) * n_f` for every frame `f >= 1`.

    Not variance preserving (as in the research code). Frame 0 is unchanged.

    Args:
        noise: `(batch, channels, frames, height, width)`.
        ratio: `shared_noise_ratio` in [0, 1]; 0 returns a copy of `noise`.

    Returns:
        A new tensor of the same shape and dtype.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"shared_noise_ratio={ratio!r} must be in [0, 1]")
    _check_video("noise", noise)
    if ratio == 0:
        return noise.clone()
    first = noise[:, :, :1]
    return torch.cat([first, ratio * first + (1 - ratio) * noise[:, :, 1:]], dim=2)


def cinemo_base(image_latent: Tensor, noise: Tensor, scheduler, timestep: int = CINEMO_TIMESTEP) -> Tensor:
    """Forward-diffuse the image latent, repeated over frames 1..F-1, to a fixed timestep ("cinemo").

    `scheduler.add_noise(z, eps, t)`, i.e. `sqrt(abar_t) * z + sqrt(1 - abar_t) * eps` for DDIM, with t = 975
    (abar_975 ~= 0.0062 for the SD schedule) regardless of the number of steps or CIL.

    Args:
        image_latent: `(batch or 1, channels, 1, height, width)`, the clean frame-0 latent.
        noise: `(batch, channels, frames - 1, height, width)`, the noise of frames 1..F-1.
        scheduler: any diffusers scheduler with `add_noise` (DDIM in the research setting).
        timestep: the forward-diffusion timestep.

    Returns:
        `(batch, channels, frames - 1, height, width)` in `noise.dtype`.
    """
    _check_video("image_latent", image_latent)
    _check_video("noise", noise)
    if image_latent.shape[2] != 1:
        raise ValueError(f"image_latent must have exactly one frame, got shape {tuple(image_latent.shape)}")
    image_latent = image_latent.to(device=noise.device, dtype=noise.dtype)
    original = image_latent.expand(noise.shape[0], -1, noise.shape[2], -1, -1)
    timesteps = torch.full((1,), int(timestep), dtype=torch.long, device=noise.device)
    return scheduler.add_noise(original, noise, timesteps)


# --------------------------------------------------------------------------------------------------------------
# CIL
# --------------------------------------------------------------------------------------------------------------


def scale_timesteps(timesteps: Tensor, ratio: float) -> Tensor:
    """CIL: `round(t * ratio)` (round half to even, as `torch.round`), in the dtype of `timesteps`.

    E.g. DDIM 50 steps `[981, 961, ..., 1] * 0.9 -> [883, 865, ..., 1]`. The pipeline passes the scaled t to the
    UNet and to `scheduler.step`; DDIM still steps with its original spacing (`prev_t = t - 20` from the scaled t,
    not to the next scaled timestep), as in the research code.

    Args:
        timesteps: `(num_steps,)`, usually `scheduler.timesteps` (long).
        ratio: `cil_ratio` > 0; 1 returns a copy.
    """
    if not ratio > 0:
        raise ValueError(f"cil_ratio={ratio!r} must be > 0")
    if ratio == 1:
        return timesteps.clone()
    return torch.round(timesteps * ratio).to(timesteps.dtype)


def cil_analytic_noise_std(alphas_cumprod: Tensor, first_timestep: int) -> float:
    """Std of CIL's analytic initial noise (CIL Eq. 5): `sqrt(abar_M * 0.566 + (1 - abar_M))`, M the first
    (scaled) timestep. The initial noise is drawn as `std * N(0, I)`."""
    abar = float(alphas_cumprod[int(first_timestep)])
    return math.sqrt(abar * CIL_DATA_VARIANCE + (1.0 - abar))


# --------------------------------------------------------------------------------------------------------------
# AdaIN
# --------------------------------------------------------------------------------------------------------------


def _mean_std(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True, correction=1)
    return mean, (var + eps).sqrt()


def adain(x: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Adaptive instance normalisation: `(x - mu_x) / sigma_x * sigma_ref + mu_ref`.

    Mean and std are taken per (batch, channel) over (height, width), with `std = sqrt(var_unbiased + eps)`.

    Args:
        x: `(batch, channels, height, width)`, one frame; more leading axes (e.g. `(B, C, F, h, w)`) are treated
            as independent frames.
        reference: a tensor whose statistics broadcast against x's, e.g. `(batch, channels, height, width)` or
            `(B, C, 1, h, w)` for a frames axis in x.
        eps: added to the unbiased variance.

    Returns:
        Same shape and dtype as `x`; computed in float32.
    """
    x32 = x.float()
    mu_x, sigma_x = _mean_std(x32, eps)
    mu_ref, sigma_ref = _mean_std(reference.float(), eps)
    return ((x32 - mu_x) / sigma_x * sigma_ref + mu_ref).to(x.dtype)


def adain_step(latents: Tensor, step_index: int) -> Tensor:
    """AdaIN mode "on" (LAMP), applied after scheduler step `step_index` (0-based loop index).

    Net effect of the research loop: frame 1 is matched to frame 0 only when `step_index > 30`; then frames
    2..F-1 are matched to frame 1 (frame 1 taken after its own update). Frame 0 is untouched.

    Args:
        latents: `(batch, channels, frames, height, width)`.

    Returns:
        A new tensor of the same shape.
    """
    _check_video("latents", latents)
    if latents.shape[2] < 2:
        return latents.clone()
    first, second = latents[:, :, :1], latents[:, :, 1:2]
    if step_index > ADAIN_FRAME0_AFTER_STEP:
        second = adain(second, first)
    rest = latents[:, :, 2:]
    if rest.shape[2]:
        rest = adain(rest, second)
    return torch.cat([first, second, rest], dim=2)


def adain_last(latents: Tensor) -> Tensor:
    """AdaIN mode "last": after the loop, every frame f >= 1 is matched to frame 0 (the clean latent) once.

    Args:
        latents: `(batch, channels, frames, height, width)`.

    Returns:
        A new tensor of the same shape, frame 0 untouched.
    """
    _check_video("latents", latents)
    first = latents[:, :, :1]
    return torch.cat([first, adain(latents[:, :, 1:], first)], dim=2)


def check_adain_mode(mode: str) -> str:
    """Return `mode` if it is one of `ADAIN_MODES`, else raise a ValueError naming `use_adain_norm`."""
    if mode not in ADAIN_MODES:
        raise ValueError(f"use_adain_norm={mode!r} is not one of {ADAIN_MODES}")
    return mode


# --------------------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------------------


def build_initial_latents(
    image_latent: Tensor,
    noise: Tensor,
    *,
    first_frame_cond_type: str = "lamp",
    shared_noise_ratio: float = 0.0,
    use_dct_init: bool = False,
    dct_cutoff_ratio: float = 0.23,
    dct_cutoff_shape: str = "rect",
    scheduler=None,
) -> Tensor:
    """`z_T` for image-to-video sampling (docs/research.md#sampling).

    1. `noise <- mix_shared_noise(noise, shared_noise_ratio)`.
    2. "lamp": `z_T = noise` with frame 0 replaced by the clean image latent.
       "cinemo": `base = cinemo_base(image_latent, noise[:, :, 1:], scheduler)` (t = 975), optionally
       `base = dct_init(base, noise[:, :, 1:], dct_cutoff_ratio, dct_cutoff_shape)`; `z_T = [image_latent, base]`.

    Args:
        image_latent: `(1 or batch, channels, 1, height, width)`, the clean frame-0 latent (already scaled by the
            VAE scaling factor); batch 1 is expanded to the noise's batch.
        noise: `(batch, channels, frames, height, width)`, frames >= 2.
        scheduler: needed for "cinemo" (its `add_noise`).

    Returns:
        `(batch, channels, frames, height, width)` in `noise.dtype` on `noise.device`.
    """
    if first_frame_cond_type not in FIRST_FRAME_COND_TYPES:
        raise ValueError(f"first_frame_cond_type={first_frame_cond_type!r} is not one of {FIRST_FRAME_COND_TYPES}")
    if use_dct_init and first_frame_cond_type != "cinemo":
        raise ValueError(
            f"use_dct_init=True requires first_frame_cond_type='cinemo', got {first_frame_cond_type!r}; "
            "set first_frame_cond_type='cinemo' or use_dct_init=False"
        )
    if use_dct_init:  # validate before any work
        dct_low_pass_mask(1, 1, 1, dct_cutoff_ratio, dct_cutoff_shape)
    if first_frame_cond_type == "cinemo" and scheduler is None:
        raise ValueError("first_frame_cond_type='cinemo' needs a scheduler (for add_noise)")
    _check_video("image_latent", image_latent)
    _check_video("noise", noise)
    batch, channels, frames, height, width = noise.shape
    if frames < 2:
        raise ValueError(f"noise must have at least 2 frames (num_frames >= 2), got {frames}")
    if image_latent.shape[0] not in (1, batch) or tuple(image_latent.shape[1:]) != (channels, 1, height, width):
        raise ValueError(
            f"image_latent {tuple(image_latent.shape)} does not match noise {tuple(noise.shape)}: expected "
            f"(1 or {batch}, {channels}, 1, {height}, {width})"
        )

    noise = mix_shared_noise(noise, shared_noise_ratio)
    image_latent = image_latent.to(device=noise.device, dtype=noise.dtype).expand(batch, -1, -1, -1, -1)
    rest = noise[:, :, 1:]
    if first_frame_cond_type == "cinemo":
        rest = cinemo_base(image_latent, rest, scheduler)
        if use_dct_init:
            rest = dct_init(rest, noise[:, :, 1:], dct_cutoff_ratio, dct_cutoff_shape)
    return torch.cat([image_latent, rest], dim=2)

"""Shared fixtures: offline tiny components from :mod:`miva.tiny`, fresh for every test."""

import os

# Before diffusers / transformers are imported anywhere: never touch the network, keep the logs quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Idle OpenMP threads sleep instead of spinning: tiny models gain nothing from spinning, and on a busy 2-core
# machine spinning threads slow each other down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from miva.tiny import make_test_image, tiny_components, tiny_unet_motion  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def components():
    """A fresh ``tiny_components(seed=0)`` dict (2-D UNet + motion adapter, VAE, CLIP text/image parts, DDIM)."""
    return tiny_components(seed=0)


@pytest.fixture
def unet_motion():
    """A fresh tiny ``UNetMotionModel`` (seed 0, eval mode, up to 32 frames)."""
    return tiny_unet_motion(seed=0)


@pytest.fixture
def test_image():
    """A deterministic 64x64 RGB picture (gradient and shapes)."""
    return make_test_image(64, 64, seed=0)

"""Fixtures of the loader tests: one tiny UNet per module, and a fresh `BarePipe` on a copy of it per test."""

import copy

import pytest
from bare_pipe import BarePipe

from miva.tiny import tiny_unet_motion


@pytest.fixture(scope="module")
def base_unet():
    return tiny_unet_motion(seed=0)


@pytest.fixture
def pipe(base_unet):
    return BarePipe(copy.deepcopy(base_unet))

"""Fixtures of the pipeline tests: the tiny MIVA pipeline, the stock AnimateDiff pipeline on the same seeded
components (the reference), and the test image."""

import pytest
from diffusers import AnimateDiffPipeline

from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def image():
    return make_test_image(IMAGE_SIZE, IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def pipe():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock():
    stock = AnimateDiffPipeline(**tiny_components(seed=0))
    stock.set_progress_bar_config(disable=True)
    return stock

"""Issue 30 item 4 in a real headless browser: paint a region for adapter 1 on the input image and type a ramp
schedule; Generate hands the pipeline a mask where the stroke was (aligned with the image after its crop) and the
ramp. The page is served in this process (so the pipeline call can be recorded; its region arguments are taken out
before the real call, which runs before the pipeline has them). Chromium and Playwright as in test_app.py."""

import importlib.util
import os
import socket
import tempfile
import time

import numpy as np
import pytest

CHROMIUM = os.environ.get("MIVA_TEST_CHROMIUM", "/usr/bin/chromium")
REGION_ARGS = ("adapter_masks", "adapter_schedules")

pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (see test_app.py)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="Playwright is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="Gradio is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The tiny base's page with one adapter, served here; yields (url, recorded region arguments per call)."""
    from miva import MIVAAdapterConfig, MIVAPipeline
    from miva.app.bases import resolve_base
    from miva.app.layout import build_app
    from miva.app.registry import AdapterRegistry
    from miva.tiny import tiny_components

    calls, real = [], MIVAPipeline.__call__

    def call(self, *args, **kwargs):
        calls.append({k: kwargs.pop(k) for k in REGION_ARGS if k in kwargs})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MIVAPipeline, "__call__", call)
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("wave", MIVAAdapterConfig(use_i2v=True))
    adapter = pipe.save_adapter("wave", tmp_path / "wave")
    app = build_app(resolve_base("tiny"), AdapterRegistry({"wave": adapter}), tmp_path)
    _, url, _ = app.blocks.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                                  quiet=True)
    try:
        yield url, calls
    finally:
        app.blocks.close()


def test_painted_region_and_ramp_reach_the_pipeline(served, tmp_path):
    from playwright.sync_api import sync_playwright

    from miva.tiny import make_test_image

    url, calls = served
    image = tmp_path / "wide.png"
    make_test_image(96, 64, seed=3).save(image)  # wider than the 64x64 video: the pipeline crops columns 16..79
    profile = tempfile.mkdtemp(prefix="miva-chromium-")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=["--headless", "--no-sandbox", "--disable-gpu"],
                                                       viewport={"width": 1280, "height": 1400})
        page = browser.new_page()
        page.set_default_timeout(300_000)  # a loaded machine takes ~50 s to render the page (30 s by default)
        page.goto(url)
        page.wait_for_selector("#generate")
        page.set_input_files("#input-image input[type=file]", str(image))
        page.wait_for_selector("#input-image img")
        page.click("#adapter-0 input")
        page.get_by_role("option", name="wave", exact=True).click()
        page.get_by_text("Adapter 1: where and when it acts").click()
        canvas = page.locator("#adapter-0-region canvas").first
        canvas.wait_for()
        time.sleep(2)  # the editor draws the input image as its background
        page.fill("#adapter-0-schedule textarea", "1 -> 0")
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2 - 60  # left of the image's centre
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x, y + 120, steps=12)  # a vertical stroke near the image's left edge
        page.mouse.up()
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#animate-status').innerText.includes('frames')",
                               timeout=300_000)
        status = page.inner_text("#animate-status")
        browser.close()
    assert "wave x1" in status, status
    (call,) = calls
    assert list(call["adapter_schedules"]) == ["wave"]
    np.testing.assert_allclose(call["adapter_schedules"]["wave"], np.linspace(1, 0, 8), atol=1e-6)
    mask = call["adapter_masks"]["wave"]
    assert mask.shape == (64, 64)
    assert mask[24:40, :4].min() == 1.0  # the stroke: on the left of the cropped image, in the middle rows
    assert mask[:, 32:].max() == 0.0  # nothing painted right of the image's centre

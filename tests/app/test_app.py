"""`miva app` in a real headless browser: the command serves the page on 127.0.0.1 (a free port), and Playwright drives
the operating system's Chromium (`/usr/bin/chromium`; Debian: `apt-get install -y chromium chromium-driver`; no
browser is ever downloaded). Skipped, saying why, when Chromium, Playwright or Gradio is missing; `.ci/run` installs
all three.

Set MIVA_APP_SCREENSHOT=docs/app.png to also write the README's screenshot (a small palette PNG).
"""

import importlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

CHROMIUM = os.environ.get("MIVA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
# Seconds to wait: importing torch + gradio and building the base, then one Generate or training run. A machine
# shared with heavier work may need more (MIVA_APP_TEST_WAIT_S scales both).
WAIT_SCALE = float(os.environ.get("MIVA_APP_TEST_WAIT_S", "300")) / 300
SERVER_START_S = 300 * WAIT_SCALE
GENERATE_S = 600 * WAIT_SCALE
FRAMES = 6  # not the form's default (8 on tiny): the test checks that the form's value reaches the pipeline

pytestmark = [
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium chromium-driver; .ci/run does it)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="Playwright is not installed (pip install -e .[dev])"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gradio") is None, reason="Gradio is not installed (pip install -e .[app])"
    ),
]


def world_or_none():
    """`miva.world` when this install has the shipped MotionWorld base, else None."""
    try:
        world = importlib.import_module("miva.world")
        world.load_pipeline, world.shipped_adapters, world.scene_image  # noqa: B018 (the API the app uses)
    except (ImportError, AttributeError):
        return None
    return world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`miva app ...` in a subprocess, on 127.0.0.1 and a free port; its output goes to `<out>/server.log`."""

    def __init__(self, args: list[str], out: Path):
        self.port, self.out = free_port(), out
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log = open(out / "server.log", "w")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-m", "miva.cli", "app", *args, "--port", str(self.port), "--out", str(out)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=out)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"miva app exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        pytest.fail(f"miva app did not serve {self.url} within {SERVER_START_S} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.out / "server.log").read_text()[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    """A fresh headless Chromium (its own user-data dir), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="miva-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """`miva app --base tiny` with one adapter made here (its zero-initialised outputs randomised, so it acts)."""
    from miva import MIVAAdapterConfig, MIVAPipeline
    from miva.demo import randomise_adapter_outputs
    from miva.tiny import tiny_components

    out = tmp_path_factory.mktemp("tiny_app")
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("wave", MIVAAdapterConfig(use_i2v=True, use_motion_lora=True, use_ca_lora=True))
    randomise_adapter_outputs(pipe, "wave", seed=1)
    adapter = pipe.save_adapter("wave", out / "adapters" / "wave")
    server = AppServer(["--base", "tiny", "--adapter", f"wave={adapter}"], out)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world_app(tmp_path_factory):
    world = world_or_none()
    if world is None:
        pytest.skip("miva.world (the shipped MotionWorld base) is not importable in this install")
    server = AppServer(["--base", "world"], tmp_path_factory.mktemp("world_app"))
    try:
        server.wait_ready()
        yield server, world
    finally:
        server.stop()


def decode_frames(data: bytes) -> np.ndarray:
    """`(F, H, W, 3)` uint8 frames of an mp4, decoded with imageio-ffmpeg."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        reader = imageio_ffmpeg.read_frames(f.name)
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader])


def pick_adapter(page, slot: int, name: str) -> None:
    page.click(f"#adapter-{slot} input")
    page.get_by_role("option", name=name, exact=True).click()


def set_number(page, elem_id: str, value) -> None:
    """Type into a slider's number box and commit it (the slider follows)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def generate(page, image: Path, adapter: str, frames: int, prompt: str | None = None) -> tuple[bytes, float]:
    """Upload `image`, pick `adapter`, set `frames`, press Generate; returns the served mp4 and the seconds from the
    click to a playable video element."""
    page.set_input_files("#input-image input[type=file]", str(image))
    page.wait_for_selector("#input-image img")
    pick_adapter(page, 0, adapter)
    set_number(page, "frames", frames)
    if prompt is not None:
        page.fill("#prompt textarea", prompt)
    start = time.perf_counter()
    page.click("#generate")
    page.wait_for_function(
        "() => { const v = document.querySelector('#output-video video'); return v && v.readyState >= 1; }",
        timeout=GENERATE_S * 1000,
    )
    seconds = time.perf_counter() - start
    video = page.locator("#output-video video")
    # Chromium itself decoded the file's header: the codec and container play in a browser.
    assert page.evaluate("() => document.querySelector('#output-video video').videoWidth") > 0
    response = page.request.get(video.get_attribute("src"))
    assert response.ok, response.status
    return response.body(), seconds


def save_readme_screenshot(png: bytes, path: str) -> None:
    """A small palette PNG of the page for the README."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        REPO / path, optimize=True
    )


def test_animate_in_browser(browser, tiny_app, tmp_path):
    from playwright.sync_api import expect

    from miva.tiny import make_test_image

    page = browser.new_page()
    page.goto(tiny_app.url)
    page.wait_for_selector("#generate")
    # Bad input: Generate without an image is a message in the page, and the server keeps serving.
    page.click("#generate")
    page.get_by_text("no image: upload an image").first.wait_for(timeout=60_000)
    page.reload()  # a clean page (no message) for the screenshot below
    page.wait_for_selector("#generate")
    image = tmp_path / "input.png"
    make_test_image(64, 64, seed=4).save(image)
    data, seconds = generate(page, image, "wave", FRAMES)
    frames = decode_frames(data)
    assert frames.shape == (FRAMES, 64, 64, 3)
    assert frames.std(axis=0).mean() > 1.0  # frames 1..F-1 are sampled, not copies of frame 0
    status = page.inner_text("#animate-status")
    assert f"{FRAMES} frames, 64x64" in status and "wave x1" in status, status
    downloads = page.inner_text("#downloads")
    assert ".mp4" in downloads and ".gif" in downloads, downloads
    # A file named like an image that is not one (Gradio itself refuses other extensions): one line at upload;
    # Generate then fails and the previous video stays.
    video_src = page.locator("#output-video video").get_attribute("src")
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    page.set_input_files("#input-image input[type=file]", str(fake))
    message = "Image: fake.png is not an image file; upload a PNG, JPEG, WebP or GIF picture"
    page.get_by_text(message).first.wait_for(timeout=60_000)
    page.click("#generate")
    expect(page.locator("#animate-status")).to_contain_text(
        f"Not generated (the video shown is the previous one): {message}"
    )
    assert page.locator("#output-video video").get_attribute("src") == video_src
    assert "Traceback" not in tiny_app.output(), tiny_app.output()  # user errors leave no traceback in the log
    print(f"\n[tiny] Generate -> playable video: {seconds:.1f} s ({FRAMES} frames, 64x64)", file=sys.stderr)
    page.close()


def test_train_in_browser(browser, tiny_app, tmp_path):
    from playwright.sync_api import expect

    from miva.training.synthetic import write_synthetic_dataset

    clips = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=10, fmt="mp4")
    page = browser.new_page()
    page.goto(tiny_app.url)
    page.get_by_role("tab", name="Train").click()
    page.set_input_files("#train-clips input[type=file]", [str(c) for c in clips])
    expect(page.locator("#train-clips")).to_contain_text("clip_002", timeout=GENERATE_S * 1000)  # uploaded
    page.fill("#train-name textarea", "pw_motion")
    page.fill("#train-steps input", "3")
    page.click("#train")
    page.get_by_text("pw_motion: done, 3 steps").first.wait_for(timeout=GENERATE_S * 1000)
    # The live plot drew the trainer's loss log; the adapter comes back as a zip of the native folder.
    assert page.locator("#loss-plot svg, #loss-plot canvas").count() > 0
    job = tiny_app.out / "train" / "pw_motion-1"
    assert [line.count('"step"') for line in (job / "train_log.jsonl").read_text().splitlines()] == [1, 1, 1]
    link = page.locator("#train-zip a[href]").first
    response = page.request.get(link.get_attribute("href"))
    with zipfile.ZipFile(io.BytesIO(response.body())) as z:
        assert {"adapter_config.json", "miva_adapter.safetensors"} <= set(z.namelist())
    # ... and the Animate tab lists it.
    page.get_by_role("tab", name="Animate").click()
    page.click("#adapter-1 input")
    assert page.get_by_role("option", name="pw_motion", exact=True).count() == 1
    page.close()


def test_animate_in_browser_world(browser, world_app, tmp_path):
    """The world base's page: the shipped adapters (labelled from their validation records), the world's sampling,
    a video; and the README's screenshot (MIVA_APP_SCREENSHOT=docs/app.png)."""
    server, world = world_app
    page = browser.new_page()
    page.set_viewport_size({"width": 1100, "height": 760})
    page.goto(server.url)
    page.wait_for_selector("#generate")
    image = tmp_path / "scene.png"
    world.scene_image(0).save(image)
    data, seconds = generate(page, image, "right", 8, prompt=world.make_scene("heldout", 0).prompt)
    frames = decode_frames(data)
    assert frames.shape[0] == 8 and frames.shape[-1] == 3
    assert frames.std(axis=0).mean() > 1.0
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(0, 0)
    # Frame 3 of the video on screen (moved, before this small base lets the scene dissolve), paused.
    page.evaluate("() => { const v = document.querySelector('#output-video video'); v.pause(); v.currentTime = 0.4; }")
    page.wait_for_timeout(1000)
    png = page.screenshot(full_page=False)
    if os.environ.get("MIVA_APP_SCREENSHOT"):
        save_readme_screenshot(png, os.environ["MIVA_APP_SCREENSHOT"])
    # The pickers label the shipped adapters whose validation records say they do not make their motion yet.
    page.click("#adapter-1 input")
    options = page.get_by_role("option").all_inner_texts()
    assert any(o.startswith("zoom_in (does not make its motion yet") for o in options), options
    print(f"\n[world] Generate -> playable video: {seconds:.1f} s (8 frames, adapter right)", file=sys.stderr)
    page.close()

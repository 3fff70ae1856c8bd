"""`miva app` serves each base with its own defaults, and says what went wrong in one line in the form's words.

Without a browser: the page is built in-process (`build_app`) and its components' starting values are read; the
Animate and Train callbacks are called with their forms' values. test_app.py drives the page in Chromium."""

import json
import logging
import random
import warnings
from pathlib import Path

import pytest

from miva.app.animate import Animator, BadUpload, on_generate
from miva.app.bases import resolve_base
from miva.app.layout import AdapterRow, AnimateForm, TrainForm
from miva.app.registry import AdapterRegistry, AppInputError
from miva.app.training import TrainingManager, TrainRequest, on_train
from miva.tiny import make_test_image
from miva.training.synthetic import write_synthetic_dataset

gr = pytest.importorskip("gradio")
world = pytest.importorskip("miva.world")


@pytest.fixture(scope="module")
def world_page(tmp_path_factory):
    from miva.app.layout import build_app

    base = resolve_base("world")
    return build_app(base, AdapterRegistry(base.shipped_adapters), tmp_path_factory.mktemp("world_page"))


def test_world_animate_tab_samples_as_the_world_does(world_page):
    """The world's sampling (research latent init, DCT, AdaIN "last"; frames, steps, guidance) and the frames slider
    capped at the motion module's maximum, read from the shipped base's own config."""
    from miva.world.evaluate import SAMPLING

    form = world_page.animate
    assert form.sampling["first_frame_cond_type"].value == SAMPLING["first_frame_cond_type"] == "cinemo"
    assert form.sampling["use_dct_init"].value is SAMPLING["use_dct_init"] is True
    assert form.sampling["use_adain_norm"].value == SAMPLING["use_adain_norm"] == "last"
    assert (form.num_frames.value, form.steps.value, form.guidance.value) == (8, 25, 1.0)
    config = json.loads((world.BASE_PATH / "motion_adapter" / "config.json").read_text())
    assert form.num_frames.maximum == config["motion_max_seq_length"] == 24
    assert world_page.train.num_frames.maximum == 24


def test_world_train_tab_starts_from_the_world_recipe(world_page, tmp_path):
    """No random flip (a visible switch), the recipe's lr, rank and parts (CA-LoRA on); the config the app trains
    with carries the recipe's adapter settings and batch size, the flip only when the switch is on."""
    from miva.world.adapters import world_train_config

    form = world_page.train
    recipe = world_train_config(".", ".", adapter_name="x")
    assert form.random_flip.value is False and form.random_flip.label == "Random flip"
    assert form.learning_rate.value == recipe["learning_rate"] == 3e-3
    assert form.rank.value == recipe["adapter"]["motion_lora_rank"] == 16
    assert form.parts.value == ["i2v", "motion_lora", "ca_lora"]
    assert (form.steps.value, form.num_frames.value, form.stride.value) == (600, 8, 1)

    clips = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=10, fmt="gif")
    manager = world_page.trainer
    request = TrainRequest(
        "flat",
        clips=[str(c) for c in clips],
        parts=form.parts.value,
        steps=5,
        learning_rate=form.learning_rate.value,
        num_frames=8,
        rank=form.rank.value,
        random_flip=form.random_flip.value,
    )
    config = manager.config_for(request, tmp_path / "job")
    assert config.random_flip is False and config.learning_rate == 3e-3 and config.train_batch_size == 2
    adapter = config.adapter
    assert (adapter.use_i2v, adapter.use_motion_lora, adapter.use_ca_lora) == (True, True, True)
    assert (adapter.sa_mode, adapter.i2v_train_q, adapter.motion_lora_rank, adapter.ca_lora_rank) == (
        "first",
        True,
        16,
        16,
    )
    assert adapter.motion_lora_scale == 16.0  # the recipe's alpha = rank
    assert config.validation.pipeline_kwargs == {
        "first_frame_cond_type": "cinemo",
        "use_dct_init": True,
        "use_adain_norm": "last",
    }
    flipped = manager.config_for(
        TrainRequest("flip", clips=[str(c) for c in clips], num_frames=8, rank=8, random_flip=True),
        tmp_path / "job2",
    )
    assert (
        flipped.random_flip is True
        and flipped.adapter.motion_lora_rank == 8
        and flipped.adapter.motion_lora_scale == 8.0
    )


def test_shipped_adapters_that_do_not_make_their_motion_say_so(world_page, tmp_path):
    """The note comes from each adapter's training.json (its validation class accuracy), not from a list of names."""
    from miva.app.bases import motion_note

    labels = dict((value, label) for label, value in world_page.registry.labelled_choices())
    for name, folder in world.shipped_adapters().items():
        record = json.loads((folder / "training.json").read_text())
        scores = record.get("validation", {}).get(str(record["seed"]))
        if scores is not None and scores["class_accuracy"] >= 0.5:
            assert labels[name] == name
        else:
            assert labels[name].startswith(f"{name} (") and labels[name] != name, labels[name]
    assert any("does not make its motion yet" in label for label in labels.values())  # the records say so of some
    folder = tmp_path / "made_up"
    folder.mkdir()
    record = {"seed": 3, "validation": {"3": {"class_accuracy": 0.25}, "0": {"class_accuracy": 0.9}}}
    (folder / "training.json").write_text(json.dumps(record))
    assert motion_note(folder) == "does not make its motion yet: 25% of validation videos make it"
    record["validation"]["3"]["class_accuracy"] = 0.6
    (folder / "training.json").write_text(json.dumps(record))
    assert motion_note(folder) == ""
    (folder / "training.json").write_text(json.dumps({"seed": 0}))
    assert motion_note(folder) == "motion not validated"


# ------------------------------------------------------------------------------------------------ Animate callback
class Box:
    """A stand-in for one Gradio component: a dict key with a name."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def animate_form() -> AnimateForm:

    form = AnimateForm(
        **{
            k: Box(k)
            for k in (
                "image",
                "prompt",
                "negative_prompt",
                "parallel_mode",
                "num_frames",
                "steps",
                "guidance",
                "seed",
                "random_seed",
                "ca_maps",
                "video",
                "downloads",
                "gallery",
                "status",
            )
        }
    )
    form.adapters = [AdapterRow(Box("a"), Box("w"), Box("p"))]
    return form


def form_values(form, **changes) -> dict:
    values = {
        "image": make_test_image(64, 64, seed=2),
        "prompt": "a waterfall",
        "negative_prompt": "",
        "parallel_mode": "residual",
        "num_frames": 4,
        "steps": 2,
        "guidance": 1.0,
        "seed": 0,
        "random_seed": False,
        "ca_maps": False,
        "a": "(none)",
        "w": 1.0,
        "p": "",
        **changes,
    }
    named = {getattr(form, k): v for k, v in values.items() if hasattr(form, k)}
    return {
        **named,
        form.adapters[0].choice: values["a"],
        form.adapters[0].weight: values["w"],
        form.adapters[0].prompt: values["p"],
    }


@pytest.fixture(scope="module")
def tiny_animator(tmp_path_factory):
    return Animator(resolve_base("tiny"), AdapterRegistry(), tmp_path_factory.mktemp("tiny"))


def test_random_seed_is_used_and_shown(tiny_animator, monkeypatch):
    form = animate_form()
    monkeypatch.setattr(random, "randrange", lambda n: 12345)
    out = on_generate(tiny_animator, form, form_values(form, seed=7, random_seed=True), lambda *a, **k: None)
    assert out[form.seed] == 12345 and "seed 12345" in out[form.status]
    assert out[form.video].endswith("_seed12345.mp4")  # the generator's seed: the file is named after it
    fixed = on_generate(tiny_animator, form, form_values(form, seed=7), lambda *a, **k: None)
    assert fixed[form.seed] == 7 and fixed[form.video].endswith("_seed7.mp4")


def test_a_failed_generate_keeps_the_previous_video_and_logs_no_traceback(tiny_animator, caplog):
    form = animate_form()
    ok = on_generate(tiny_animator, form, form_values(form), lambda *a, **k: None)
    assert set(ok) == {form.video, form.downloads, form.gallery, form.status, form.seed}
    caplog.set_level(logging.INFO, logger="miva.app")
    limit = tiny_animator.pipe.unet.config.motion_max_seq_length
    for bad, message in [
        ({"image": None}, "no image: upload an image (or click an example) before pressing Generate"),
        (
            {"image": BadUpload("notes.txt")},
            "Image: notes.txt is not an image file; upload a PNG, JPEG, WebP or GIF picture",
        ),
        (
            {"num_frames": limit + 1},
            f"Frames = {limit + 1}: this base makes 2 to {limit} frames (frame 0 is the image itself)",
        ),
        ({"seed": None}, "Seed: enter a number, or tick Random seed"),
    ]:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            out = on_generate(tiny_animator, form, form_values(form, **bad), lambda *a, **k: None)
        assert set(out) == {form.status}, out  # the video, downloads and maps stay as they were
        assert out[form.status] == f"**Not generated** (the video shown is the previous one): {message}"
        assert [str(w.message) for w in shown] == [message]  # the page's warning (a Python warning off the page)
    assert not [r for r in caplog.records if r.exc_info], "a user error logged a traceback"


def test_an_upload_that_is_not_an_image_is_one_line(tmp_path):
    from gradio.data_classes import ImageData

    import miva.app.upload
    from miva.app.upload import checked_image

    text = tmp_path / "upload.bin"
    text.write_text("hello")
    image = checked_image(type="pil")
    assert not list(Path(miva.app.upload.__file__).parent.glob("*.pyi"))  # Gradio wrote no stub into the package
    assert image.preprocess(ImageData(path=str(text), orig_name="notes.txt")) == BadUpload("notes.txt")
    png = tmp_path / "ok.png"
    make_test_image(64, 64, seed=0).save(png)
    assert image.preprocess(ImageData(path=str(png), orig_name="ok.png")).size == (64, 64)


# ------------------------------------------------------------------------------------------------ Train callback
def test_train_errors_reach_the_page_without_a_traceback(tmp_path):

    form = TrainForm(
        **{
            k: Box(k)
            for k in (
                "clips",
                "folder",
                "prompt",
                "name",
                "parts",
                "steps",
                "learning_rate",
                "num_frames",
                "stride",
                "rank",
                "random_flip",
                "seed",
                "status",
                "timer",
                "plot",
                "zip",
            )
        }
    )
    values = {
        form.clips: None,
        form.folder: "",
        form.prompt: "",
        form.name: "m",
        form.parts: ["i2v"],
        form.steps: 10,
        form.learning_rate: None,
        form.num_frames: 8,
        form.stride: 1,
        form.rank: 4,
        form.random_flip: False,
        form.seed: 0,
    }
    manager = TrainingManager(resolve_base("tiny"), AdapterRegistry(), tmp_path)
    with pytest.raises(gr.Error) as caught:
        on_train(manager, form, values)
    assert caught.value.message == "Learning rate: enter a number" and caught.value.print_exception is False
    values[form.learning_rate] = 1e-3
    bad = [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"]
    for path in bad:
        path.write_bytes(b"<not a video>")
    values[form.clips] = [str(p) for p in bad]
    with pytest.raises(gr.Error) as caught:
        on_train(manager, form, values)
    reason = "(Invalid data found when processing input)"
    assert caught.value.message == "<br>".join(f"{p.name}: not a readable video {reason}" for p in bad)


def test_stop_ends_training_after_the_current_step(tmp_path):
    clips = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=10, fmt="gif")
    registry = AdapterRegistry()
    manager = TrainingManager(resolve_base("tiny"), registry, tmp_path / "app")
    assert manager.stop() == "no training is running"
    job = manager.start(TrainRequest("long", clips=[str(c) for c in clips], prompt="a", steps=500, num_frames=4))
    import time

    deadline = time.monotonic() + 300
    while not job.losses() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager.stop() == "**long**: stopping after the current step ..."
    job.join(timeout=300)
    steps = [step for step, _ in job.losses()]
    assert job.state == "stopped" and not job.running and 1 <= len(steps) < 500, (job.state, steps)
    assert (
        job.summary().startswith(f"**long**: stopped at step {steps[-1]}/500") and "no adapter saved" in job.summary()
    )
    assert registry.names() == [] and job.adapter_path is None
    again = manager.start(TrainRequest("next", clips=[str(c) for c in clips], prompt="a", steps=1, num_frames=4))
    again.join(timeout=300)
    assert again.state == "done", again.error
    with pytest.raises(AppInputError):
        manager.start(TrainRequest("x"))

"""`miva app` without a browser: what the Animate and Train tabs do (`miva.app.animate`, `miva.app.training`), the
adapter registry, and the command's one-line errors. The page itself is driven in a real browser in test_app.py."""

import sys
import zipfile

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from miva import MIVAAdapterConfig, MIVAPipeline
from miva.app.animate import AdapterPick, AnimateRequest, Animator
from miva.app.bases import BaseUnavailable, resolve_base
from miva.app.registry import NO_ADAPTER, AdapterRegistry, AppInputError, parse_adapter_argument
from miva.app.training import TrainingManager, TrainRequest, adapter_config_for
from miva.demo import randomise_adapter_outputs
from miva.tiny import make_test_image, tiny_components
from miva.training.synthetic import write_synthetic_dataset

FRAMES, STEPS, SEED = 6, 3, 5
PROMPT = "a waterfall"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A native adapter folder for the tiny base whose zero-initialised outputs were randomised (so it acts)."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("wave", MIVAAdapterConfig(use_i2v=True, use_motion_lora=True, use_ca_lora=True))
    randomise_adapter_outputs(pipe, "wave", seed=3)
    return pipe.save_adapter("wave", tmp_path_factory.mktemp("adapters") / "wave")


@pytest.fixture(scope="module")
def animator(tmp_path_factory, adapter_dir):
    return Animator(resolve_base("tiny"), AdapterRegistry({"wave": adapter_dir}), tmp_path_factory.mktemp("app"))


def decode_mp4(path) -> np.ndarray:
    """`(F, H, W, 3)` uint8 frames of an mp4, read with imageio-ffmpeg (not with the app's writer)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def direct_video(image, adapter_dir=None, weight=1.0) -> np.ndarray:
    """The reference: the same animation with `MIVAPipeline` called directly."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    if adapter_dir is not None:
        pipe.load_adapters(str(adapter_dir), weights=[weight])
    frames = pipe(
        image=image,
        prompt=PROMPT,
        num_frames=FRAMES,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(SEED),
        output_type="np",
    ).frames[0]
    return frames


def request(image, adapters, **kwargs) -> AnimateRequest:
    fields = dict(num_frames=FRAMES, num_inference_steps=STEPS, seed=SEED, prompt=PROMPT)
    return AnimateRequest(image=image, adapters=adapters, **{**fields, **kwargs})


def test_animate_applies_the_picked_adapter_and_weight(animator, adapter_dir):
    image = make_test_image(64, 64, seed=2)
    steps = []
    result = animator.animate(
        request(image, [AdapterPick("wave", 0.7)]), on_step=lambda done, total: steps.append((done, total))
    )
    assert steps == [(k, STEPS) for k in range(1, STEPS + 1)]  # the page's progress bar follows every step
    assert result.adapters == [("wave", 0.7)]
    assert decode_mp4(result.mp4).shape == (FRAMES, 64, 64, 3)
    with Image.open(result.gif) as gif:
        assert (gif.n_frames, gif.size) == (FRAMES, (64, 64))
    with_adapter = direct_video(image, adapter_dir, 0.7)
    np.testing.assert_allclose(result.frames, with_adapter, atol=1e-5)
    assert np.abs(result.frames - direct_video(image)).max() > 0.05  # the adapter acts, so the check has teeth


def test_bad_input_is_a_message_and_leaves_the_pipeline_as_it_was(animator, tmp_path):
    image = make_test_image(64, 64, seed=0)
    with pytest.raises(AppInputError, match="no image"):
        animator.animate(request(None, []))
    with pytest.raises(AppInputError, match="picked twice"):
        animator.animate(request(image, [AdapterPick("wave"), AdapterPick("wave", 0.5)]))
    not_an_adapter = tmp_path / "not_an_adapter"
    not_an_adapter.mkdir()
    (not_an_adapter / "notes.txt").write_text("hello")
    loaded = animator.pipe.get_list_adapters()
    with pytest.raises(AppInputError, match="not_an_adapter.*not a MIVA adapter folder.*adapter_config.json"):
        animator.animate(request(image, [AdapterPick(str(not_an_adapter))]))
    assert animator.pipe.get_list_adapters() == loaded
    limit = animator.pipe.unet.config.motion_max_seq_length
    with pytest.raises(AppInputError) as caught:  # checked before the pipeline, in the form's words
        animator.animate(request(image, [], num_frames=limit + 1))
    assert str(caught.value) == (
        f"Frames = {limit + 1}: this base makes 2 to {limit} frames (frame 0 is the image itself)"
    )
    with pytest.raises(AppInputError) as caught:  # the pipeline's own check, its argument named as the form does
        animator.animate(request(image, [], sampling={"dct_cutoff_ratio": 2.0}))
    assert "DCT cutoff ratio" in str(caught.value) and "dct_cutoff_ratio" not in str(caught.value)


def test_ca_maps_gallery(animator):
    result = animator.animate(request(make_test_image(64, 64, seed=1), [AdapterPick("wave")], ca_maps=True))
    levels = {caption.split(",")[0] for _, caption in result.ca_maps}
    assert levels and levels <= {"low", "middle", "high"}
    frames = sorted({0, FRAMES // 2, FRAMES - 1})
    assert len(result.ca_maps) == len(levels) * len(frames)
    for path, caption in result.ca_maps:
        with Image.open(path) as im:
            assert im.size == (64, 64)
        assert any(caption.endswith(f"frame {f}: first word") for f in frames), caption
    assert sorted({int(c.split("frame ")[1].split(":")[0]) for _, c in result.ca_maps}) == frames


def test_registry_names_sources_and_typed_values(tmp_path):
    registry = AdapterRegistry({"wave": tmp_path})
    assert registry.add("wave", tmp_path / "other") == "wave-2"  # a second adapter of the same name
    assert registry.add("wave", tmp_path) == "wave"  # the same one again: no duplicate
    assert registry.choices() == [NO_ADAPTER, "wave", "wave-2"]
    assert registry.source(NO_ADAPTER) is None and registry.source("") is None
    assert registry.source("wave-2") == tmp_path / "other"
    assert registry.source(str(tmp_path)) == tmp_path  # a typed folder
    assert registry.source("user/miva-waterfall") == "user/miva-waterfall"  # a typed Hub id
    assert parse_adapter_argument(f"w={tmp_path}") == ("w", tmp_path)
    assert parse_adapter_argument(str(tmp_path)) == (tmp_path.name, tmp_path)
    with pytest.raises(AppInputError, match="reserved"):
        registry.add(NO_ADAPTER, tmp_path)


def test_adapter_parts_switch_exactly_those_parts():
    config = adapter_config_for(["ca_lora", "motion_embed"])
    assert (config.use_i2v, config.use_motion_lora, config.use_ca_lora, config.use_motion_embed) == (
        False,
        False,
        True,
        True,
    )
    assert adapter_config_for(["implicit"]).ca_mode == "implicit"
    with pytest.raises(AppInputError, match="pick at least one"):
        adapter_config_for([])


def test_training_rejects_bad_clips_with_a_message(tmp_path):
    clips = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=10, fmt="mp4")
    manager = TrainingManager(resolve_base("tiny"), AdapterRegistry(), tmp_path / "app")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    also_broken = tmp_path / "also_broken.webm"
    also_broken.write_bytes(b"\x00" * 64)

    def message(**kwargs) -> str:
        with pytest.raises(AppInputError) as caught:
            manager.start(TrainRequest(**{"name": "m", "prompt": PROMPT, **kwargs}))
        return str(caught.value)

    # One line per bad clip, ffmpeg's report (version, build configuration) cut to its reason.
    assert message(clips=[*map(str, clips[:2]), str(broken), str(also_broken)]) == (
        "also_broken.webm: not a readable video (Invalid data found when processing input)\n"
        "broken.mp4: not a readable video (Invalid data found when processing input)"
    )
    assert message(clips=[str(clips[0])]) == "1 clip: a MIVA adapter is trained on 3-30 clips of one motion"
    assert (
        message(clips=[str(c) for c in clips[:2]]) == "2 clips: a MIVA adapter is trained on 3-30 clips of one motion"
    )
    assert message(clips=[str(tmp_path / "picture.png")]).startswith("picture.png is not a clip")
    too_short = "{}: 10 frames, too short for 15 (Frames per sample and Frame stride: lower them or use a longer clip)"
    assert message(clips=[str(c) for c in clips], num_frames=8, stride=2) == "\n".join(
        too_short.format(c.name) for c in clips
    )
    # The trainer's config checks, in the form's labels instead of config keys.
    assert (
        message(clips=[str(c) for c in clips], learning_rate=0.0) == "Learning rate = 0.0 must be a finite number > 0.0"
    )
    assert message(clips=[str(c) for c in clips], steps=0) == "Steps = 0 must be an integer >= 1"
    assert message(clips=[str(c) for c in clips], rank=0) == "LoRA rank = 0: must be an integer >= 1"
    assert message() == "no clips: upload 3-30 clips or give a folder of clips"
    assert message(name="my motion", clips=[str(c) for c in clips]).startswith("Adapter name 'my motion'")
    assert manager.job is None
    assert not list((tmp_path / "app" / "train").iterdir())  # rejected requests leave no job folder behind


def test_training_job_logs_every_step_and_registers_a_loadable_adapter(tmp_path):
    clips = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=10, fmt="gif")
    registry = AdapterRegistry()
    manager = TrainingManager(resolve_base("tiny"), registry, tmp_path / "app")
    job = manager.start(TrainRequest("drift", clips=[str(c) for c in clips], prompt=PROMPT, steps=2, num_frames=4))
    with pytest.raises(AppInputError, match="still running"):
        manager.start(TrainRequest("again", clips=[str(c) for c in clips]))
    job.join(timeout=300)
    assert job.state == "done", job.error
    assert [step for step, _ in job.losses()] == [1, 2]
    assert all(np.isfinite(loss) for _, loss in job.losses())
    assert registry.names() == ["drift"] and registry.source("drift") == job.adapter_path
    with zipfile.ZipFile(job.zip_path) as z:
        assert {"adapter_config.json", "miva_adapter.safetensors"} <= set(z.namelist())
        z.extractall(tmp_path / "unzipped")
    pipe = MIVAPipeline(**tiny_components(seed=0))
    assert pipe.load_adapters(str(tmp_path / "unzipped"), adapter_names=["drift"]) == ["drift"]
    assert "done, 2 steps" in job.summary()


def test_cli_without_world_or_gradio_says_so_in_one_line(monkeypatch, capsys):
    from miva.cli import main

    monkeypatch.setitem(sys.modules, "miva.world", None)  # as on an install without the shipped base
    assert main(["app", "--base", "world"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "miva.world" in err and "try --base tiny" in err, err
    with pytest.raises(BaseUnavailable, match="--motion-adapter"):
        resolve_base("./some/sd15-folder")
    monkeypatch.setitem(sys.modules, "gradio", None)  # as without the [app] extra
    assert main(["app", "--base", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'miva[app]'" in err, err

"""`miva app --base world-wan` (issue 31 item 4): both MotionWorld bases are known to the app, each with its own
defaults; the Wan page's forms start from the Wan sampling and recipe, and its Animate runs. On the session's smoke
Wan base (`wan_world`)."""

import dataclasses

import pytest

import miva.base_registry as registry
from miva.app.animate import AnimateRequest, Animator
from miva.app.bases import WAN_RESEARCH_OPTIONS, BaseUnavailable, resolve_base
from miva.app.registry import AdapterRegistry

gr = pytest.importorskip("gradio")


def test_the_app_knows_both_world_bases_with_their_defaults(wan_world):
    from miva.world.evaluate import SAMPLING, WAN_SAMPLING

    unet, wan = resolve_base("world"), resolve_base("world-wan")
    assert resolve_base("miva-world-wan").label == wan.label == "MotionWorld Wan2.1 (miva-world-wan)"
    assert unet.label == "MotionWorld (shipped)" and unet.defaults.num_frames == SAMPLING["num_frames"] == 8
    assert (unet.defaults.min_frames, unet.defaults.frame_step, unet.defaults.research_options) == (2, 1, None)
    d = wan.defaults
    assert (d.num_frames, d.num_inference_steps, d.guidance_scale) == (9, 25, 1.0)
    assert d.sampling == {"first_frame_cond_type": "cinemo", "use_dct_init": True}
    assert {**d.sampling, "num_frames": 9, "num_inference_steps": 25, "guidance_scale": 1.0} == WAN_SAMPLING
    # the world Wan VAE keeps every frame (temporal factor 1): any count >= 2; training clips are 4k + 1 frames
    assert (d.min_frames, d.frame_step, d.research_options) == (2, 1, WAN_RESEARCH_OPTIONS)
    t = wan.train_defaults
    assert (t.num_frames, t.min_frames, t.frame_step, t.random_flip) == (9, 5, 4, False)
    assert t.parts == ("i2v", "motion_lora", "implicit")
    assert (wan.train_model_path, wan.train_motion_path) == ("miva-world-wan", None)
    assert wan.shipped_adapters == {}


def test_world_wan_without_its_folder_is_one_line(monkeypatch, tmp_path):
    bases = tuple(dataclasses.replace(b, folder=tmp_path) if b.name == "miva-world-wan" else b
                  for b in registry.KNOWN_BASES)
    monkeypatch.setattr(registry, "KNOWN_BASES", bases)
    with pytest.raises(BaseUnavailable) as error:
        resolve_base("world-wan")
    assert str(error.value) == (f"--base world-wan: no base in {tmp_path}; build it with `python -m "
                                f"miva.world.pretrain_wan --out {registry.WORLD_WAN_PATH}`")


def test_the_wan_page_starts_from_the_wan_defaults_and_animates(wan_world, tmp_path):
    from miva.app.layout import build_app

    base = resolve_base("world-wan")
    page = build_app(base, AdapterRegistry(base.shipped_adapters), tmp_path)
    frames = page.animate.num_frames
    assert (frames.value, frames.minimum, frames.step) == (9, 2, 1)
    assert sorted(page.animate.sampling) == sorted(WAN_RESEARCH_OPTIONS)  # no AdaIN, no CIL on Wan
    assert page.animate.sampling["first_frame_cond_type"].value == "cinemo"
    train = page.train.num_frames
    assert (train.value, train.minimum, train.step) == (9, 5, 4)
    sampling = {key: component.value for key, component in page.animate.sampling.items()}
    result = page.animator.animate(AnimateRequest(image=base.example_images()[0], num_frames=9,
                                                  num_inference_steps=2, sampling=sampling))
    assert result.frames.shape == (9, 64, 64, 3) and result.gif.is_file()
    assert isinstance(page.animator, Animator)

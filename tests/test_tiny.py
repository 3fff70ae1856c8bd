"""miva.tiny: seeded offline components that the stock AnimateDiff pipeline accepts."""

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, UNetMotionModel

from miva.tiny import TINY_WORDS, make_test_image, tiny_components, tiny_tokenizer

MODULES = ("unet", "motion_adapter", "vae", "text_encoder", "image_encoder")


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_keys_and_types(components):
    assert list(components) == [
        "unet",
        "motion_adapter",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "feature_extractor",
        "image_encoder",
    ]
    assert all(not components[name].training for name in MODULES)
    scheduler = components["scheduler"].config
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (scheduler.steps_offset, scheduler.clip_sample, scheduler.set_alpha_to_one) == (1, False, False)


def test_same_seed_same_weights_and_global_rng_untouched(components):
    before = torch.random.get_rng_state()
    again = tiny_components(seed=0)
    assert torch.equal(before, torch.random.get_rng_state())
    for name in MODULES:
        assert _same_state(components[name], again[name]), name


def test_other_seed_other_weights(components):
    other = tiny_components(seed=1)
    for name in MODULES:
        assert not _same_state(components[name], other[name]), name


def test_options():
    components = tiny_components(num_frames_max=16, with_image_encoder=False)
    assert components["image_encoder"] is None and components["feature_extractor"] is None
    assert components["motion_adapter"].config.motion_max_seq_length == 16


def test_animatediff_pipeline_runs(components):
    pipe = AnimateDiffPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    frames = pipe(
        "a photo of a waterfall",
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, 8, 64, 64, 3)
    assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def test_tokenizer_round_trip(components):
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    text = "a photo of a waterfall"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["a</w>", "photo</w>", "of</w>", "a</w>", "waterfall</w>"]
    assert tokenizer.decode(ids) == text
    padded = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert tokenizer.model_max_length == 77 and len(padded) == 77
    assert padded[0] == tokenizer.bos_token_id and padded[len(ids) + 1 :] == [tokenizer.eos_token_id] * (76 - len(ids))
    assert len(tokenizer) == text_encoder.config.vocab_size
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == text_encoder.config.eos_token_id


@pytest.mark.parametrize("text", [" ".join(TINY_WORDS), "Zoom-out of a café at 5pm!"])
def test_tokenizer_never_unknown(text):
    tokenizer = tiny_tokenizer()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids  # unknown words fall back to byte-level pieces
    if text.islower():
        assert len(ids) == len(TINY_WORDS)  # each listed word is one token


def test_new_tokens_for_textual_inversion(components):
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    assert tokenizer.add_tokens(["<miva-motion>"]) == 1
    text_encoder.resize_token_embeddings(len(tokenizer))
    ids = tokenizer("a <miva-motion> cat", add_special_tokens=False).input_ids
    assert len(ids) == 3 and ids[1] == len(tokenizer) - 1
    assert text_encoder.get_input_embeddings().weight.shape == (len(tokenizer), 32)
    hidden = text_encoder(torch.tensor([tokenizer("a <miva-motion> cat", padding="max_length").input_ids]))[0]
    assert hidden.shape == (1, 77, 32)


def test_unet_motion_processors(unet_motion):
    assert isinstance(unet_motion, UNetMotionModel)
    names = list(unet_motion.attn_processors)
    temporal = [n for n in names if ".motion_modules." in n]
    spatial = [n for n in names if ".motion_modules." not in n]
    assert len(names) == 44 and len(temporal) == 22
    assert sum(".attn1." in n for n in spatial) == 11 and sum(".attn2." in n for n in spatial) == 11


def test_make_test_image():
    image = make_test_image(96, 48, seed=3)
    assert image.size == (96, 48) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(make_test_image(96, 48, seed=3)))
    assert not np.array_equal(np.asarray(image), np.asarray(make_test_image(96, 48, seed=4)))
    assert np.asarray(image).std() > 20  # not flat

"""The offline tiny Wan2.1 components: deterministic, offline, and a stock `WanPipeline` runs on them."""

import torch
from diffusers import WanPipeline

from miva.backbones.wan.tiny import TINY_TEXT_DIM, tiny_t5_tokenizer, tiny_wan_components


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = tiny_wan_components(0), tiny_wan_components(0), tiny_wan_components(1)
    for name in ("transformer", "vae", "text_encoder"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), name
    assert not a["transformer"].training and a["transformer"].config.num_layers == 2


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_wan_components(0)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_known_words_are_single_pieces_and_unknown_words_split():
    tokenizer = tiny_t5_tokenizer()
    assert tokenizer.tokenize("waves flowing xyz") == ["\u2581waves", "\u2581flowing", "\u2581x", "y", "z"]
    ids = tokenizer("waves", padding="max_length", max_length=8).input_ids
    assert ids[1] == tokenizer.eos_token_id == 1 and ids[2:] == [tokenizer.pad_token_id] * 6
    assert tokenizer.unk_token_id not in tokenizer("a quick fox 42").input_ids


def test_stock_wan_pipeline_runs_offline():
    pipe = WanPipeline(**tiny_wan_components(0))
    embeds, _ = pipe.encode_prompt("waves", do_classifier_free_guidance=False, max_sequence_length=16)
    assert embeds.shape == (1, 16, TINY_TEXT_DIM)
    frames = pipe("waves", num_frames=9, height=16, width=16, num_inference_steps=2, max_sequence_length=16,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 3, 16, 16) and torch.isfinite(frames).all()
    again = pipe("waves", num_frames=9, height=16, width=16, num_inference_steps=2, max_sequence_length=16,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert torch.equal(frames, again)

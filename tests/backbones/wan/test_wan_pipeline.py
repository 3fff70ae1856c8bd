"""`MIVAWanPipeline`: image-to-video on the tiny Wan T2V base against a loop written out here over stock diffusers
parts; frame 0 pinned in every transformer input; input checks; adapter verbs and native round trip."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline
from no_hub import hub_cache
from safetensors.torch import save_file
from wan_helpers import randomize

from miva.attention_processors import MIVAAdapterConfig, get_miva_adapter_modules
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.tiny import tiny_wan_components
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
from miva.tiny import make_test_image

CALL = dict(num_frames=9, height=16, width=16, num_inference_steps=3, max_sequence_length=16)


def run(pipe, image, seed=0, **kwargs):
    return pipe(image=image, generator=torch.Generator().manual_seed(seed), **{**CALL, **kwargs}).frames


def handwritten_i2v(components, image, seed=0, steps=3, prompt="", guidance=1.0):
    """Image-to-video by hand over stock parts: encode, noise, Euler loop with latent frame 0 pinned (classifier-free
    guidance against the empty prompt when `guidance` > 1), decode."""
    stock = WanPipeline(**components)
    transformer, vae = components["transformer"], components["vae"]
    embeds, _ = stock.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=16)
    empty, _ = stock.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=16)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None, :, None]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        first = (vae.encode(pixels).latent_dist.mode() - mean) / std
        latents = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
        latents[:, :, :1] = first
        scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            velocity = transformer(latents, t.expand(1), embeds).sample
            if guidance > 1:
                uncond = transformer(latents, t.expand(1), empty).sample
                velocity = uncond + guidance * (velocity - uncond)
            latents = scheduler.step(velocity, t, latents).prev_sample
            latents[:, :, :1] = first
        video = vae.decode(latents * std + mean).sample
    return latents, (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)


def test_default_prompt_length_is_the_tokenizers():
    """Without `max_sequence_length` a call pads prompts to the tokenizer's `model_max_length` (at most Wan's 512;
    a tokenizer's huge "no limit" sentinel gives 512): the length decides how many zero tokens cross-attention sees."""
    from miva.pipelines.pipeline_miva_wan import default_prompt_length

    image = make_test_image(16, 16)
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    call = {k: v for k, v in CALL.items() if k != "max_sequence_length"}
    pipe.tokenizer.model_max_length = 16
    assert default_prompt_length(pipe.tokenizer) == 16
    short = run(pipe, image, prompt="waves")  # max_sequence_length=16, given
    assert np.array_equal(pipe(image=image, prompt="waves", generator=torch.Generator().manual_seed(0), **call).frames,
                          short)
    pipe.tokenizer.model_max_length = int(1e30)
    assert default_prompt_length(pipe.tokenizer) == 512
    default = pipe(image=image, prompt="waves", generator=torch.Generator().manual_seed(0), **call).frames
    assert np.array_equal(default, run(pipe, image, prompt="waves", max_sequence_length=512))
    assert not np.array_equal(default, short)


@pytest.mark.parametrize("with_adapter", [False, True])
def test_pipeline_equals_handwritten_loop_over_stock_parts(with_adapter):
    image = make_test_image(16, 16)
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    if with_adapter:
        pipe.add_adapter("a", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="linear",
                                               ca_mode="implicit", implicit_rank=8))
        for module in get_miva_adapter_modules(pipe.transformer, "a").values():
            randomize(module, seed=2)
    latents = run(pipe, image, output_type="latent")
    video = run(pipe, image, output_type="pt")
    components = {**tiny_wan_components(0), "transformer": pipe.transformer, "vae": pipe.vae}
    expected_latents, expected_video = handwritten_i2v(components, image)
    torch.testing.assert_close(latents, expected_latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video, expected_video, rtol=1e-5, atol=1e-5)
    no_adapter = run(MIVAWanPipeline(**tiny_wan_components(0)), image, output_type="latent")
    assert ((latents - no_adapter).abs().max() > 1e-3) == with_adapter


def test_frame_zero_is_pinned_in_every_transformer_input_and_the_output():
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    image = make_test_image(16, 16)
    first = pipe.encode_image_latents(image, 16, 16, 1)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["hidden_states"]),
                                               with_kwargs=True)
    latents = run(pipe, image, output_type="latent", num_inference_steps=4)
    assert len(seen) == 4 and all(torch.equal(x[:, :, :1], first) for x in seen)
    assert torch.equal(latents[:, :, :1], first) and not torch.equal(seen[1][:, :, 1:], seen[2][:, :, 1:])


def test_unipc_with_flow_sigmas_runs_and_other_schedulers_are_refused():
    components = tiny_wan_components(0)
    image = make_test_image(16, 16)
    components["scheduler"] = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                      flow_shift=5.0)
    frames = run(MIVAWanPipeline(**components), image, output_type="pt")
    assert frames.shape == (1, 9, 3, 16, 16) and torch.isfinite(frames).all()
    components["scheduler"] = DDIMScheduler()
    with pytest.raises(ValueError, match=r"scheduler DDIMScheduler is not a flow-matching scheduler"):
        run(MIVAWanPipeline(**components), image)


def test_input_errors_name_the_argument():
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    image = make_test_image(16, 16)
    with pytest.raises(ValueError, match=r"num_frames=10 is not 4k\+1: .* use 9 or 13"):
        run(pipe, image, num_frames=10)
    with pytest.raises(ValueError, match=r"image is required"):
        run(pipe, None)
    with pytest.raises(ValueError, match=r"height=24, width=16 must be multiples of 16"):
        run(pipe, image, height=24)


def test_adapter_verbs_save_load_round_trip_and_weights(tmp_path):
    image = make_test_image(16, 16)
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("waves", WanAdapterConfig(sa_mode="prev"))
    for module in get_miva_adapter_modules(pipe.transformer, "waves").values():
        randomize(module, seed=3)
    expected = run(pipe, image, output_type="latent")
    stock = run(pipe, image, output_type="latent", adapter_weights=[0.0])
    assert (expected - stock).abs().max() > 1e-3
    pipe.save_adapter("waves", tmp_path / "waves")

    fresh = MIVAWanPipeline(**tiny_wan_components(0))
    torch.testing.assert_close(run(fresh, image, output_type="latent"), stock, rtol=0, atol=0)
    assert fresh.load_adapters(tmp_path / "waves", adapter_names="w") == ["w"]
    assert fresh.get_active_adapters() == ["w"]
    torch.testing.assert_close(run(fresh, image, output_type="latent"), expected, rtol=0, atol=0)
    fresh.disable_adapters()
    torch.testing.assert_close(run(fresh, image, output_type="latent"), stock, rtol=0, atol=0)
    fresh.enable_adapters()
    fresh.set_adapters(["w"], weights=[0.5])
    half = run(fresh, image, output_type="latent")
    assert 1e-4 < (half - expected).abs().max()
    torch.testing.assert_close(half, run(pipe, image, output_type="latent", adapter_weights=[0.5]), rtol=0, atol=0)


def test_unet_adapter_refused_naming_both_bases(tmp_path):
    folder = tmp_path / "unet-adapter"
    MIVAAdapterConfig().save_pretrained(folder)
    save_file({"x": torch.zeros(1)}, folder / "miva_adapter.safetensors")
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    with pytest.raises(ValueError, match=r"made for the AnimateDiff UNet \(SD1.5, UNetMotionModel\) \(backbone 'animatediff-unet'\), "
                       r"but this pipeline's base is the Wan2.1 DiT \(WanTransformer3DModel\) \(backbone 'wan2.1-dit'\); "
                       r"load it with MIVAPipeline"):
        pipe.load_adapters(folder)
    assert pipe.get_list_adapters() == []


def test_official_checkpoint_through_load_adapters():
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    checkpoint = {f"blocks.{i}.i2v_adapter.{n}.{p}": torch.randn(24, 24) if p == "weight" else torch.randn(24)
                  for i in range(2) for n in ("q", "o") for p in ("weight", "bias")}
    with pytest.raises(ValueError, match=r"is an official MIVA-Wan checkpoint: pass official_config="):
        pipe.load_adapters(checkpoint)
    pipe.load_adapters(checkpoint, adapter_names="off", official_config={"dit_kwargs": {"SA_mode": "first"}})
    assert pipe.miva_context.configs["off"].sa_mode == "first" and pipe.get_active_adapters() == ["off"]


def test_custom_pipeline_shim_loads_a_saved_wan_folder(tmp_path, monkeypatch):
    import sys

    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    import miva.pipelines.pipeline_wan as shim

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert dynamic_modules_utils.find_pipeline_class(shim) is MIVAWanPipeline
    WanPipeline(**tiny_wan_components(0)).save_pretrained(tmp_path / "tiny-wan")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "tiny-wan", custom_pipeline=shim.__file__,
                                               trust_remote_code=True)
    assert type(loaded) is MIVAWanPipeline
    image = make_test_image(16, 16)
    expected = run(MIVAWanPipeline(**tiny_wan_components(0)), image, output_type="latent")
    torch.testing.assert_close(run(loaded, image, output_type="latent"), expected, rtol=0, atol=0)


def test_research_latent_init_on_the_flow_path():
    from miva.pipelines.latent_init import dct_init

    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    image = make_test_image(16, 16)
    first = pipe.encode_image_latents(image, 16, 16, 1)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"]), with_kwargs=True)
    noise = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    mixed = noise[:, :, 1:] * 0.7 + noise[:, :, :1] * 0.3  # shared noise 0.3
    cinemo = 0.025 * first + 0.975 * mixed  # the image at t = 975 on the flow path
    run(pipe, image, output_type="latent", first_frame_cond_type="cinemo", shared_noise_ratio=0.3)
    torch.testing.assert_close(seen[0], torch.cat([first, cinemo], dim=2), rtol=1e-6, atol=1e-6)
    run(pipe, image, output_type="latent", first_frame_cond_type="cinemo", shared_noise_ratio=0.3,
        use_dct_init=True, dct_cutoff_ratio=0.5)
    torch.testing.assert_close(seen[3], torch.cat([first, dct_init(cinemo, mixed, 0.5)], dim=2), rtol=1e-6,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"use_dct_init=True requires first_frame_cond_type='cinemo'"):
        run(pipe, image, use_dct_init=True)


def test_saved_folder_has_the_wan_model_card_and_records_the_backbone(tmp_path):
    import json

    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("waves", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="linear",
                                               ca_mode="implicit", implicit_rank=8))
    folder = pipe.save_adapter("waves", tmp_path / "waves")
    card = (folder / "README.md").read_text()
    assert "base_model: Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in card and "- wan2.1" in card
    assert "`sa_mode='first_prev'`, `sa_first_frame_scale='linear'` (linear)" in card
    assert "implicit prompt in place of the text cross-attention: rank 8" in card
    assert "AnimateDiff" not in card and "MIVAWanPipeline.from_pretrained" in card
    assert json.loads((folder / "adapter_config.json").read_text())["backbone"] == "wan2.1-dit"


def test_push_adapter_to_hub_uploads_the_native_folder(monkeypatch, tmp_path):
    from pathlib import Path

    import huggingface_hub

    uploaded = {}

    def fake_upload(repo_id, folder_path, token=None, commit_message=None):  # the Hub is not reachable in tests
        folder = Path(folder_path)
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in folder.iterdir()),
                        card=(folder / "README.md").read_text())
        return "commit"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload)
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("waves", WanAdapterConfig(sa_mode="prev"))
    assert pipe.push_adapter_to_hub("waves", "user/miva-waves-wan") == "commit"
    assert uploaded["files"] == ["README.md", "adapter_config.json", "miva_adapter.safetensors"]
    assert uploaded["repo_id"] == "user/miva-waves-wan" and 'load_adapters("user/miva-waves-wan"' in uploaded["card"]


def test_save_pretrained_keeps_the_transformer_stock_and_the_adapters_beside_it(tmp_path):
    from safetensors.torch import load_file

    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("waves", WanAdapterConfig(sa_mode="prev"), activate=False)
    pipe.add_adapter("clouds", WanAdapterConfig(use_i2v=False, ca_mode="implicit", implicit_rank=8), activate=False)
    for name in ("waves", "clouds"):
        for module in get_miva_adapter_modules(pipe.transformer, name).values():
            randomize(module, seed=4)
    pipe.set_adapters(["waves", "clouds"], weights=[0.7, 0.4])
    image = make_test_image(16, 16)
    expected = run(pipe, image, output_type="latent")
    pipe.save_pretrained(tmp_path / "saved")
    weights = load_file(next((tmp_path / "saved" / "transformer").glob("*.safetensors")))
    assert not [k for k in weights if "processor" in k]
    assert sorted(p.name for p in (tmp_path / "saved" / "miva_adapters").iterdir()) == [
        "clouds", "miva_adapters.json", "waves"]
    torch.testing.assert_close(run(pipe, image, output_type="latent"), expected, rtol=0, atol=0)  # ours are back
    stock = WanPipeline.from_pretrained(tmp_path / "saved")
    assert type(stock.transformer.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    loaded = MIVAWanPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.get_active_adapters() == ["waves", "clouds"]
    torch.testing.assert_close(run(loaded, image, output_type="latent"), expected, rtol=0, atol=0)


def test_load_adapters_from_a_hub_repo_offline(tmp_path):
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    pipe.add_adapter("waves", WanAdapterConfig(sa_mode="prev"))
    for module in get_miva_adapter_modules(pipe.transformer, "waves").values():
        randomize(module, seed=6)
    image = make_test_image(16, 16)
    expected = run(pipe, image, output_type="latent")
    folder = pipe.save_adapter("waves", tmp_path / "waves")
    hub_cache(tmp_path / "hub", "someone/waves-wan",
              {name: folder / name for name in ("adapter_config.json", "miva_adapter.safetensors")})
    fresh = MIVAWanPipeline(**tiny_wan_components(0))
    assert fresh.load_adapters("someone/waves-wan", cache_dir=tmp_path / "hub") == ["waves-wan"]
    torch.testing.assert_close(run(fresh, image, output_type="latent"), expected, rtol=0, atol=0)
    with pytest.raises(OSError, match="someone/missing"):
        fresh.load_adapters("someone/missing", cache_dir=tmp_path / "hub")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'cache'"):
        fresh.load_adapters("someone/waves-wan", cache=tmp_path)


def test_classifier_free_guidance_equals_handwritten_loop():
    image = make_test_image(16, 16)
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    latents = run(pipe, image, prompt="waves", negative_prompt="", guidance_scale=3.0, output_type="latent")
    components = {**tiny_wan_components(0), "transformer": pipe.transformer, "vae": pipe.vae}
    expected, _ = handwritten_i2v(components, image, prompt="waves", guidance=3.0)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-6)
    assert (latents - run(pipe, image, prompt="waves", output_type="latent")).abs().max() > 1e-3



def test_wan_adapter_refused_by_the_unet_pipeline_naming_both_bases(tmp_path):
    """The reverse direction: a Wan folder (and its weights file alone) on the UNet pipeline, refused before any
    tensor is read, naming the recorded backbone and the pipeline's; the UNet pipeline is left unchanged."""
    from miva import load_base

    wan = MIVAWanPipeline(**tiny_wan_components(0))
    wan.add_adapter("w", WanAdapterConfig(sa_mode="prev"))
    folder = wan.save_adapter("w", tmp_path / "wan-adapter")
    unet_pipe = load_base("tiny")
    expected = (r"this adapter was made for the Wan2.1 DiT \(WanTransformer3DModel\) \(backbone 'wan2.1-dit'\), but "
                r"this pipeline's base is the AnimateDiff UNet \(SD1.5, UNetMotionModel\) \(backbone "
                r"'animatediff-unet'\); load it with MIVAWanPipeline on a wan2.1-dit base")
    with pytest.raises(ValueError, match=expected):
        unet_pipe.load_adapters(folder)
    with pytest.raises(ValueError, match=expected):
        unet_pipe.load_adapters(folder / "miva_adapter.safetensors")
    context = getattr(unet_pipe.unet, "miva_context", None)
    assert context is None or not context.configs


def test_unknown_backbone_named_with_the_valid_ones(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"backbone": "flux-dit"}')
    save_file({"x": torch.zeros(1)}, folder / "miva_adapter.safetensors")
    with pytest.raises(ValueError, match=r"backbone='flux-dit' is not a backbone miva knows; valid: "
                                         r"\['animatediff-unet', 'wan2.1-dit'\]"):
        MIVAWanPipeline(**tiny_wan_components(0)).load_adapters(folder)

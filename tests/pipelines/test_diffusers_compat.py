"""`MIVAPipeline` behaves like a diffusers pipeline with a MIVA adapter active (issue 18).

Every test runs with one random adapter that has every part (cross-frame branch with its own W_Q and an adaptive
first-frame weight, MotionLoRA + motion embedding, CA-LoRA with Q-LoRA), checks that the adapter changes the video,
and compares the call with a diffusers feature against the same call without it. Memory features (offloading,
layerwise casting, VAE slicing/tiling, dtype) run on CPU: accelerate's hooks with execution device "cpu", group
offloading to disk (offloaded weights really leave the module), float8 storage with float32 compute.
"""

import pytest
import torch
from accelerate import cpu_offload
from diffusers.models.attention_processor import AttnProcessor
from torch import nn

from miva.attention_processors import LoRADelta, MIVAAdapterConfig, get_miva_adapter_modules
from miva.attention_processors.base import MIVAProcessorBase
from miva.attention_processors.lora import linear_with_deltas
from miva.attention_processors.split_inference import carried_reference_kv
from miva.pipelines import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

FRAMES, SIZE, STEPS = 4, 64, 2
PROMPT = "a waterfall, water flowing"
FULL = dict(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, motion_lora_rank=4, use_motion_embed=True,
            i2v_train_q=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.5")


def make_pipe(config: dict = FULL, adapter: bool = True) -> MIVAPipeline:
    """The tiny pipeline with adapter "a" (weights drawn with seed 1) active."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    if adapter:
        pipe.add_adapter("a", MIVAAdapterConfig(**config))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in get_miva_adapter_modules(pipe.unet, "a").values():
                for parameter in module.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return pipe


def run(pipe, **kwargs) -> torch.Tensor:
    options = dict(prompt=PROMPT, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    options.update(kwargs)
    return pipe(IMAGE, **options).frames.float()


IMAGE = make_test_image(SIZE, SIZE, seed=0)


@pytest.fixture(scope="module")
def plain():
    """The video with the adapter and no feature; the adapter changes it."""
    video = run(make_pipe())
    assert (video - run(make_pipe(adapter=False))).abs().max() > 0.2
    return video


# ------------------------------------------------------------------------------ 1. memory features


def _linear_and_delta():
    torch.manual_seed(0)
    linear, delta = nn.Linear(12, 10), LoRADelta(12, 10, rank=3, alpha=2.0)
    nn.init.normal_(delta.up.weight)
    return linear, delta, torch.randn(4, 12)


def test_lora_deltas_run_through_accelerate_offload_hooks():
    linear, delta, x = _linear_and_delta()
    with torch.no_grad():
        expected = linear(x) + 0.5 * (delta.up.weight @ delta.down.weight * delta.scale @ x.T).T
    cpu_offload(nn.ModuleDict(dict(linear=linear, delta=delta)), torch.device("cpu"))
    assert linear.weight.is_meta and delta.down.weight.is_meta  # real weights only inside each forward
    with torch.no_grad():
        torch.testing.assert_close(linear_with_deltas(linear, x, [(delta, 0.5)]), expected, atol=1e-6, rtol=1e-6)


def test_lora_deltas_compute_in_the_layerwise_casting_compute_dtype():
    from diffusers.hooks import apply_layerwise_casting

    linear, delta, x = _linear_and_delta()
    with torch.no_grad():  # the same layers with their weights rounded to float8, in float32
        w, b = (t.to(torch.float8_e4m3fn).float() for t in (linear.weight, linear.bias))
        up, down = (t.to(torch.float8_e4m3fn).float() for t in (delta.up.weight, delta.down.weight))
        expected = x @ w.T + b + 0.5 * (x @ down.T @ up.T) * delta.scale
    apply_layerwise_casting(nn.ModuleDict(dict(linear=linear, delta=delta)), storage_dtype=torch.float8_e4m3fn,
                            compute_dtype=torch.float32)
    assert linear.weight.dtype == delta.down.weight.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        torch.testing.assert_close(linear_with_deltas(linear, x, [(delta, 0.5)]), expected, atol=1e-5, rtol=1e-5)


def _adapter_lora(pipe):
    return next(m for m in pipe.unet.modules() if type(m).__name__ == "LoRADelta").down


def _sequential(pipe):
    # What enable_sequential_cpu_offload does (accelerate's cpu_offload on every component), with execution
    # device "cpu": diffusers passes "cpu:0", which accelerate 1.15 cannot offload to (TypeError, stock pipelines too).
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cpu_offload(component, torch.device("cpu"))
    assert _adapter_lora(pipe).weight.is_meta  # the adapter's weights are offloaded too


def _model_offload(pipe):
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.unet, "_hf_hook")


def _group_offload(offload_type):
    def apply(pipe, tmp_path):
        kwargs = dict(num_blocks_per_group=1) if offload_type == "block_level" else {}
        pipe.enable_group_offload(torch.device("cpu"), offload_type=offload_type, offload_to_disk_path=str(tmp_path),
                                  **kwargs)
        if offload_type == "leaf_level":
            assert hasattr(_adapter_lora(pipe), "_diffusers_hook")

    return apply


def _layerwise(pipe):
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert _adapter_lora(pipe).weight.dtype == torch.float8_e4m3fn  # adapter weights stored in float8 as well


def _vae_tiling(pipe):
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 4  # 64 px frames in overlapping 32 px tiles


MEMORY_FEATURES = {
    # name: (set-up, tolerance against the plain call). Offloading moves weights, it does not change them.
    "model_cpu_offload": (_model_offload, 1e-5),
    "sequential_cpu_offload": (_sequential, 1e-5),
    "group_offload_leaf_level_disk": (_group_offload("leaf_level"), 1e-5),
    "group_offload_block_level_disk": (_group_offload("block_level"), 1e-5),
    "layerwise_casting_float8": (_layerwise, 0.08),  # float8 weights (measured 0.031; 0.053 without adapter)
    "vae_slicing": (lambda pipe: pipe.vae.enable_slicing(), 1e-5),
    "to_bfloat16": (lambda pipe: pipe.to(dtype=torch.bfloat16), 0.08),  # measured 0.044 (0.039 without adapter)
}


@pytest.mark.parametrize("feature", list(MEMORY_FEATURES))
def test_memory_feature_gives_the_same_video_with_adapter_active(feature, plain, tmp_path):
    setup, tolerance = MEMORY_FEATURES[feature]
    pipe = make_pipe()
    setup(pipe, tmp_path) if "group" in feature else setup(pipe)
    video = run(pipe)
    assert (video - plain).abs().max() <= tolerance


def test_vae_tiling_decodes_through_the_tiled_vae(plain):
    """Tiles change the pixels by themselves (on the tiny random VAE, by up to 0.99 against whole-frame decoding,
    and the tiled encoder changes the frame-0 latent), so the video is compared with the tiled VAE's decoding of the
    same call's latents, computed here from the VAE alone."""
    pipe = make_pipe()
    _vae_tiling(pipe)
    latents, video = run(pipe, output_type="latent"), run(pipe)
    with torch.no_grad():
        flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / pipe.vae.config.scaling_factor
        expected = (pipe.vae.decode(flat).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(video[0], expected, atol=1e-5, rtol=1e-5)
    assert (video - plain).abs().max() > 1e-4  # tiling really ran
    pipe.disable_adapters()
    assert (run(pipe, output_type="latent") - latents).abs().max() > 0.1  # and the adapter acted under it


# ------------------------------------------------------------------------------ 2. short prompt embeddings


def _encode(pipe, text: str, length: int) -> torch.Tensor:
    ids = pipe.tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]


def test_prompt_embeds_shorter_than_77_tokens_with_guidance():
    pipe = make_pipe()
    short = _encode(pipe, PROMPT, 20)
    negative = _encode(pipe, "blurry", 20)  # the negative prompt padded to the embeddings' length, as in diffusers
    video = run(pipe, prompt=None, prompt_embeds=short, negative_prompt="blurry", guidance_scale=7.5)
    expected = run(pipe, prompt=None, prompt_embeds=short, negative_prompt_embeds=negative, guidance_scale=7.5)
    torch.testing.assert_close(video, expected, atol=1e-6, rtol=0)
    pipe.disable_adapters()
    assert (run(pipe, prompt=None, prompt_embeds=short, negative_prompt="blurry") - video).abs().max() > 0.1


# ------------------------------------------------------------------------------ 3. optional components


def test_text_only_pipeline_encodes_prompts_for_an_adapter_pipeline(plain):
    text_only = MIVAPipeline(**{**tiny_components(seed=0), "unet": None, "vae": None, "motion_adapter": None})
    assert text_only.unet is None and text_only.vae is None
    cond, uncond = text_only.encode_prompt(PROMPT, "cpu", 1, True, "")
    video = run(make_pipe(), prompt=None, prompt_embeds=cond, negative_prompt_embeds=uncond)
    torch.testing.assert_close(video, plain, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unet=None: this MIVAPipeline was built without a unet"):
        text_only(IMAGE, prompt=PROMPT)


# ------------------------------------------------------------------------------ 4. FreeNoise prompt interpolation


def _free_noise_pipe(config: dict = FULL) -> MIVAPipeline:
    pipe = make_pipe(config)
    pipe.enable_free_noise(context_length=4, context_stride=2)
    return pipe


def _capture_text(pipe) -> list[torch.Tensor]:
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True)
    return seen


def test_free_noise_prompt_interpolation_with_adapter_active():
    frames = 6
    pipe = _free_noise_pipe()
    seen = _capture_text(pipe)
    video = run(pipe, prompt={0: "a waterfall", 4: "clouds"}, num_frames=frames)
    # The UNet reads, per frame, the linear interpolation between the prompts' embeddings (computed here from the
    # text encoder alone), after the negative prompt's frames.
    waterfall, clouds, empty = (_encode(pipe, text, 77)[0] for text in ("a waterfall", "clouds", ""))
    expected = torch.stack([(1 - min(f, 4) / 4) * waterfall + (min(f, 4) / 4) * clouds for f in range(frames)])
    torch.testing.assert_close(seen[0][frames:], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seen[0][:frames], empty.expand(frames, -1, -1), atol=0, rtol=0)
    # One key: the same video as the string prompt (the call without interpolation).
    single = run(pipe, prompt={0: "a waterfall"}, num_frames=frames)
    torch.testing.assert_close(single, run(pipe, prompt="a waterfall", num_frames=frames), atol=1e-5, rtol=0)
    assert (video - single).abs().max() > 0.05
    pipe.disable_adapters()
    assert (run(pipe, prompt={0: "a waterfall", 4: "clouds"}, num_frames=frames) - video).abs().max() > 0.1


def test_free_noise_per_adapter_prompts_stay_fixed_unless_dicts():
    frames, tokens = 6, 77
    pipe = _free_noise_pipe()
    seen = _capture_text(pipe)
    clouds, rain = _encode(pipe, "clouds", tokens)[0], _encode(pipe, "rain", tokens)[0]
    run(pipe, prompt={0: "a waterfall", 4: "clouds"}, num_frames=frames, batch_prompt=["rain"], guidance_scale=1.0)
    assert seen[-1].shape == (frames, 2 * tokens, 32)
    torch.testing.assert_close(seen[-1][:, tokens:], rain.expand(frames, -1, -1), atol=0, rtol=0)
    run(pipe, prompt="a waterfall", num_frames=frames, batch_prompt=[{0: "rain", 5: "clouds"}], guidance_scale=1.0)
    adapter_text = seen[-1][:, tokens:]
    torch.testing.assert_close(adapter_text[0], rain, atol=1e-6, rtol=0)
    torch.testing.assert_close(adapter_text[-1], clouds, atol=1e-6, rtol=0)
    torch.testing.assert_close(seen[-1][:, :tokens], _encode(pipe, "a waterfall", tokens).expand(frames, -1, -1))


def test_dict_prompt_needs_free_noise():
    with pytest.raises(ValueError, match=r"call pipe.enable_free_noise\(\) first"):
        run(make_pipe(), prompt={0: "a waterfall", 2: "clouds"})


# ------------------------------------------------------------------------------ 5. FreeNoise split inference


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_carried_reference_frames_equal_those_of_the_whole_batch(chunk):
    """Chunk after chunk (any size, across video boundaries), each row gets its video's frame 0 and its previous
    frame, as if the whole (2 videos x 6 frames) batch were there."""
    frames, key, value = 6, torch.randn(12, 3, 8), torch.randn(12, 3, 8)
    rows = torch.arange(12)
    first, prev = rows - rows % frames, torch.where(rows % frames == 0, rows, rows - 1)
    cache, parts = {}, []
    for start in range(0, 12, chunk):
        stop = min(start + chunk, 12)
        parts.append(carried_reference_kv(cache, key[start:stop], value[start:stop], frames=frames, window=(start, stop)))
    for i, expected in enumerate((key[first], value[first], key[prev], value[prev])):
        torch.testing.assert_close(torch.cat([p[i] for p in parts]), expected, atol=0, rtol=0)
    assert set(cache) <= {0, 6, 11}  # only frame-0 rows and the last row are kept


@pytest.mark.parametrize("sa_mode, scale", [("first", 0.5), ("prev", 0.5), ("first_prev", "adaptive_0.5")])
def test_free_noise_split_inference_with_cross_frame_adapter(sa_mode, scale):
    frames = 6
    pipe = _free_noise_pipe(dict(FULL, sa_mode=sa_mode, sa_first_frame_scale=scale))
    whole = run(pipe, num_frames=frames)
    # Chunks of 5 rows of the 2 x 6 (CFG x frames) batch: most chunks lack their video's frame 0, and one spans
    # the two videos.
    pipe.enable_free_noise_split_inference(spatial_split_size=48, temporal_split_size=5)
    split = run(pipe, num_frames=frames)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    pipe.disable_adapters()
    assert (run(pipe, num_frames=frames) - split).abs().max() > 0.1


def test_split_inference_refuses_spatiotemporal_q_clearly():
    pipe = _free_noise_pipe(dict(use_ca_lora=True, ca_lora_rank=4, use_i2v=False, use_motion_lora=False,
                                 q_downsample=True, q_downsample_ratio=2))
    pipe.enable_free_noise_split_inference(spatial_split_size=48, temporal_split_size=5)
    with pytest.raises(ValueError, match="spatiotemporal Q .* split inference hands this layer 5 rows"):
        run(pipe, num_frames=6)


# ------------------------------------------------------------------------------ 6. processor verbs


def test_set_default_attn_processor_then_adapters_back(plain):
    pipe = make_pipe()
    pipe.unet.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    stock = run(pipe)  # the stock processors, adapters inactive: the pipeline without adapters
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    torch.testing.assert_close(stock, run(make_pipe(adapter=False)), atol=1e-5, rtol=0)
    pipe.enable_adapters()
    assert all(isinstance(p, MIVAProcessorBase) for p in pipe.unet.attn_processors.values())
    torch.testing.assert_close(run(pipe), plain, atol=1e-6, rtol=0)
    pipe.unet.set_default_attn_processor()
    pipe.set_adapters(["a"])
    torch.testing.assert_close(run(pipe), plain, atol=1e-6, rtol=0)


def test_ip_adapter_through_the_unet_loader_keeps_the_adapter():
    from test_pipeline import _tiny_ip_adapter_state_dict

    by_unet, by_pipe = make_pipe(), make_pipe()
    by_unet.unet._load_ip_adapter_weights([_tiny_ip_adapter_state_dict(by_unet.unet)])
    by_pipe.load_ip_adapter(_tiny_ip_adapter_state_dict(by_pipe.unet), subfolder="", weight_name="")
    video = run(by_unet, ip_adapter_image=IMAGE)
    torch.testing.assert_close(video, run(by_pipe, ip_adapter_image=IMAGE), atol=1e-6, rtol=0)
    assert all(isinstance(p, MIVAProcessorBase) for p in by_unet.unet.attn_processors.values())
    by_unet.disable_adapters()
    assert (run(by_unet, ip_adapter_image=IMAGE) - video).abs().max() > 0.1

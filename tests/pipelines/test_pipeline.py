"""`MIVAPipeline` on the tiny offline components: exactness against stock diffusers parts, sampling options,
per-adapter prompts, validation, diffusers features that swap processors, and the demo."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from frame0 import gen, image_latent

from miva.attention_processors import MIVAAdapterConfig, MIVACrossAttnProcessor, MIVATemporalAttnProcessor
from miva.attention_processors.base import MIVAProcessorBase
from miva.pipelines import MIVAPipeline, MIVAPipelineOutput
from miva.pipelines.latent_init import build_initial_latents
from miva.pipelines.prompts import build_prompt_embeds
from miva.tiny import make_test_image, tiny_components

FRAMES, SIZE, STEPS = 8, 64, 2
PROMPT = "a waterfall, water flowing"


def run(pipe, image, **kwargs):
    options = dict(
        prompt=PROMPT,
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=gen(0),
        output_type="latent",
    )
    options.update(kwargs)
    return pipe(image, **options)


@pytest.fixture(scope="module")
def adapter_pipe():
    """Two random CA-LoRA + cross-frame + MotionLoRA adapters "a" and "b" (weights drawn with seed 1)."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    config = MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4)
    pipe.add_adapter("a", config)
    pipe.add_adapter("b", config, activate=False)
    generator = gen(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".adapters." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return pipe


@torch.no_grad()
def reference_latents(stock, first, noise, guidance, negative="", added_cond_kwargs=None):
    """Stock diffusers parts: AnimateDiff's prompt encoding and UNet (default processors), DDIM on frames 1..F-1,
    frame 0 held at the image latent."""
    scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    scheduler.set_timesteps(STEPS)
    cfg = guidance > 1
    cond, uncond = stock.encode_prompt(PROMPT, "cpu", 1, cfg, negative)
    text = (torch.cat([uncond, cond]) if cfg else cond).repeat_interleave(FRAMES, dim=0)
    latents = torch.cat([first, noise[:, :, 1:]], dim=2)
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if cfg else latents
        eps = stock.unet(model_input, t, encoder_hidden_states=text, added_cond_kwargs=added_cond_kwargs).sample
        if cfg:
            uncond_eps, cond_eps = eps.chunk(2)
            eps = uncond_eps + guidance * (cond_eps - uncond_eps)
        rest = scheduler.step(eps[:, :, 1:], t, latents[:, :, 1:]).prev_sample
        latents = torch.cat([first, rest], dim=2)
    return latents


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_matches_stock_animatediff_with_frame0_held(pipe, stock, image, guidance):
    noise = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=gen(5))
    first = image_latent(stock.vae, image, seed=3)
    final = {}

    def keep(p, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}

    out = run(
        pipe,
        image,
        guidance_scale=guidance,
        latents=noise,
        generator=gen(3),
        output_type="pt",
        callback_on_step_end=keep,
    )
    expected = reference_latents(stock, first, noise, guidance)
    torch.testing.assert_close(final["latents"], expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(final["latents"][:, :, :1], first, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        reconstruction = stock.vae.decode(first[:, :, 0] / stock.vae.config.scaling_factor).sample / 2 + 0.5
    assert out.frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    torch.testing.assert_close(out.frames[:, 0], reconstruction.clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_same_seed_same_video_other_seed_other_video(pipe, image):
    a = run(pipe, image, generator=gen(7)).frames
    b = run(pipe, image, generator=gen(7)).frames
    c = run(pipe, image, generator=gen(8)).frames
    assert torch.equal(a, b)
    assert (a[:, :, 1:] - c[:, :, 1:]).abs().mean() > 0.1


def test_initial_latents_follow_latent_init(pipe, image):
    """The UNet's first input is `build_initial_latents` of the image latent and the given noise (cinemo + DCT,
    shared noise), and CIL hands round(t * ratio) to the UNet."""
    noise = torch.randn(1, 4, FRAMES, 8, 8, generator=gen(2))
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append((args[0].clone(), args[1])))
    try:
        run(
            pipe,
            image,
            latents=noise,
            generator=gen(3),
            guidance_scale=1.0,
            first_frame_cond_type="cinemo",
            use_dct_init=True,
            dct_cutoff_shape="tri",
            dct_cutoff_ratio=0.5,
            shared_noise_ratio=0.2,
            cil_ratio=0.5,
        )
    finally:
        handle.remove()
    first = image_latent(pipe.vae, image, seed=3)
    expected = build_initial_latents(
        first,
        noise,
        first_frame_cond_type="cinemo",
        shared_noise_ratio=0.2,
        use_dct_init=True,
        dct_cutoff_ratio=0.5,
        dct_cutoff_shape="tri",
        scheduler=pipe.scheduler,
    )
    torch.testing.assert_close(seen[0][0], expected, atol=1e-5, rtol=1e-5)
    assert [int(t) for _, t in seen] == [250, 0]  # DDIM 2 steps: 501, 1 -> round(250.5), round(0.5) (half to even)
    assert all(torch.allclose(sample[:, :, :1], first, atol=1e-5) for sample, _ in seen)


def test_adain_last_matches_frame0_statistics(pipe, image):
    out = run(pipe, image, use_adain_norm="last").frames
    mean = out.mean(dim=(-2, -1))
    std = out.std(dim=(-2, -1))
    torch.testing.assert_close(mean[:, :, 1:], mean[:, :, :1].expand_as(mean[:, :, 1:]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std[:, :, 1:], std[:, :, :1].expand_as(std[:, :, 1:]), atol=1e-4, rtol=1e-4)
    stepped = run(pipe, image, use_adain_norm="on").frames
    assert not torch.allclose(stepped, out)


# ------------------------------------------------------------------------------------------ adapters


@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("names", [["a"], ["a", "b"]])
def test_per_adapter_prompts(adapter_pipe, image, guidance, names):
    pipe = adapter_pipe
    pipe.set_adapters(names, [1.0 / len(names)] * len(names))
    context = pipe.unet.miva_context
    texts = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: texts.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        base = run(pipe, image, guidance_scale=guidance).frames
        same = run(pipe, image, guidance_scale=guidance, batch_prompt=[PROMPT] * len(names)).frames
        other = run(
            pipe,
            image,
            guidance_scale=guidance,
            batch_prompt=["clouds moving in the sky"] * len(names),
            negative_prompt="blurry",
        ).frames
    finally:
        handle.remove()
    rows = (2 if guidance > 1 else 1) * FRAMES
    assert texts[0].shape == (rows, 77, 32)
    assert texts[-1].shape == (rows, 77 * (1 + len(names)), 32)
    if guidance > 1:  # the unconditional block is the negative prompt in every chunk
        uncond = texts[-1][:FRAMES].unflatten(1, (1 + len(names), 77))
        assert all(torch.equal(uncond[:, i], uncond[:, 0]) for i in range(1, 1 + len(names)))
    torch.testing.assert_close(same, base, atol=1e-5, rtol=1e-5)  # own prompt == main prompt: same video
    assert (other - base).abs().max() > 1e-3
    assert context.calls == [] and context.call_state().adapter_prompts is False  # the call's state ended with it


def test_adapter_weights_apply_for_one_call(adapter_pipe, image):
    pipe = adapter_pipe
    pipe.set_adapters(["a", "b"], [0.5, 0.5])
    zero = run(pipe, image, adapter_weights=[0.0, 0.0]).frames
    assert pipe.unet.miva_context.active == [("a", 0.5), ("b", 0.5)]
    pipe.disable_adapters()
    try:
        plain = run(pipe, image).frames
    finally:
        pipe.enable_adapters()
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    assert (run(pipe, image).frames - plain).abs().max() > 1e-3


def test_call_state_is_restored_after_an_error(adapter_pipe, image):
    pipe = adapter_pipe
    pipe.set_adapters(["a", "b"], [0.5, 0.5])
    context = pipe.unet.miva_context
    seen = {}

    def fail(p, i, t, tensors):
        state = context.call_state()
        seen.update(prompts=state.adapter_prompts, weights=state.adapter_weights, store=state.attention_store)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run(
            pipe,
            image,
            batch_prompt=["x", "y"],
            adapter_weights=[1.0, 0.0],
            ca_map_resolutions="all",
            callback_on_step_end=fail,
        )
    assert seen["prompts"] is True and seen["weights"] == (1.0, 0.0) and seen["store"] is not None
    assert context.calls == [] and context.call_state().attention_store is None
    assert context.active == [("a", 0.5), ("b", 0.5)]


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(use_dct_init=True), "use_dct_init"),
        (dict(height=60), "height"),
        (dict(width=100), "width"),
        (dict(use_adain_norm="sometimes"), "use_adain_norm"),
        (dict(first_frame_cond_type="pia"), "first_frame_cond_type"),
        (dict(dct_cutoff_shape="circle", first_frame_cond_type="cinemo", use_dct_init=True), "dct_cutoff_shape"),
        (dict(num_frames=33), "num_frames"),
        (dict(num_frames=1), "num_frames"),
        (dict(shared_noise_ratio=1.5), "shared_noise_ratio"),
        (dict(cil_ratio=0), "cil_ratio"),
        (dict(batch_prompt=["x", "y", "z"]), "batch_prompt"),
        (dict(adapter_weights=[1.0]), "adapter_weights"),
        (dict(ca_map_resolutions=["middle"]), "ca_map_resolutions"),
        (dict(word_to_replace="unknownword"), "word_to_replace"),
    ],
)
def test_bad_arguments_name_the_argument(adapter_pipe, image, kwargs, argument):
    adapter_pipe.set_adapters(["a", "b"])
    with pytest.raises(ValueError, match=argument):
        run(adapter_pipe, image, **kwargs)


def test_image_and_prompt_batches_must_agree(pipe, image):
    with pytest.raises(ValueError, match="image"):
        run(pipe, [image, image], prompt=["a", "b", "c"])


def test_image_inputs_agree(pipe, image):
    """PIL, uint8 array, float array, [0, 1] and [-1, 1] tensors give the same pixels; other sizes are covered
    and center-cropped."""
    reference = pipe.preprocess_image(image, SIZE, SIZE)
    array = np.array(image)
    tensor01 = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for other in (array, array.astype(np.float32) / 255, tensor01, tensor01 * 2 - 1, [image]):
        torch.testing.assert_close(pipe.preprocess_image(other, SIZE, SIZE), reference, atol=1e-6, rtol=0)
    wide = PIL.Image.new("RGB", (128, 64), (255, 0, 0))
    wide.paste((0, 0, 255), (32, 0, 96, 64))  # blue centre square, red borders
    pixels = pipe.preprocess_image(wide, 32, 32)
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 16, 16], torch.tensor([-1.0, -1.0, 1.0]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="image"):
        pipe.preprocess_image(np.zeros((8, 8)), SIZE, SIZE)


# ------------------------------------------------------------------------------------------ outputs, callbacks


def test_output_types_batches_and_callbacks(pipe, image):
    calls = []

    def callback(p, i, t, tensors):
        calls.append((i, int(t), sorted(tensors)))
        return {}

    out = run(
        pipe,
        [image, make_test_image(SIZE, SIZE, seed=1)],
        prompt=PROMPT,
        num_videos_per_prompt=2,
        output_type="np",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )
    assert isinstance(out, MIVAPipelineOutput) and out.ca_maps is None
    assert out.frames.shape == (4, FRAMES, SIZE, SIZE, 3)
    assert calls == [(0, 501, ["latents", "prompt_embeds"]), (1, 1, ["latents", "prompt_embeds"])]
    pil = run(pipe, image, output_type="pil", guidance_scale=1.0).frames
    assert len(pil) == 1 and len(pil[0]) == FRAMES and pil[0][0].size == (SIZE, SIZE)
    latents = run(pipe, image, output_type="latent", guidance_scale=1.0, return_dict=False)
    assert isinstance(latents, tuple) and len(latents) == 1 and latents[0].shape == (1, 4, FRAMES, 8, 8)


def test_text_emb_dir_and_word_to_replace(pipe, image, tmp_path):
    """Precomputed embeddings reproduce the encoded prompt; a learned token replaces the word's first token."""
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, None)
    torch.save(cond.clone(), tmp_path / f"{PROMPT}.pt")
    torch.save(uncond.clone(), tmp_path / "void.pt")
    plain = run(pipe, image).frames
    torch.testing.assert_close(run(pipe, image, text_emb_dir=str(tmp_path)).frames, plain, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="text_emb_dir"):
        run(pipe, image, prompt="clouds", text_emb_dir=str(tmp_path))

    pipe.load_textual_inversion({"<waterfall>": torch.randn(32, generator=gen(4))}, token="<waterfall>")
    replaced = build_prompt_embeds(
        pipe,
        ["a waterfall and a waterfall"],
        batch_size=1,
        device="cpu",
        do_classifier_free_guidance=False,
        word_to_replace="waterfall",
    )
    direct = pipe.encode_prompt(["a <waterfall> and a waterfall"], "cpu", 1, False)[0]
    torch.testing.assert_close(replaced.cond, direct, atol=1e-6, rtol=0)
    assert not torch.allclose(replaced.cond, pipe.encode_prompt(["a waterfall and a waterfall"], "cpu", 1, False)[0])


# ------------------------------------------------------------------------------- diffusers features kept working


def test_free_init_keeps_frame0(pipe, image):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, :, :1].clone()))
    pipe.enable_free_init(num_iters=2)
    try:
        out = run(pipe, image, guidance_scale=1.0, generator=gen(3)).frames
    finally:
        pipe.disable_free_init()
        handle.remove()
    first = image_latent(pipe.vae, image, seed=3)
    assert len(seen) == 2 * STEPS
    assert all(torch.allclose(s, first, atol=1e-5) for s in seen)
    torch.testing.assert_close(out[:, :, :1], first, atol=1e-5, rtol=1e-5)


def test_free_noise_and_fused_qkv_keep_adapters(image, randomize_adapter):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("m", MIVAAdapterConfig(use_motion_lora=True, use_motion_embed=True, motion_lora_rank=4))
    randomize_adapter(pipe, "m", seed=4)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items() if ".adapters." in k}
    with torch.no_grad():
        reference = run(pipe, image, guidance_scale=1.0).frames
        pipe.disable_adapters()
        without = run(pipe, image, guidance_scale=1.0).frames
        pipe.enable_adapters()
    assert (reference - without).abs().max() > 1e-2  # the adapter acts, so losing it would show below
    pipe.enable_free_noise(context_length=FRAMES, context_stride=4)
    processors = pipe.unet.attn_processors
    assert all(isinstance(p, MIVAProcessorBase) for p in processors.values())
    assert sum(isinstance(p, MIVATemporalAttnProcessor) and "m" in p.adapters for p in processors.values()) == 22
    after = {k: v for k, v in pipe.unet.state_dict().items() if ".adapters." in k}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # One context window covering all frames: FreeNoise blocks compute what the plain blocks computed.
    torch.testing.assert_close(run(pipe, image, guidance_scale=1.0).frames, reference, atol=1e-4, rtol=1e-4)
    pipe.fuse_qkv_projections()
    assert all(isinstance(p, MIVAProcessorBase) for p in pipe.unet.attn_processors.values())
    torch.testing.assert_close(run(pipe, image, guidance_scale=1.0).frames, reference, atol=1e-4, rtol=1e-4)


def _tiny_ip_adapter_state_dict(unet, clip_dim=32, seed=0):
    """An IP-Adapter checkpoint in the original layout (`image_proj` + `ip_adapter`) for the tiny UNet."""
    generator = gen(seed)
    cross = unet.config.cross_attention_dim
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor") and "motion_modules" not in n]
    widths = list(unet.config.block_out_channels)
    ip = {}
    for index, name in enumerate(layers):
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        width = widths[-1] if block is None else (widths[block] if name.startswith("down") else widths[::-1][block])
        key = 2 * index + 1
        ip[f"{key}.to_k_ip.weight"] = torch.randn(width, cross, generator=generator) * 0.2
        ip[f"{key}.to_v_ip.weight"] = torch.randn(width, cross, generator=generator) * 0.2
    proj = {
        "proj.weight": torch.randn(4 * cross, clip_dim, generator=generator) * 0.2,
        "proj.bias": torch.zeros(4 * cross),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    return {"image_proj": proj, "ip_adapter": ip}


def test_ip_adapter_matches_stock_and_keeps_ca_lora(image):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    stock = AnimateDiffPipeline(**tiny_components(seed=0))
    for p in (pipe, stock):
        p.set_progress_bar_config(disable=True)
        p.load_ip_adapter(_tiny_ip_adapter_state_dict(p.unet), subfolder="", weight_name="")
    cross = [p for p in pipe.unet.attn_processors.values() if isinstance(p, MIVACrossAttnProcessor)]
    assert len(cross) == 11 and all(p.ip_adapter is not None for p in cross)
    assert all(isinstance(p, MIVAProcessorBase) for p in pipe.unet.attn_processors.values())

    noise = torch.randn(1, 4, FRAMES, 8, 8, generator=gen(5))
    embeds = stock.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, False)
    final = {}
    keep = lambda p, i, t, tensors: final.update(tensors) or {}  # noqa: E731
    run(
        pipe,
        image,
        guidance_scale=1.0,
        latents=noise,
        generator=gen(3),
        ip_adapter_image=image,
        callback_on_step_end=keep,
    )
    expected = reference_latents(
        stock, image_latent(stock.vae, image, 3), noise, 1.0, added_cond_kwargs={"image_embeds": embeds}
    )
    torch.testing.assert_close(final["latents"], expected, atol=2e-5, rtol=1e-5)

    pipe.add_adapter("ca", MIVAAdapterConfig(use_ca_lora=True, use_i2v=False, use_motion_lora=False, ca_lora_rank=4))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".adapters.ca." in name:
                param.normal_(0, 0.3, generator=gen(6))
    with_ip = run(pipe, image, guidance_scale=1.0, ip_adapter_image=image).frames
    pipe.set_ip_adapter_scale(0.0)
    assert all(p.ip_adapter.scale == [0.0] for p in cross)
    without_ip = run(pipe, image, guidance_scale=1.0, ip_adapter_image=image).frames
    assert (with_ip - without_ip).abs().max() > 1e-3  # the IP term acts alongside CA-LoRA
    pipe.unload_ip_adapter()
    assert all(p.ip_adapter is None for p in cross)
    torch.testing.assert_close(run(pipe, image, guidance_scale=1.0).frames, without_ip, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ demo


def test_demo_writes_readable_video_and_gif(tmp_path):
    import imageio

    from miva.demo import run_tiny_demo

    lines = []
    paths = run_tiny_demo(str(tmp_path), steps=2, log=lines.append)
    assert paths == {
        "image": str(tmp_path / "input.png"),
        "mp4": str(tmp_path / "demo.mp4"),
        "gif": str(tmp_path / "demo.gif"),
    }
    assert any("randomised" in line for line in lines) and any(paths["mp4"] in line for line in lines)
    with imageio.get_reader(paths["mp4"], format="ffmpeg") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    with PIL.Image.open(paths["gif"]) as animation:
        assert animation.n_frames == FRAMES and animation.size == (SIZE, SIZE)


def test_cli_dispatches_demo(monkeypatch, tmp_path):
    import miva.demo
    from miva.cli import main

    calls = []
    monkeypatch.setattr(miva.demo, "run_demo", lambda out, **kwargs: calls.append(("world", out, kwargs)))
    monkeypatch.setattr(miva.demo, "run_tiny_demo", lambda out, **kwargs: calls.append(("tiny", out, kwargs)))
    assert main(["demo", "--out", str(tmp_path), "--frames", "4", "--steps", "3"]) == 0
    assert main(["demo", "--out", str(tmp_path), "--tiny", "--adapter", "zoom_in", "--scene", "2"]) == 0
    assert calls == [
        ("world", str(tmp_path), {"adapter": "right", "scene": 0, "frames": 4, "steps": 3, "seed": 0, "base": "wan"}),
        ("tiny", str(tmp_path), {"frames": 8, "steps": 4, "seed": 0}),
    ]
    assert main([]) == 2

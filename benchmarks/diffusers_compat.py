"""Measure which diffusers pipeline features work with a MIVA adapter active (the table in docs/diffusers-compat.md).

For each feature: the tiny pipeline with one random adapter that has every part (cross-frame branch with its own W_Q
and adaptive first-frame weight, MotionLoRA + motion embedding, CA-LoRA + Q-LoRA) runs the same call with and without
the feature; the row gives whether it ran, the largest pixel difference to the call without the feature (videos in
[0, 1]) and how much the adapter itself moves that video (so a small difference is not a dead adapter).

    python benchmarks/diffusers_compat.py            # CPU, about two minutes on 2 cores; markdown table on stdout
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

from miva import MIVAAdapterConfig, MIVAPipeline  # noqa: E402
from miva.attention_processors import get_miva_adapter_modules  # noqa: E402
from miva.tiny import make_test_image, tiny_components  # noqa: E402

FULL = dict(use_ca_lora=True, use_q_lora=True, ca_lora_rank=4, motion_lora_rank=4, use_motion_embed=True,
            i2v_train_q=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.5")
IMAGE = make_test_image(64, 64, seed=0)


def make_pipe(adapter: bool = True) -> MIVAPipeline:
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    if adapter:
        pipe.add_adapter("a", MIVAAdapterConfig(**FULL))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in get_miva_adapter_modules(pipe.unet, "a").values():
                for parameter in module.parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return pipe


def run(pipe, **kwargs) -> torch.Tensor:
    options = dict(prompt="a waterfall", num_frames=4, height=64, width=64, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    options.update(kwargs)
    return pipe(IMAGE, **options).frames.float()


def _tiny_ip_adapter(unet) -> dict:
    """Random IP-Adapter weights for the tiny UNet (original layout: image_proj + ip_adapter)."""
    generator = torch.Generator().manual_seed(0)
    cross = unet.config.cross_attention_dim
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor") and "motion_modules" not in n]
    widths = list(unet.config.block_out_channels)
    ip = {}
    for index, name in enumerate(layers):
        block = None if name.startswith("mid_block") else int(name.split(".")[1])
        width = widths[-1] if block is None else (widths[block] if name.startswith("down") else widths[::-1][block])
        ip[f"{2 * index + 1}.to_k_ip.weight"] = torch.randn(width, cross, generator=generator) * 0.2
        ip[f"{2 * index + 1}.to_v_ip.weight"] = torch.randn(width, cross, generator=generator) * 0.2
    proj = {"proj.weight": torch.randn(4 * cross, 32, generator=generator) * 0.2, "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    return {"image_proj": proj, "ip_adapter": ip}


def _peft_lora(pipe, weight: float) -> None:
    from peft import LoraConfig

    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False), adapter_name="peft")
    pipe.unet.set_adapters(["peft"], weights=[weight])


def _sequential_accelerate(pipe) -> None:
    from accelerate import cpu_offload

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cpu_offload(component, torch.device("cpu"))


def _vae_tiling(pipe) -> None:
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 4


def _save_and_reload(pipe):
    folder = tempfile.mkdtemp()
    pipe.save_pretrained(folder)
    return MIVAPipeline.from_pretrained(folder)


FN_CONTEXT = dict(context_length=4, context_stride=2)
FEATURES = {
    # name: (what the pipeline does, extra call arguments, the call it is compared with: None = the plain call)
    "enable_model_cpu_offload(device='cpu')": (lambda p: p.enable_model_cpu_offload(device="cpu"), {}, None),
    "enable_sequential_cpu_offload(device='cpu')": (lambda p: p.enable_sequential_cpu_offload(device="cpu"), {}, None),
    "accelerate cpu_offload (sequential), device 'cpu'": (_sequential_accelerate, {}, None),
    "enable_group_offload leaf_level, to disk": (
        lambda p: p.enable_group_offload(torch.device("cpu"), offload_type="leaf_level",
                                         offload_to_disk_path=tempfile.mkdtemp()), {}, None),
    "enable_group_offload block_level, to disk": (
        lambda p: p.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1,
                                         offload_to_disk_path=tempfile.mkdtemp()), {}, None),
    "unet.enable_layerwise_casting(float8_e4m3fn -> float32)": (
        lambda p: p.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32),
        {}, None),
    "vae.enable_slicing()": (lambda p: p.vae.enable_slicing(), {}, None),
    "vae.enable_tiling() (32 px tiles)": (_vae_tiling, {}, None),
    "pipe.to(dtype=torch.bfloat16)": (lambda p: p.to(dtype=torch.bfloat16), {}, None),
    "enable_free_init(num_iters=2)": (lambda p: p.enable_free_init(num_iters=2), {}, None),
    "enable_free_noise (one window = all frames, guidance 1)": (
        lambda p: p.enable_free_noise(context_length=4), dict(guidance_scale=1.0), dict(guidance_scale=1.0)),
    "FreeNoise split inference (chunks of 3 frames), 6 frames": (
        lambda p: (p.enable_free_noise(**FN_CONTEXT), p.enable_free_noise_split_inference(48, 3)),
        dict(num_frames=6), ("free_noise", dict(num_frames=6))),
    "FreeNoise prompt interpolation {0: ..., 3: ...}": (
        lambda p: p.enable_free_noise(**FN_CONTEXT), dict(prompt={0: "a waterfall", 3: "a waterfall"}),
        ("free_noise", dict(prompt="a waterfall"))),
    "prompt_embeds of 20 tokens + guidance": (
        lambda p: None, dict(prompt=None, prompt_embeds="short"), dict(prompt=None, prompt_embeds="short",
                                                                        negative_prompt_embeds="short_negative")),
    "pipe.load_ip_adapter (scale 0)": (
        lambda p: (p.load_ip_adapter(_tiny_ip_adapter(p.unet), subfolder="", weight_name=""),
                   p.set_ip_adapter_scale(0.0)), dict(ip_adapter_image=IMAGE), None),
    "unet._load_ip_adapter_weights (UNet loader, scale 0)": (
        lambda p: (p.unet._load_ip_adapter_weights([_tiny_ip_adapter(p.unet)]), p.set_ip_adapter_scale(0.0)),
        dict(ip_adapter_image=IMAGE), None),
    "diffusers LoRA (PEFT on the UNet, weight 0)": (lambda p: _peft_lora(p, 0.0), {}, None),
    "fuse_qkv_projections()": (lambda p: p.fuse_qkv_projections(), {}, None),
    "callback_on_step_end (returns nothing)": (lambda p: None, dict(callback_on_step_end=lambda *a: {}), None),
    "unet.set_default_attn_processor() then enable_adapters()": (
        lambda p: (p.unet.set_default_attn_processor(), p.enable_adapters()), {}, None),
    "unet.set_default_attn_processor() (adapters off: stock)": (
        lambda p: p.unet.set_default_attn_processor(), {}, "no_adapter"),
    "MIVAPipeline.from_pipe(pipe)": ("from_pipe", {}, None),
    "save_pretrained + from_pretrained": ("save", {}, None),
}


def _resolve(pipe, kwargs: dict) -> dict:
    out = dict(kwargs)
    for key, value in kwargs.items():
        if value in ("short", "short_negative"):
            text = "a waterfall" if value == "short" else ""
            ids = pipe.tokenizer([text], padding="max_length", max_length=20, return_tensors="pt").input_ids
            with torch.no_grad():
                out[key] = pipe.text_encoder(ids)[0]
    return out


def measure(name: str) -> tuple[str, str, str]:
    setup, kwargs, reference = FEATURES[name]
    try:
        pipe = make_pipe()
        if reference is None:
            expected = run(make_pipe(), **_resolve(pipe, kwargs))
        elif reference == "no_adapter":
            expected = run(make_pipe(adapter=False))
        elif isinstance(reference, tuple):
            twin = make_pipe()
            twin.enable_free_noise(**FN_CONTEXT)
            expected = run(twin, **reference[1])
        else:
            expected = run(make_pipe(), **_resolve(pipe, reference))
        if setup == "from_pipe":
            pipe = MIVAPipeline.from_pipe(pipe)
        elif setup == "save":
            pipe = _save_and_reload(pipe)
        else:
            setup(pipe)
        video = run(pipe, **_resolve(pipe, kwargs))
        diff = (video - expected).abs().max().item()
        active = pipe.get_active_adapters()
        return "yes" if active or reference == "no_adapter" else "adapter lost", f"{diff:.2g}", ", ".join(active)
    except Exception as error:  # the table reports what breaks
        traceback.print_exc(file=sys.stderr)
        return "no", f"{type(error).__name__}: {str(error).splitlines()[0][:90]}", ""


def main() -> None:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    effect = (run(make_pipe()) - run(make_pipe(adapter=False))).abs().max().item()
    print(f"adapter effect on the plain video: {effect:.3f} (max pixel difference, videos in [0, 1])\n")
    print("| feature (adapter active) | runs | max diff vs the same call without it | active adapters after |")
    print("|---|---|---|---|")
    for name in FEATURES:
        ran, diff, active = measure(name)
        print(f"| {name} | {ran} | {diff} | {active} |", flush=True)


if __name__ == "__main__":
    main()

"""The config-driven subcommands on the offline tiny models: `miva infer / train / embed-text / convert / bases`."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from miva import MIVAAdapterConfig
from miva.cli import main
from miva.commands.common import load_config_adapters, load_learned_words
from miva.commands.video_io import hist_match_frames, to_uint8
from miva.config import load_config
from miva.demo import randomise_adapter_outputs
from miva.loaders import adapter_state_dict
from miva.pipelines.pipeline_miva import MIVAPipeline
from miva.tiny import make_test_image, tiny_components

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "configs"
SMALL = ["validation_data.video_length=4", "validation_data.num_inference_steps=2"]


def write_config(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def read_pngs(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with two test images, and a native adapter folder whose output weights are random (non-zero)."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    images.mkdir()
    for seed, name in ((3, "lake"), (4, "sky")):
        make_test_image(64, 64, seed).save(images / f"{name}.png")
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("waves", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4))
    randomise_adapter_outputs(pipe, "waves", seed=1, std=0.2)
    pipe.save_adapter("waves", root / "waves")
    return {"root": root, "images": images, "adapter": root / "waves", "pipe": pipe}


def base_config(inputs, **updates) -> dict:
    data = {
        "global_seed": 42,
        "unet_additional_kwargs": {"use_ca_lora": True, "ca_lora_rank": 4},
        "validation_data": {
            "image_path": str(inputs["images"]),
            "prompt_path": ["lake"],
            "prompts": ["water waves"],
            "video_length": 8,
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "guidance_scale": 1.0,
            "format": "png",
        },
    }
    data.update(updates)
    return data


@pytest.mark.parametrize("name, expected", [
    ("infer_single", ["waterfall.gif", "config.yaml", *(f"waterfall_CAMap/{lv}/video0_token01_frame{f:02d}.png"
                                                        for lv in ("high", "low") for f in range(8))]),
    ("infer_two_adapters", ["lake.mp4", "config.yaml"]),
])  # fmt: skip
def test_infer_tiny_on_each_inference_example(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples use paths relative to the repository
    assert run_cli("infer", "--config", EXAMPLES / f"{name}.yaml", "--tiny", "--set", f"output_dir={tmp_path}") == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(expected)
    if name == "infer_single":
        with Image.open(tmp_path / "waterfall.gif") as gif:
            assert (gif.n_frames, gif.size) == (8, (64, 64))
    saved = load_config(str(tmp_path / "config.yaml"))
    assert saved == load_config(EXAMPLES / f"{name}.yaml", [f"output_dir={tmp_path}"])


def test_infer_equals_the_pipeline_and_set_overrides_apply(inputs, tmp_path):
    """`miva infer` = load the adapter + call MIVAPipeline with pipeline_kwargs(); `--set` and `--format` apply."""
    config_path = write_config(tmp_path / "c.yaml", base_config(inputs, unet_checkpoint_path=str(inputs["adapter"])))
    out = tmp_path / "out"
    sets = [
        "--set",
        f"output_dir={out}",
        "--set",
        "validation_data.video_length=4",
        "--set",
        "unet_additional_kwargs.adapter_weights=[0.8]",
        "--set",
        "validation_data.hist_match=true",
    ]
    assert run_cli("infer", "--config", config_path, "--tiny", *sets, "--format", "png") == 0
    frames = read_pngs(out / "lake")
    assert frames.shape == (4, 64, 64, 3)

    config = load_config(config_path, [s for s in sets if s != "--set"])
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_adapters(str(inputs["adapter"]), adapter_names=["miva"], weights=[0.8])
    image = Image.open(inputs["images"] / "lake.png").convert("RGB")
    kwargs = config.pipeline_kwargs()
    assert kwargs["adapter_weights"] == [0.8] and kwargs["num_frames"] == 4
    direct = pipe(image, "water waves", generator=torch.Generator().manual_seed(42), output_type="np", **kwargs).frames[
        0
    ]
    np.testing.assert_array_equal(frames, to_uint8(hist_match_frames(direct)))
    pipe.disable_adapters()
    without = pipe(
        image, "water waves", generator=torch.Generator().manual_seed(42), output_type="np", **kwargs
    ).frames[0]
    assert np.abs(to_uint8(without).astype(int) - to_uint8(direct).astype(int)).max() > 5  # the adapter acted


def test_infer_from_local_model_folders_equals_tiny(inputs, tmp_path):
    """The non-tiny path: pretrained_model_path (diffusers folder) + motion_module_path (MotionAdapter folder)."""
    from diffusers import StableDiffusionPipeline

    parts = tiny_components(seed=0)
    StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=parts["feature_extractor"],
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "sd")
    parts["motion_adapter"].save_pretrained(tmp_path / "mm")
    data = base_config(inputs, pretrained_model_path=str(tmp_path / "sd"), motion_module_path=str(tmp_path / "mm"))
    config_path = write_config(tmp_path / "c.yaml", data)
    for tiny, folder in ((False, "local"), (True, "tiny")):
        args = [
            "infer",
            "--config",
            config_path,
            "--set",
            f"output_dir={tmp_path / folder}",
            *sum((["--set", s] for s in SMALL), []),
        ] + (["--tiny"] if tiny else [])
        assert run_cli(*args) == 0
    np.testing.assert_array_equal(read_pngs(tmp_path / "local" / "lake"), read_pngs(tmp_path / "tiny" / "lake"))


def test_typos_give_one_line_errors_with_the_suggestion(tmp_path, capsys):
    typo = write_config(tmp_path / "typo.yaml", {"unet_additional_kwargs": {"q_downsample_ration": 2}})
    assert run_cli("infer", "--config", typo, "--tiny") == 2
    err = capsys.readouterr().err
    assert err == (
        "miva infer: error: unet_additional_kwargs.q_downsample_ration: unknown key; did you mean "
        "'q_downsample_ratio'?\n(run with --debug or MIVA_DEBUG=1 for the traceback)\n"
    )
    ok = write_config(tmp_path / "ok.yaml", {})
    assert run_cli("embed-text", "--config", ok, "--tiny", "--set", "unet_additional_kwargs.ca_pe_mode=rope3d") == 2
    err = capsys.readouterr().err
    error_line, hint = err.splitlines()  # the error, then the --debug hint (cli.py)
    assert error_line.startswith("miva embed-text: error: unet_additional_kwargs.ca_pe_mode: 'rope3d'")
    assert error_line.endswith("did you mean 'rope_3d'?") and "--debug" in hint
    assert run_cli("train", "--config", tmp_path / "missing.yaml") == 2
    assert "file not found" in capsys.readouterr().err


def test_embed_text_then_infer_with_text_emb_dir(inputs, tmp_path, monkeypatch):
    """`miva embed-text` writes every prompt `miva infer` needs; inferring from them equals encoding on the fly."""
    monkeypatch.chdir(ROOT)
    config = str(EXAMPLES / "infer_two_adapters.yaml")
    sets = [f"validation_data.image_path={inputs['images']}", "validation_data.format=png", *SMALL]
    sets = sum((["--set", s] for s in sets), [])
    assert run_cli("embed-text", "--config", config, "--tiny", "--out", tmp_path / "embs", *sets) == 0
    prompts = ["a waterfall, water flowing", "clouds moving in the sky"]
    names = {p.name for p in (tmp_path / "embs").iterdir()}
    assert names == {f"{', '.join(prompts)}.pt", *(f"{p}.pt" for p in prompts), "void.pt"}
    void = torch.load(tmp_path / "embs" / "void.pt", weights_only=True)
    assert void.shape == (1, 77, 32)
    for emb_dir, folder in ((None, "plain"), (tmp_path / "embs", "embs")):
        extra = ["--set", f"validation_data.text_emb_dir={emb_dir}"] if emb_dir else []
        assert (
            run_cli("infer", "--config", config, "--tiny", "--set", f"output_dir={tmp_path / folder}", *sets, *extra)
            == 0
        )
    np.testing.assert_array_equal(read_pngs(tmp_path / "plain" / "lake"), read_pngs(tmp_path / "embs" / "lake"))


def research_split_files(unet, folder: Path, rank: int = 4) -> dict:
    """Research split checkpoints for the tiny UNet: motion LoRAs and CA-LoRAs with random weights."""
    g = torch.Generator().manual_seed(5)
    motion, ca = {}, {}
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        attn = unet.get_submodule(layer)
        if ".motion_modules." in name:
            if name.startswith("mid_block"):  # the research (AnimateDiff v3) UNet has no mid-block motion module
                continue
            head, k = layer.rsplit(".transformer_blocks.0.attn", 1)
            key, target = (
                f"{head}.temporal_transformer.transformer_blocks.0.attention_blocks.{int(k) - 1}.processor",
                motion,
            )
        elif name.endswith("attn2.processor"):
            key, target = f"{layer}.processor", ca
        else:
            continue
        for proj, linear in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            if target is ca and proj == "to_q":
                continue
            target[f"{key}.{proj}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=g) / 4
            target[f"{key}.{proj}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=g) / 4
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(motion, folder / "lora.pt")
    torch.save(ca, folder / "ca.pt")
    return {"adapter_lora_path": str(folder / "lora.pt"), "ca_lora_path": str(folder / "ca.pt")}


def test_convert_then_load_equals_loading_the_research_files(inputs, tmp_path):
    pipe = inputs["pipe"]
    paths = research_split_files(pipe.unet, tmp_path / "research")
    data = {
        "load_from_adapter_ckpt": True,
        **paths,
        "adapter_names": ["rot"],
        "unet_additional_kwargs": {
            "use_ca_lora": True,
            "ca_lora_rank": 4,
            "ca_lora_scale": 2,
            "motion_module_kwargs": {"lora_rank": 4},
        },
    }
    config_path = write_config(tmp_path / "research.yaml", data)
    assert run_cli("convert", "--config", config_path, "--tiny", "--out", tmp_path / "native") == 0
    folder = tmp_path / "native" / "rot"
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "miva_adapter.safetensors"}
    fresh = MIVAPipeline(**tiny_components(seed=0))
    names = load_config_adapters(fresh, load_config(config_path), tiny=True)
    fresh.load_adapters(str(folder), adapter_names=["converted"])
    research, converted = adapter_state_dict(fresh.unet, "rot"), adapter_state_dict(fresh.unet, "converted")
    assert names == ["rot"] and research.keys() == converted.keys()
    assert all(torch.equal(research[k], converted[k]) for k in research)
    assert fresh.unet.miva_context.configs["converted"].ca_lora_scale == 2.0


def test_load_config_adapters_sets_weights_mode_and_learned_words(tmp_path):
    from safetensors.torch import save_file

    vector = torch.arange(32, dtype=torch.float32) / 32
    save_file({"clouds_new": vector}, str(tmp_path / "learned_embeds.safetensors"))
    config = load_config({
        "adapter_names": ["a", "b"], "textemb_checkpoint_path": str(tmp_path / "learned_embeds.safetensors"),
        "unet_additional_kwargs": {"ca_lora_rank": [2, 6], "use_ca_lora": True, "adapter_weights": [0.7, 0.3],
                                   "parallel_mode": "weights"},
        "validation_data": {"word_to_replace": "clouds_new"}})  # fmt: skip
    pipe = MIVAPipeline(**tiny_components(seed=0))
    assert load_config_adapters(pipe, config) == ["a", "b"]
    context = pipe.unet.miva_context
    assert context.active == [("a", 0.7), ("b", 0.3)] and context.parallel_mode == "weights"
    assert [context.configs[n].ca_lora_rank for n in ("a", "b")] == [2, 6]
    assert load_learned_words(pipe, config) == ["clouds_new"]
    token = pipe.tokenizer.convert_tokens_to_ids("clouds_new")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token], vector)
    assert load_learned_words(pipe, config) == []  # known now


def test_train_maps_the_config_to_the_trainer(monkeypatch, tmp_path):
    import miva.training.train as trainer

    seen = []
    monkeypatch.setattr(trainer, "train", lambda config, components=None: seen.append(config) or tmp_path)
    assert (
        run_cli(
            "train",
            "--config",
            EXAMPLES / "train.yaml",
            "--tiny",
            "--set",
            "max_train_steps=3",
            "--set",
            f"output_dir={tmp_path}",
            "--resume",
            "latest",
        )
        == 0
    )
    (config,) = seen
    assert (config.tiny, config.max_train_steps, config.resume_from_checkpoint, config.output_dir) == (
        True,
        3,
        "latest",
        str(tmp_path),
    )
    assert config.parts == ["i2v", "motion_lora", "ca_lora"] and config.adapter.q_downsample_ratio == 1
    own_layout = write_config(
        tmp_path / "own.yaml", {"output_dir": str(tmp_path), "adapter": {"use_ca_lora": True}, "max_train_steps": 2}
    )
    assert run_cli("train", "--config", own_layout, "--tiny") == 0
    assert seen[1].adapter.use_ca_lora and seen[1].max_train_steps == 2  # handed to miva.training.command


def test_accelerate_splits_the_images_across_two_processes(inputs, tmp_path, accelerate_launch):
    """Two CPU processes, one image each. accelerate 1.15's `--cpu --num_processes 2` starts one process (multi-CPU
    needs mpirun), so the launch is `--multi_gpu` without GPUs: torchrun with gloo, each process on the CPU."""
    data = base_config(inputs, output_dir=str(tmp_path / "out"))
    data["validation_data"].update(prompt_path="all", prompts=None, batch_prompt="water", video_length=4, format="gif")
    config_path = write_config(tmp_path / "c.yaml", data)
    cmd, env = accelerate_launch("miva.cli", "infer", "--config", config_path, "--tiny")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[process 0] lake" in result.stdout and "[process 1] sky" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "lake.gif", "sky.gif"]


def test_bases_create_then_the_oa_adapter_takes_its_bin(tmp_path, monkeypatch):
    from miva.attention_processors import add_miva_adapter, install_miva_processors
    from miva.tiny import tiny_unet_motion
    from miva.training.orthogonal import apply_orthogonal_bins, layer_dims, load_bases_library

    monkeypatch.chdir(ROOT)
    example = EXAMPLES / "train_orthogonal.yaml"
    for out, seed in ((tmp_path / "a.safetensors", []), (tmp_path / "b.safetensors", ["--seed", "42"])):
        assert run_cli("bases", "create", "--config", example, "--tiny", "--out", out, *seed) == 0
    bases, again = load_bases_library(tmp_path / "a.safetensors"), load_bases_library(tmp_path / "b.safetensors")
    unet = tiny_unet_motion(seed=0)
    assert bases.keys() == layer_dims(unet).keys()
    assert all(torch.equal(bases[k], again[k]) for k in bases)  # --seed defaults to global_seed (42)
    eye = torch.eye(bases[next(iter(bases))].shape[0])
    assert torch.allclose(bases[next(iter(bases))].T @ bases[next(iter(bases))], eye, atol=1e-5)

    config = load_config(example, [f"unet_additional_kwargs.oa_bases_path={tmp_path / 'a.safetensors'}"])
    trainer_config = config.train_config(tiny=True)
    install_miva_processors(unet)
    add_miva_adapter(unet, trainer_config.adapter_name, trainer_config.adapter)
    used = apply_orthogonal_bins(unet, trainer_config.adapter_name, load_bases_library(trainer_config.oa_bases_path))
    assert used and set(used.values()) == {1}  # oa_bin_id: 1 (rank 4, every layer has >= 8 bins)
    key = next(k for k in used if k.endswith("attn1.to_q_lora"))
    lora = unet.get_submodule(key.replace(".attn1.to_q_lora", ".attn1.processor.adapters.rotate_bin1.to_q_lora"))
    assert torch.equal(lora.up.weight, bases[key][:, 4:8]) and not lora.up.weight.requires_grad
    assert run_cli("bases", "create", "--tiny") == 2  # no --out and no oa_bases_path


def tiny_ip_adapter_file(unet, path: Path) -> None:
    """An IP-Adapter checkpoint (`image_proj` + `ip_adapter` K/V per cross-attention) sized for the tiny models."""
    g = torch.Generator().manual_seed(6)
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor") and "motion_modules" not in n]
    ip_adapter = {}
    for i, name in enumerate(layers):
        hidden = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
        ip_adapter[f"{2 * i + 1}.to_k_ip.weight"] = torch.randn(hidden, 32, generator=g) / 4
        ip_adapter[f"{2 * i + 1}.to_v_ip.weight"] = torch.randn(hidden, 32, generator=g) / 4
    image_proj = {"proj.weight": torch.randn(4 * 32, 32, generator=g) / 4, "proj.bias": torch.zeros(4 * 32),
                  "norm.weight": torch.ones(32), "norm.bias": torch.zeros(32)}  # fmt: skip
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)


def test_ip_adapter_keys_load_it_and_feed_the_input_image(inputs, tmp_path):
    tiny_ip_adapter_file(inputs["pipe"].unet, tmp_path / "ip-adapter_tiny.bin")
    data = base_config(inputs, use_ip_adapter=True, ip_ckpt=str(tmp_path / "ip-adapter_tiny.bin"),
                       image_encoder_path="models/image_encoder")  # fmt: skip
    config_path = write_config(tmp_path / "c.yaml", data)
    for use_ip in ("true", "false"):
        args = ["--set", f"output_dir={tmp_path / use_ip}", "--set", f"use_ip_adapter={use_ip}"]
        assert run_cli("infer", "--config", config_path, "--tiny", *args, *sum((["--set", s] for s in SMALL), [])) == 0
    with_ip, without = read_pngs(tmp_path / "true" / "lake"), read_pngs(tmp_path / "false" / "lake")
    assert with_ip.shape == without.shape == (4, 64, 64, 3)
    assert np.abs(with_ip.astype(int) - without.astype(int)).max() > 0  # the image prompt acted

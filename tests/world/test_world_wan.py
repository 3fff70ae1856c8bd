"""The MotionWorld Wan base (`miva-world-wan`, issue 31 items 1-3): loaded by name offline from its folder, a clear
message when the folder is missing, its model card, the evaluation at 9 frames, and Wan world adapters trained with
`miva train` and shipped. Runs on the session's smoke base (`wan_world_base`: pretrain_wan, 2 + 2 + 2 steps)."""

import json

import numpy as np
import pytest
import torch
from no_hub import block_hub
from safetensors.torch import load_file

import miva.base_registry as registry
from miva.backbones.declared import WAN
from miva.loaders.base_models import load_base
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline


def _stored(folder, key):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))[key].float()


def test_wan_world_loads_by_name_offline_from_its_folder(wan_world, monkeypatch):
    from miva.world import load_pipeline

    hub = block_hub(monkeypatch)
    assert registry.base_backbone("world-wan") == WAN.id and registry.known_base("world-wan").name == "miva-world-wan"
    for pipe in (load_base("miva-world-wan"), load_base("world-wan"), load_pipeline(base="wan")):
        assert isinstance(pipe, MIVAWanPipeline) and pipe.transformer.dtype == torch.float32
        for key in ("proj_out.weight", "blocks.0.attn1.to_q.weight"):  # the folder's weights, not the tiny model's
            torch.testing.assert_close(pipe.transformer.state_dict()[key], _stored(wan_world, key), rtol=0, atol=0)
        assert pipe.vae.config.scale_factor_temporal == 1 and pipe.transformer.config.num_layers == 6
    assert not hub


def test_a_missing_wan_world_folder_names_the_rebuild_command(monkeypatch, tmp_path):
    import dataclasses

    from miva.world import load_pipeline

    bases = tuple(dataclasses.replace(b, folder=tmp_path) if b.name == "miva-world-wan" else b
                  for b in registry.KNOWN_BASES)
    monkeypatch.setattr(registry, "KNOWN_BASES", bases)
    expected = (f"miva-world-wan: no base in {tmp_path} (the MotionWorld Wan2.1-architecture base (64x64 frames, "
                f"9-frame clips, docs/motionworld.md)); rebuild it with `python -m miva.world.pretrain_wan --out "
                f"{registry.WORLD_WAN_PATH}`")
    for load in (lambda: load_base("miva-world-wan"), lambda: load_pipeline(base="wan")):
        with pytest.raises(FileNotFoundError) as error:
            load()
        assert str(error.value) == expected
    with pytest.raises(ValueError, match=r"base='dit' is not a MotionWorld base; choose one of \['unet', 'wan'\]"):
        load_pipeline(base="dit")


def test_the_wan_base_card_is_built_from_its_pretraining_log(wan_world_base):
    """pretrain_wan writes README.md from pretrain_log.json: architecture, parameters, time, machine, the mix."""
    card = (wan_world_base / "README.md").read_text()
    log = json.loads((wan_world_base / "pretrain_log.json").read_text())
    assert card.startswith("---\n") and "- wan2.1" in card and "# MotionWorld Wan base (miva)" in card
    transformer = log["parameters"]["transformer"] / 1e6
    assert f"transformer {transformer:.2f}M" in card and "WanTransformer3DModel" in card
    assert f"on {log['machine']}." in card and f"`{log['command']}`" in card
    assert "transformer_steps 2" not in card and "Transformer: 2 steps, batch 4 clips of 9 frames" in card
    assert "10% static, 26% drift, 24% zoom (U[1.02, 1.06]/frame), 24% turn (U[2, 6] deg/frame)" in card


def test_decoder_refinement_keeps_the_latent_space_and_sharpens_only_the_decoder(wan_world_base, tmp_path):
    """Phase 3 (`--init-from` a finished folder): the transformer, the text encoder and the VAE's encoder are stored
    bit for bit as before (so the transformer's latent space is unchanged), the decoder moved, and the log and card
    keep phases 1-2's recipe and time and add phase 3's."""
    from diffusers import WanPipeline

    from miva.world.pretrain_wan import WanPretrainRecipe, pretrain_wan

    lines = []
    out = pretrain_wan(tmp_path / "refined", WanPretrainRecipe(decoder_steps=3, warmup=1, init_from=str(wan_world_base)),
                       log=lines.append)
    assert lines[0] == f"vae and transformer from {wan_world_base}" and not any(l.startswith(("vae step", "transformer step"))
                                                                           for l in lines)
    before, after = WanPipeline.from_pretrained(wan_world_base), WanPipeline.from_pretrained(out)
    for name in ("transformer", "text_encoder"):
        for key, value in getattr(before, name).state_dict().items():
            assert torch.equal(getattr(after, name).state_dict()[key], value), (name, key)
    vae_before, vae_after = before.vae.state_dict(), after.vae.state_dict()
    frozen = [k for k in vae_before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(vae_after[k], vae_before[k]) for k in frozen)
    moved = [k for k in vae_before if k.startswith("decoder.") and not torch.equal(vae_after[k], vae_before[k])]
    assert moved, "the decoder did not train"
    earlier, record = (json.loads((folder / "pretrain_log.json").read_text()) for folder in (wan_world_base, out))
    assert record["vae_seconds"] == earlier["vae_seconds"] and record["recipe"]["transformer_steps"] == 2
    assert record["recipe"]["decoder_steps"] == 3 and record["latents_std"] == earlier["latents_std"]
    assert record["command"].endswith("--vae-steps 2 --transformer-steps 2 --decoder-steps 3")
    assert "3. Decoder refinement: 3 steps" in (out / "README.md").read_text()


def test_init_from_errors_name_the_field(tmp_path):
    from miva.world.pretrain_wan import WanPretrainRecipe, pretrain_wan

    with pytest.raises(FileNotFoundError, match=rf"init_from='{tmp_path}' has no pretrain_log.json: give a folder that "
                                                r"`python -m miva.world.pretrain_wan` wrote"):
        pretrain_wan(tmp_path / "out", WanPretrainRecipe(init_from=str(tmp_path), decoder_steps=1))
    with pytest.raises(ValueError, match=rf"init_from='{tmp_path}' with reuse='vae,transformer' keeps phases 1-2 and "
                                         r"runs phase 3 only, but decoder_steps=0; give decoder_steps >= 1, or "
                                         r"reuse='vae'"):
        pretrain_wan(tmp_path / "out", WanPretrainRecipe(init_from=str(tmp_path)))


def test_a_base_without_phase_3_has_a_card_without_it(tmp_path):
    """The shipped recipe has no decoder phase (decoder_steps 0): its log and card say two phases only."""
    from miva.world.card import write_base_card
    from miva.world.pretrain_wan import WanPretrainRecipe

    assert WanPretrainRecipe.decoder_steps == 0
    record = json.loads((registry.WORLD_WAN_PATH / "pretrain_log.json").read_text())
    assert "decoder_seconds" not in record and "--decoder-steps" not in record["command"]
    (tmp_path / "pretrain_log.json").write_text(json.dumps(record))
    card = write_base_card(tmp_path).read_text()
    assert "2. Transformer:" in card and "3. Decoder" not in card and "decoder" not in card.split("Time:")[1]


def test_metrics_score_nine_frame_videos():
    """The ground truth of a 9-frame clip scores as its own motion, coherent over all 9 frames."""
    from miva.world.metrics import evaluate_video
    from miva.world.motions import get_motion
    from miva.world.scenes import make_scene, render_clip

    scene = make_scene("heldout", 1)
    for name in ("right", "zoom_in"):
        truth = render_clip(scene, get_motion(name), 9, 64)
        row = evaluate_video(truth, scene, get_motion(name))
        assert row["class"] == name and row["class_correct"] and row["coherent_length"] == 9
        assert len(row["frame_psnr"]) == 8


def test_evaluate_base_wan_end_to_end_records_base_and_frames(wan_world, tmp_path):
    from miva.world.evaluate import WAN_SAMPLING, main, sampling_defaults

    assert sampling_defaults("wan") == WAN_SAMPLING == {
        "num_frames": 9, "num_inference_steps": 25, "guidance_scale": 1.0,
        "first_frame_cond_type": "cinemo", "use_dct_init": True}
    out = tmp_path / "wan.json"
    assert main(["--motion", "right", "--base", "wan", "--scenes", "1", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["base"] == "wan" and result["base_model"] == "wan" and result["videos"] == 1
    assert result["sampling"] == {**WAN_SAMPLING, "num_inference_steps": 2}
    from miva.world import base_fingerprint

    assert result["base_fingerprint"] == base_fingerprint(wan_world) == base_fingerprint(base="wan")
    assert len(result["base_fingerprint"]) == 12 and result["base_fingerprint"] != base_fingerprint(wan_world / "vae")
    row = result["rows"][0]
    assert len(row["frame_psnr"]) == 8 and 1 <= row["coherent_length"] <= 9 and np.isfinite(row["psnr"])
    # a base folder works too (the architecture read from its model_index.json), and the ground-truth reference
    assert main(["--motion", "right", "--base", str(wan_world), "--scenes", "1", "--reference", "ground_truth",
                 "--out", str(out)]) == 0
    truth = json.loads(out.read_text())
    assert truth["base"] == "wan" and truth["base_model"] == str(wan_world) and truth["sampling"]["num_frames"] == 9


def test_regional_evaluation_on_the_wan_base(wan_world):
    from miva.world import load_pipeline
    from miva.world.evaluate import evaluate_regional_pipeline, reference_video
    from miva.world.motions import get_motion

    pipe = load_pipeline(base="wan")
    pipe.set_progress_bar_config(disable=True)
    result = evaluate_regional_pipeline(pipe, "halves", ("right", "left"), scenes=1, num_inference_steps=2)
    assert result["base"] == "wan" and result["sampling"]["num_frames"] == 9
    assert sorted(result["regions"]) == sorted(n for n in result["rows"][0] if n != "scene")
    video = reference_video(pipe, 0, get_motion("right"), "still")
    assert video.shape == (9, 64, 64, 3) and video.dtype == np.uint8


def test_the_wan_recipe_is_a_miva_train_config_for_the_wan_base():
    from miva.backbones.wan.config import WanAdapterConfig
    from miva.training.train_config import TrainConfig
    from miva.world.adapters import WAN_PARTS, WAN_RECIPE, world_train_config

    config = world_train_config("out", "clips", adapter_name="right", world="wan")
    assert config["pretrained_model_path"] == "miva-world-wan" and "motion_module_path" not in config
    assert (config["num_frames"], config["max_train_steps"], config["learning_rate"], config["train_batch_size"]) == (
        9, WAN_RECIPE["steps"], WAN_RECIPE["learning_rate"], WAN_RECIPE["batch_size"])
    rank = WAN_RECIPE["rank"]
    assert config["adapter"] == {**WAN_PARTS, "motion_lora_rank": rank, "motion_lora_scale": float(rank),
                                 "implicit_rank": rank}
    train = TrainConfig.from_dict(config)
    assert train.is_wan and isinstance(train.adapter, WanAdapterConfig)
    assert (train.adapter.sa_mode, train.adapter.ca_mode, train.adapter.sa_first_frame_scale) == (
        "first_prev", "implicit", "adaptive_0.2")
    with pytest.raises(ValueError, match=r"base='sd' is not a MotionWorld base"):
        world_train_config("out", "clips", adapter_name="x", world="sd")


def test_a_wan_world_adapter_trains_ships_and_loads(wan_world, monkeypatch, tmp_path):
    """`--ship` on the Wan base end to end (2 training steps, 1 validation scene): the adapter lands in
    wan_adapters/<name> with its config, training record, sample and card, and changes what the base makes."""
    import miva.world.evaluate as evaluate
    from miva.world import adapters as world_adapters
    from miva.world import base_fingerprint, load_pipeline, shipped_adapters
    from miva.world.adapters import ShippedAdapter
    from miva.world.evaluate import animate_scene

    monkeypatch.setattr(world_adapters, "SHIPPED_WAN", {
        "right": ShippedAdapter("right", {"steps": 2, "num_clips": 2}, world="wan")})
    monkeypatch.setattr(evaluate, "HELDOUT_SCENES", 1)
    monkeypatch.setattr(evaluate, "WAN_SAMPLING", {**evaluate.WAN_SAMPLING, "num_inference_steps": 2})
    monkeypatch.setitem(evaluate.BASE_SAMPLING, "wan", evaluate.WAN_SAMPLING)
    assert shipped_adapters("wan") == {}
    world_adapters.ship(["right"], log=lambda message: None, base="wan")
    folder = shipped_adapters("wan")["right"]
    assert folder == tmp_path / "wan_adapters" / "right"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "miva_adapter.safetensors",
                                                        "sample.gif", "train_config.yaml", "training.json"]
    record = json.loads((folder / "training.json").read_text())
    assert record["base"] == base_fingerprint(base="wan") and (record["steps"], record["clips"]) == (2, 2)
    assert json.loads((folder / "adapter_config.json").read_text())["backbone"] == WAN.id
    pipe = load_pipeline(base="wan")
    pipe.set_progress_bar_config(disable=True)
    before = animate_scene(pipe, 0, num_inference_steps=2)
    pipe.load_adapters([str(folder)], adapter_names=["right"])
    after = animate_scene(pipe, 0, num_inference_steps=2)
    assert before.shape == after.shape == (9, 64, 64, 3) and not np.array_equal(before, after)
    with pytest.raises(ValueError, match=r"names=\['left'\] are not shipped adapters of the wan base"):
        world_adapters.ship(["left"], base="wan")
    # its card's usage is the registry's snippet for miva-world-wan, and it runs (folder for the placeholder)
    readme = (folder / "README.md").read_text()
    assert 'load_pipeline(base="wan")' in readme and "from_pretrained" not in readme and "base_model:" not in readme
    snippet = readme.split("```python\n")[1].split("```")[0].replace("path/to/right", str(folder))
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    from PIL import Image

    with Image.open(tmp_path / "output.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (64, 64)

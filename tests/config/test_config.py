"""`miva.config`: every key of the seed's config README parses and reaches where it acts; bad keys and values give
one-line errors with the closest valid key or value; overrides; inputs; histogram matching."""

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from miva.attention_processors import add_miva_adapter, get_miva_adapter_modules, install_miva_processors
from miva.commands.video_io import hist_match_frames
from miva.config import DDIM_KWARGS, DDPM_KWARGS, ConfigError, MIVAConfig, load_config
from miva.tiny import tiny_unet_motion

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.yaml"))

# Every key named in the seed's config README (section path included), in README order.
SEED_README_KEYS = [
    "output_dir", "pretrained_model_path", "motion_module_path", "use_ip_adapter", "ip_ckpt", "image_encoder_path",
    "textemb_checkpoint_path", "global_seed", "load_from_adapter_ckpt", "unet_checkpoint_path", "adapter_i2v_path",
    "adapter_lora_path", "ca_lora_path", "word_to_learn", "initializer_token", "split_ckpt", "trainable_modules",
    "unet_additional_kwargs.use_motion_module", "unet_additional_kwargs.motion_module_kwargs.use_motion_embed",
    "unet_additional_kwargs.use_ca_lora", "unet_additional_kwargs.ca_lora_rank", "unet_additional_kwargs.ca_lora_scale",
    "unet_additional_kwargs.use_q_lora", "unet_additional_kwargs.q_downsample",
    "unet_additional_kwargs.q_downsample_ratio", "unet_additional_kwargs.ca_pe_mode", "unet_additional_kwargs.oa_bin_id",
    "unet_additional_kwargs.oa_bases_path", "unet_additional_kwargs.adapter_weights",
    "unet_additional_kwargs.parallel_mode", "validation_data.image_path", "validation_data.prompt_path",
    "validation_data.prompts", "validation_data.batch_prompt", "validation_data.video_length", "validation_data.width",
    "validation_data.height", "validation_data.num_inference_steps", "validation_data.guidance_scale",
    "validation_data.use_adain_norm", "validation_data.shared_noise_ratio", "validation_data.first_frame_cond_type",
    "validation_data.use_dct_init", "validation_data.dct_cutoff_ratio", "validation_data.dct_cutoff_shape",
    "validation_data.cil_ratio", "validation_data.multi_ca", "validation_data.text_emb_dir",
    "validation_data.word_to_replace", "validation_data.CA_Map_visualization_resolution", "noise_scheduler_kwargs",
]  # fmt: skip


def adapter(c, i=0):
    return c.adapter_configs()[i]


def train(c):
    return c.train_config(tiny=True)


def has(obj, expected: dict) -> bool:
    return {k: getattr(obj, k) for k in expected} == expected


# (overrides, check): the config built from `overrides` must satisfy `check`. Every seed key appears in one.
DESTINATIONS = [
    (["output_dir=out/run"], lambda c: train(c).output_dir == "out/run"),
    (["pretrained_model_path=org/sd"], lambda c: train(c).pretrained_model_path == "org/sd"
     and adapter(c).base_model == "org/sd" and c.adapter_configs(tiny=True)[0].base_model is None),
    (["motion_module_path=org/mm"], lambda c: train(c).motion_module_path == "org/mm" and adapter(c).motion_adapter == "org/mm"),
    (["use_ip_adapter=true", "ip_ckpt=h94/IP-Adapter/models/ip-adapter_sd15.bin", "image_encoder_path=enc"],
     lambda c: c.ip_adapter_kwargs() == dict(pretrained_model_name_or_path_or_dict="h94/IP-Adapter", subfolder="models",
                                             weight_name="ip-adapter_sd15.bin", image_encoder_folder=None)),
    (["textemb_checkpoint_path=run/learned_embeds.safetensors"], lambda c: c.learned_embeds_path() == "run/learned_embeds.safetensors"),
    (["global_seed=7"], lambda c: train(c).seed == 7 and train(c).validation.seed == 7),
    (["load_from_adapter_ckpt=true", "adapter_i2v_path=a/i2v.pt", "adapter_lora_path=a/lora.pt", "ca_lora_path=a/ca.pt"],
     lambda c: c.adapter_sources()[0].source == {"adapter_i2v_path": "a/i2v.pt", "adapter_lora_path": "a/lora.pt", "ca_lora_path": "a/ca.pt"}),
    (["unet_checkpoint_path=[m1.safetensors,m2.safetensors]"],
     lambda c: [s.source for s in c.adapter_sources()] == ["m1.safetensors", "m2.safetensors"] and c.names() == ["miva0", "miva1"]),
    (["word_to_learn=clouds_new", "initializer_token=clouds"],
     lambda c: (train(c).word_to_learn, train(c).initializer_token, train(c).adapter.word_to_learn) == ("clouds_new", "clouds", "clouds_new")),
    (["split_ckpt=false"], lambda c: train(c).split_ckpt is False),
    (["trainable_modules=[i2v_adapter.to_q,to_k_lora,motion_embed]", "unet_additional_kwargs.motion_module_kwargs.use_motion_embed=true"],
     lambda c: train(c).trainable_modules == ["i2v", "motion_lora", "motion_embed"] and train(c).adapter.i2v_train_q),
    (["unet_additional_kwargs.use_motion_module=true"], lambda c: c.unet_additional_kwargs.use_motion_module is True),
    (["unet_additional_kwargs.motion_module_kwargs.use_motion_embed=true", "unet_additional_kwargs.motion_module_kwargs.lora_rank=8",
      "unet_additional_kwargs.motion_module_kwargs.lora_scale=4"],
     lambda c: (adapter(c).use_motion_embed, adapter(c).motion_lora_rank, adapter(c).motion_lora_scale) == (True, 8, 4.0)),
    (["unet_additional_kwargs.use_ca_lora=true", "unet_additional_kwargs.ca_lora_rank=[4,8]", "unet_additional_kwargs.ca_lora_scale=[1,2]",
      "unet_additional_kwargs.use_q_lora=true"],
     lambda c: [(a.use_ca_lora, a.ca_lora_rank, a.ca_lora_scale, a.use_q_lora) for a in c.adapter_configs()] == [(True, 4, 1.0, True), (True, 8, 2.0, True)]),
    (["unet_additional_kwargs.q_downsample=true", "unet_additional_kwargs.q_downsample_ratio=2", "unet_additional_kwargs.ca_pe_mode=ropeQK_1d"],
     lambda c: adapter(c).spatiotemporal_key == (True, 2, "nearest", "ropeQK_1d", "standard")),
    (["unet_additional_kwargs.oa_bin_id=3", "unet_additional_kwargs.oa_bases_path=bases.safetensors"],
     lambda c: (adapter(c).oa_bin_id, train(c).oa_bin_id, train(c).oa_bases_path) == (3, 3, "bases.safetensors")),
    (["unet_additional_kwargs.adapter_weights=[0.7,0.3]", "unet_additional_kwargs.parallel_mode=weights"],
     lambda c: c.pipeline_kwargs()["adapter_weights"] == [0.7, 0.3] and c.unet_additional_kwargs.parallel_mode == "weights"),
    (["unet_additional_kwargs.sa_mode=first_prev", "unet_additional_kwargs.sa_first_frame_scale=adaptive_0.2",
      "unet_additional_kwargs.use_simple_CA=true"],
     lambda c: (adapter(c).sa_mode, adapter(c).sa_first_frame_scale, adapter(c).ca_mode) == ("first_prev", "adaptive_0.2", "implicit")),
    (["validation_data.image_path=imgs", "validation_data.prompt_path=[a,b]", "validation_data.prompts=[p a,p b]"],
     lambda c: [(i.name, i.image, i.prompt) for i in c.inputs(must_exist=False)] == [("a", "imgs/a.png", "p a"), ("b", "imgs/b.png", "p b")]),
    (["validation_data.image_path=imgs", "validation_data.prompt_path=[a]", "validation_data.batch_prompt=one for all",
      "validation_data.prompts=[ignored]"], lambda c: c.inputs(must_exist=False)[0].prompt == "one for all"),
    (["validation_data.multi_ca=true", "validation_data.batch_prompt=[water,cloud]", "unet_additional_kwargs.ca_lora_rank=[4,4]"],
     lambda c: c.pipeline_kwargs()["batch_prompt"] == ["water", "cloud"] and [a.prompt for a in c.adapter_configs()] == ["water", "cloud"]),
    (["validation_data.video_length=8", "validation_data.width=96", "validation_data.height=64", "validation_data.num_inference_steps=3",
      "validation_data.guidance_scale=1"],
     lambda c: {k: c.pipeline_kwargs()[k] for k in ("num_frames", "width", "height", "num_inference_steps", "guidance_scale")}
     == dict(num_frames=8, width=96, height=64, num_inference_steps=3, guidance_scale=1.0)
     and (train(c).validation.num_frames, train(c).validation.width) == (8, 96)),
    (["validation_data.use_adain_norm=on", "validation_data.shared_noise_ratio=0.05", "validation_data.first_frame_cond_type=cinemo",
      "validation_data.use_dct_init=true", "validation_data.dct_cutoff_ratio=0.3", "validation_data.dct_cutoff_shape=tri",
      "validation_data.cil_ratio=0.9"],
     lambda c: {k: c.pipeline_kwargs()[k] for k in ("use_adain_norm", "shared_noise_ratio", "first_frame_cond_type", "use_dct_init",
                                                    "dct_cutoff_ratio", "dct_cutoff_shape", "cil_ratio")}
     == dict(use_adain_norm="on", shared_noise_ratio=0.05, first_frame_cond_type="cinemo", use_dct_init=True,
             dct_cutoff_ratio=0.3, dct_cutoff_shape="tri", cil_ratio=0.9)
     and train(c).validation.pipeline_kwargs["use_dct_init"] is True),
    (["validation_data.text_emb_dir=embs"], lambda c: c.pipeline_kwargs()["text_emb_dir"] == "embs"),
    (["validation_data.word_to_replace=clouds_new"], lambda c: c.pipeline_kwargs()["word_to_replace"] == "clouds_new"),
    (["validation_data.CA_Map_visualization_resolution=[low,high]"], lambda c: c.pipeline_kwargs()["ca_map_resolutions"] == ["low", "high"]),
    (["noise_scheduler_kwargs.beta_schedule=linear", "noise_scheduler_kwargs.set_alpha_to_one=false", "noise_scheduler_kwargs.steps_offset=1"],
     lambda c: (c.scheduler().config.beta_schedule, c.scheduler().config.set_alpha_to_one, c.scheduler().config.steps_offset) == ("linear", False, 1)
     and train(c).noise_scheduler_kwargs == {"beta_schedule": "linear", "steps_offset": 1}),
    (["train_data.video_root=clips", "train_data.prompt=waves", "train_data.n_sample_frames=8", "train_data.width=64",
      "train_data.height=48", "train_data.sample_frame_rate=[1,3]", "learning_rate=1e-4", "max_train_steps=9",
      "use_8bit_adam=false", "mixed_precision=bf16", "gradient_checkpointing=false", "checkpointing_steps=3", "validation_steps=4",
      "pretrained_model_path=org/sd", "motion_module_path=org/mm"],
     lambda c: has(c.train_config(), dict(
         video_root="clips", prompt="waves", num_frames=8, width=64, height=48, sample_frame_rate=[1, 3], learning_rate=1e-4,
         max_train_steps=9, use_8bit_adam=False, mixed_precision="bf16", gradient_checkpointing=False, checkpointing_steps=3,
         validation_steps=4))),
]  # fmt: skip


def test_every_seed_readme_key_has_a_destination_case_and_a_docs_row():
    covered = {item.split("=", 1)[0] for overrides, _ in DESTINATIONS for item in overrides}
    docs = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for key in SEED_README_KEYS:
        assert key in covered or any(c.startswith(key + ".") for c in covered), key
        last = re.escape(key.rsplit(".", 1)[-1])
        assert re.search(rf"`([\w.]+\.)?{last}`", docs), f"docs/config.md has no row for {key}"


@pytest.mark.parametrize("overrides, check", DESTINATIONS, ids=[";".join(o)[:60] for o, _ in DESTINATIONS])
def test_key_reaches_its_destination(overrides, check):
    config = load_config({}, overrides)
    assert check(config)
    assert load_config(config.to_dict()) == config  # round trip through plain data


def test_pipeline_kwargs_are_mivapipeline_arguments():
    from miva.pipelines.pipeline_miva import MIVAPipeline

    parameters = inspect.signature(MIVAPipeline.__call__).parameters
    config = load_config({}, ["validation_data.multi_ca=true", "validation_data.batch_prompt=[a]"])
    assert set(config.pipeline_kwargs()) <= set(parameters)


def test_scheduler_key_lists_match_diffusers():
    from diffusers import DDIMScheduler, DDPMScheduler

    assert tuple(inspect.signature(DDIMScheduler.__init__).parameters)[1:] == DDIM_KWARGS
    assert set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"} == set(DDPM_KWARGS)


def test_adapter_config_fields_reach_the_processors():
    """Config -> MIVAAdapterConfig -> the modules each processor creates (ranks, Q-LoRA, motion embedding, ...)."""
    config = load_config({"unet_additional_kwargs": {
        "use_ca_lora": True, "ca_lora_rank": [4, 8], "ca_lora_scale": [1, 2], "use_q_lora": True,
        "motion_module_kwargs": {"use_motion_embed": True, "lora_rank": 2},
        "sa_mode": "first_prev", "sa_first_frame_scale": "adaptive_0.2", "q_downsample": True, "q_downsample_ratio": 2,
        "ca_pe_mode": "rope_3d"}, "trainable_modules": ["i2v_adapter.to_q"]})  # fmt: skip
    unet = tiny_unet_motion(seed=0)
    install_miva_processors(unet)
    for spec in config.adapter_sources():
        add_miva_adapter(unet, spec.name, spec.config)
    for name, rank, scale in (("miva0", 4, 1 / 4), ("miva1", 8, 2 / 8)):
        modules = get_miva_adapter_modules(unet, name)
        ca = [m for layer, m in modules.items() if layer.endswith("attn2.processor") and "motion" not in layer]
        motion = [m for layer, m in modules.items() if "motion_modules" in layer]
        frames = [m for layer, m in modules.items() if layer.endswith("attn1.processor") and "motion" not in layer]
        assert ca and motion and frames
        assert all(
            m.to_q_lora.rank == rank
            and m.to_k_lora.scale == scale
            and m.stq == (True, 2, "nearest", "rope_3d", "standard")
            for m in ca
        )
        assert all(m.to_q_lora.rank == 2 and m.motion_embed is not None for m in motion)
        assert all(m.sa_mode == "first_prev" and m.weight_module is not None and m.to_q is not None for m in frames)


def test_every_example_config_parses_and_maps():
    assert {p.name for p in EXAMPLES} >= {
        "infer_single.yaml",
        "infer_two_adapters.yaml",
        "train.yaml",
        "train_textual_inversion.yaml",
        "train_orthogonal.yaml",
    }
    configs = {p.stem: load_config(p) for p in EXAMPLES}
    single, two = configs["infer_single"], configs["infer_two_adapters"]
    assert single.pipeline_kwargs()["ca_map_resolutions"] == "all" and single.names() == ["waterfall"]
    assert two.num_adapters == 2 and two.adapter_weights() == [0.5, 0.5]
    assert [s.name for s in two.adapter_sources()] == ["waterfall", "clouds"]
    assert all(
        set(s.source) == {"adapter_i2v_path", "adapter_lora_path", "ca_lora_path"} for s in two.adapter_sources()
    )
    assert two.pipeline_kwargs()["batch_prompt"] == ["a waterfall, water flowing", "clouds moving in the sky"]
    for name in ("train", "train_textual_inversion", "train_orthogonal"):
        trained = configs[name].train_config(tiny=True)
        assert trained.tiny and trained.video_root is None  # placeholder clips under --tiny -> synthetic clips
    assert configs["train"].train_config(tiny=True).parts == ["i2v", "motion_lora", "ca_lora"]
    assert configs["train_textual_inversion"].train_config(tiny=True).word_to_learn == "clouds_new"
    assert configs["train_orthogonal"].train_config(tiny=True).oa_bin_id == 1
    with pytest.raises(ConfigError, match="^unet_additional_kwargs: the config describes 2 adapters"):
        two.train_config(tiny=True)


@pytest.mark.parametrize("data, message", [
    ({"unet_additional_kwargs": {"q_downsample_ration": 2}},
     "unet_additional_kwargs.q_downsample_ration: unknown key; did you mean 'q_downsample_ratio'?"),
    ({"unet_additional_kwargs": {"ca_pe_mode": "rope3d"}},
     "unet_additional_kwargs.ca_pe_mode: 'rope3d' is not one of ['null', 'naive', 'temporal', 'temporal_sine', "
     "'rope_1d', 'rope_3d', 'ropeQ_3d', 'ropeQK_1d', 'ropeQKV_1d']; did you mean 'rope_3d'?"),
    ({"validation_data": {"use_adain_norm": "lastt"}},
     "validation_data.use_adain_norm: 'lastt' is not one of ['off', 'on', 'last']; did you mean 'last'?"),
    ({"seed": 1}, "seed: unknown key; did you mean 'global_seed'?"),
    ({"noise_scheduler_kwargs": {"beta_shedule": "linear"}},
     "noise_scheduler_kwargs.beta_shedule: unknown key; did you mean 'beta_schedule'?"),
    ({"validation_data": {"width": 100}}, "validation_data.width: 100 must be a multiple of 8"),
    ({"unet_additional_kwargs": {"ca_lora_rank": [4, 4]}, "unet_checkpoint_path": ["a", "b", "c"]},
     "unet_additional_kwargs.ca_lora_rank: has 2 entries but unet_checkpoint_path has 3"),
    ({"adapter_lora_path": "x.pt"}, "adapter_lora_path: set, but load_from_adapter_ckpt is false"),
    ({"validation_data": {"multi_ca": True, "batch_prompt": "one"}}, "validation_data.batch_prompt: multi_ca is true"),
    ({"validation_data": {"batch_prompt": ["a", "b"]}}, "validation_data.batch_prompt: a list (one prompt per adapter)"),
    ({"validation_data": {"use_dct_init": True}}, "validation_data.use_dct_init: true needs first_frame_cond_type: cinemo"),
    ({"word_to_learn": "x"}, "initializer_token: required together with word_to_learn"),
    ({"use_ip_adapter": True}, "ip_ckpt: required when use_ip_adapter is true"),
    ({"trainable_modules": ["attn1.to_q"]}, None),
    ({"unet_additional_kwargs": {"sa_first_frame_scale": "adaptive_x"}}, "unet_additional_kwargs.sa_first_frame_scale:"),
])  # fmt: skip
def test_bad_keys_and_values_give_one_line_errors(data, message):
    if message is None:  # valid to load, rejected where it acts
        with pytest.raises(ConfigError, match=r"^trainable_modules\[0\]: 'attn1.to_q' is not a trainable part"):
            load_config(data).train_config(tiny=True)
        return
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_research_structural_keys_keep_their_values(tmp_path):
    research = {"unet_additional_kwargs": {
        "use_inflated_groupnorm": True, "use_motion_module": True, "motion_module_resolutions": [1, 2, 4, 8],
        "motion_module_mid_block": False, "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
        "motion_module_kwargs": {"num_attention_heads": 8, "num_transformer_block": 1,
                                 "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                                 "temporal_position_encoding": True, "temporal_position_encoding_max_len": 32,
                                 "temporal_attention_dim_div": 1, "zero_initialize": True},
        "unet_use_cross_frame_attention": False, "unet_use_temporal_attention": True, "remove_WO": False,
        "use_i2v_q_lora": False, "use_i2v_out_lora": False, "i2v_lora_rank": 32, "i2v_lora_scale": 1}}  # fmt: skip
    config = load_config(research)
    assert config.unet_additional_kwargs.unet_use_temporal_attention is True
    for path, value, reason in [
        ("unet_additional_kwargs.motion_module_resolutions", "[1,2,4]", "UNetMotionModel from the motion adapter"),
        ("unet_additional_kwargs.unet_use_cross_frame_attention", "true", "cross-frame attention is the MIVA"),
        ("unet_additional_kwargs.use_motion_module", "false", "it always has motion modules"),
        ("unet_additional_kwargs.use_inflated_groupnorm", "false", "normalises every frame on its own"),
        ("unet_additional_kwargs.remove_WO", "true", "always has its out delta"),
        ("unet_additional_kwargs.motion_module_kwargs.num_attention_heads", "4", "motion adapter checkpoint"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{path}: .* is not supported \(accepted: .*\): .*{reason}"):
            load_config(research, [f"{path}={value}"])


def test_overrides_from_a_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "validation_data:\n  video_length: 16\n  use_adain_norm: off\nunet_additional_kwargs:\n  ca_pe_mode: null\n",
        encoding="utf-8",
    )
    config = load_config(
        path,
        [
            "validation_data.video_length=8",
            "unet_additional_kwargs.adapter_weights=[0.5]",
            "validation_data.prompts=a, b",
        ],
    )
    assert config.validation_data.video_length == 8 and config.adapter_weights() == [0.5]
    assert config.validation_data.use_adain_norm == "off"  # YAML reads `off` as false; mapped back
    assert config.validation_data.prompts == "a, b" and config.unet_additional_kwargs.ca_pe_mode is None
    with pytest.raises(ConfigError, match="^--set 'video_length': an override looks like key.path=value"):
        load_config(path, ["video_length"])
    with pytest.raises(ConfigError, match="^validation_data.video_lenght: unknown key; did you mean 'video_length'"):
        load_config(path, ["validation_data.video_lenght=4"])
    (tmp_path / "broken.yaml").write_text("validation_data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML: ") as info:
        load_config(tmp_path / "broken.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert isinstance(load_config(path), MIVAConfig)


def test_inputs_all_newlamp_sidecar_and_errors(tmp_path):
    for name in ("b.png", "a.jpg", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.txt").write_text("from the sidecar\n", encoding="utf-8")
    items = load_config({"validation_data": {"image_path": str(tmp_path), "prompt_path": "all"}}).inputs()
    assert [(i.name, Path(i.image).name, i.prompt) for i in items] == [
        ("a", "a.jpg", "from the sidecar"),
        ("b", "b.png", ""),
    ]
    lamp = load_config({"validation_data": {"image_path": "lamp", "prompts": "newlamp"}}).inputs(must_exist=False)
    assert [i.image for i in lamp] == [f"lamp/{k}.png" for k in range(1, 21)]
    bad = [({"image_path": str(tmp_path), "prompt_path": ["a", "zz"]}, "validation_data.prompt_path: image "),
           ({"image_path": str(tmp_path), "prompt_path": "all", "prompts": ["x"]}, "validation_data.prompts: 1 prompts for 2"),
           ({"image_path": str(tmp_path)}, "validation_data.prompt_path: required because image_path"),
           ({"prompt_path": ["a"]}, "validation_data.image_path: required")]  # fmt: skip
    for data, message in bad:
        with pytest.raises(ConfigError, match="^" + message):
            load_config({"validation_data": data}).inputs()


def test_learned_embeds_found_beside_a_research_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "model.safetensors").write_bytes(b"x")
    (run / "learned_embeds.safetensors").write_bytes(b"x")
    config = load_config({"unet_checkpoint_path": str(run / "checkpoints" / "model.safetensors")})
    assert config.learned_embeds_path() == str(run / "learned_embeds.safetensors")


def test_hist_match_frames():
    rng = np.random.default_rng(0)
    first = rng.random((6, 5, 3))
    frames = np.stack([first, 0.5 * first + 0.2, first**2])  # strictly increasing maps keep every pixel's rank
    matched = hist_match_frames(frames)
    assert matched.shape == frames.shape and np.array_equal(matched[0], first)
    np.testing.assert_allclose(matched[1], first, atol=1e-12)
    np.testing.assert_allclose(matched[2], first, atol=1e-12)
    as_uint8 = (np.stack([first, first * 0.5]) * 255).astype(np.uint8)
    out = hist_match_frames(as_uint8)
    assert out.dtype == np.uint8
    assert np.abs(np.sort(out[1].ravel()).astype(int) - np.sort(as_uint8[0].ravel()).astype(int)).max() <= 1
    with pytest.raises(ValueError, match="expected \\(frames, H, W, channels\\)"):
        hist_match_frames(first)


def test_config_import_stays_light():
    import subprocess
    import sys

    code = "import sys, miva.config; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_keys_feed_their_targets_by_declaration():
    """`feeds` declarations name real fields; the seed layout's training keys are the trainer's own declarations."""
    import dataclasses

    from miva import MIVAAdapterConfig
    from miva.config import TrainConfig, TrainingKeys
    from miva.config.fields import fed_values

    config = MIVAConfig()
    for target, cls in (("MIVAAdapterConfig", MIVAAdapterConfig), ("TrainConfig", TrainConfig)):
        fed = fed_values(config, target)
        assert fed and set(fed) <= {f.name for f in dataclasses.fields(cls)}, target
    trainer = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(TrainingKeys):
        if f.metadata["feeds"]:
            assert f.metadata["feeds"] == (f"TrainConfig.{f.name}",)
            assert f.default == trainer[f.name].default, f.name  # one default, declared once
            if f.name not in ("resume_from_checkpoint", "trainable_modules"):  # research forms: "" unset, module names
                assert f.metadata["check"] is trainer[f.name].metadata["check"], f.name


def test_one_key_map_imports_the_research_layout_into_the_trainer():
    """Issue 28 item 7: each `TrainConfig` field is set by exactly one research key: the key map's entry (a renamed
    or moved key) or the top-level key of its own name; the fields no research key sets are `TRAINER_ONLY`. A research
    key keeps the field's default unless the research layout has its own (written out here)."""
    import dataclasses

    from miva.config import RESEARCH_KEY_MAP, TrainConfig
    from miva.config.training import TRAINER_ONLY, import_map

    imported = import_map(MIVAConfig)
    # The official MIVA-Wan `dit_kwargs.*` entries set fields of `TrainConfig.adapter` (tests/backbones/wan/test_wan_train_command.py).
    fields = {path: name for path, name in RESEARCH_KEY_MAP.items() if not name.startswith("adapter.")}
    assert all(path.startswith("dit_kwargs.") for path in set(RESEARCH_KEY_MAP) - set(fields))
    assert {path: name for path, name in imported.items() if path != name} == fields
    assert all("." in path or path not in {f.name for f in dataclasses.fields(TrainConfig)} for path in RESEARCH_KEY_MAP)
    assert len(set(imported.values())) == len(imported)  # no field set by two keys
    trainer = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(imported.values()) | set(TRAINER_ONLY) == set(trainer)
    assert not set(imported.values()) & set(TRAINER_ONLY)
    research_defaults = {"output_dir": "outputs"}  # the research default, not the trainer's "outputs/miva-adapter"
    config = MIVAConfig()
    for path, name in imported.items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        field = trainer[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        assert value == research_defaults.get(path, default), path
    # Every entry of the map carries its value to its field (values differ from every default).
    tc = load_config({"global_seed": 7, "train_data": {"prompt": "waves", "n_sample_frames": 8, "width": 64,
                      "height": 128, "sample_frame_rate": [1, 3], "random_flip": False}}).train_config(tiny=True)
    assert (tc.seed, tc.prompt, tc.num_frames, tc.width, tc.height, tc.sample_frame_rate, tc.random_flip) == (
        7, "waves", 8, 64, 128, [1, 3], False)


def test_one_suggestion_helper_and_one_override_parser():
    from miva.config import apply_overrides, suggest
    from miva.guards import did_you_mean

    assert suggest is did_you_mean and did_you_mean("ROPE_3D", ["rope_3d", "rope_1d"]) == "; did you mean 'rope_3d'?"
    assert did_you_mean("zzz", ["rope_3d"]) == ""
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=null", "e=a, b"]) == {
        "a": {"b": 1, "c": [1, 2]}, "d": None, "e": "a, b"}
    with pytest.raises(ConfigError, match=r"^--set 'x': an override looks like key.path=value"):
        apply_overrides({}, ["x"])


def test_a_new_trainer_field_becomes_a_research_key_without_another_list(monkeypatch):
    """`training_keys` builds the shared training keys from `TrainConfig`'s declarations: a field added there is a
    top-level research key with its default, check and destination, with nothing else to edit."""
    import dataclasses

    from miva.config import training
    from miva.config.fields import integer, key, parse_section
    from miva.config.schema import ResearchKeys

    @dataclasses.dataclass
    class Extra:
        warmup_epochs: int = key(3, integer(0), "a field TrainConfig might gain")

    monkeypatch.setitem(training._TRAINER_FIELDS, "warmup_epochs", dataclasses.fields(Extra)[0])
    keys = training.training_keys(ResearchKeys)
    declared = {f.name: f for f in dataclasses.fields(keys)}["warmup_epochs"]
    assert declared.default == 3 and declared.metadata["feeds"] == ("TrainConfig.warmup_epochs",)
    assert parse_section(keys, {"warmup_epochs": 5}).warmup_epochs == 5
    with pytest.raises(ConfigError, match=r"^warmup_epochs: -1 must be an integer >= 0$"):
        parse_section(keys, {"warmup_epochs": -1})


def test_train_layout_is_decided_by_the_key_map():
    from miva.config import TrainConfig, train_layout

    assert train_layout(TrainConfig(tiny=True).to_dict()) == "trainer"
    assert train_layout({"adapter": {"use_ca_lora": True}, "max_train_steps": 2}) == "trainer"
    assert train_layout({"num_frames": 8}) == "trainer"  # the key map's destination of train_data.n_sample_frames
    assert train_layout({"train_data": {"prompt": "p"}, "max_train_steps": 2}) == "seed"
    assert train_layout({"max_train_steps": 2}) == "seed"  # keys both have: the seed layout (it names unknown keys)
    assert train_layout({"adapter": {}, "global_seed": 1}) == "seed"  # mixed: the seed loader names `adapter`
    for name in ("train", "train_orthogonal", "train_textual_inversion"):
        assert train_layout(load_config(ROOT / "examples" / "configs" / f"{name}.yaml").to_dict()) == "seed"

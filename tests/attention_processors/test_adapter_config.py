"""Tests for `MIVAAdapterConfig`: seed defaults, JSON round trip, validation messages."""

import dataclasses
import json

import pytest

from miva import __version__
from miva.attention_processors import MIVAAdapterConfig
from miva.attention_processors.adapter_config import CA_PE_MODES, parse_first_frame_scale


def test_defaults_follow_the_seed():
    config = MIVAAdapterConfig()
    assert (config.motion_lora_rank, config.motion_lora_scale) == (32, 1.0)
    assert (config.ca_lora_rank, config.ca_lora_scale) == (32, 1.0)
    assert (config.q_downsample, config.q_downsample_ratio, config.q_downsample_mode) == (False, 4, "nearest")
    assert (config.ca_pe_mode, config.pe_style) == (None, "standard")
    assert (config.sa_mode, config.sa_first_frame_scale) == ("first", 0.5)
    assert (config.ca_mode, config.implicit_rank) == ("lora", 64)
    assert config.use_ca_lora is False and config.use_q_lora is False and config.use_motion_embed is False
    assert config.oa_bin_id is None
    assert len(CA_PE_MODES) == 8  # + None = the nine ca_pe_modes


def test_every_field_has_help():
    for f in dataclasses.fields(MIVAAdapterConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"


def test_json_round_trip(tmp_path):
    config = MIVAAdapterConfig(
        use_i2v=True,
        i2v_train_q=True,
        sa_mode="first_prev",
        sa_first_frame_scale="adaptive_0.2",
        motion_lora_rank=8,
        motion_lora_scale=4.0,
        use_motion_embed=True,
        use_ca_lora=True,
        ca_lora_rank=16,
        ca_lora_scale=None,
        use_q_lora=True,
        q_downsample=True,
        q_downsample_ratio=2,
        q_downsample_mode="avg",
        ca_pe_mode="rope_3d",
        pe_style="research",
        oa_bin_id=3,
        word_to_learn="<wave>",
        prompt="a waterfall",
        base_model="runwayml/stable-diffusion-v1-5",
        motion_adapter="guoyww/animatediff-motion-adapter-v1-5-3",
    )
    path = config.save_pretrained(tmp_path / "adapter")
    assert path == str(tmp_path / "adapter" / "adapter_config.json")
    on_disk = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert on_disk["miva_version"] == __version__
    assert on_disk["sa_first_frame_scale"] == "adaptive_0.2" and on_disk["ca_lora_scale"] is None
    loaded = MIVAAdapterConfig.from_json_file(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert MIVAAdapterConfig.from_dict(on_disk) == config  # the version stamp is accepted on the way back


def test_float_scale_and_null_pe_round_trip(tmp_path):
    config = MIVAAdapterConfig(sa_first_frame_scale=0.25, ca_pe_mode="null")
    assert config.ca_pe_mode is None  # 'null' is the seed's spelling of "no PE"
    loaded = MIVAAdapterConfig.from_json_file(config.save_pretrained(tmp_path))
    assert loaded.sa_first_frame_scale == 0.25 and loaded.ca_pe_mode is None


@pytest.mark.parametrize(
    "field, value, suggestion",
    [
        ("sa_mode", "frist", "first"),
        ("sa_mode", "first_prv", "first_prev"),
        ("ca_pe_mode", "rope3d", "rope_3d"),
        ("ca_pe_mode", "temporal_sin", "temporal_sine"),
        ("ca_mode", "implict", "implicit"),
        ("q_downsample_mode", "avgs", "avg"),
        ("pe_style", "reserch", "research"),
    ],
)
def test_bad_choice_names_field_value_and_closest(field, value, suggestion):
    with pytest.raises(ValueError) as err:
        MIVAAdapterConfig(**{field: value})
    message = str(err.value)
    assert f"{field}={value!r}" in message
    assert f"did you mean {suggestion!r}?" in message


@pytest.mark.parametrize(
    "field, value",
    [
        ("motion_lora_rank", 0),
        ("ca_lora_rank", -4),
        ("implicit_rank", 2.5),
        ("q_downsample_ratio", 0),
        ("q_downsample_ratio", True),
        ("motion_lora_scale", 0.0),
        ("ca_lora_scale", -1.0),
    ],
)
def test_non_positive_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r} must be a positive"):
        MIVAAdapterConfig(**{field: value})


@pytest.mark.parametrize("field", ["use_i2v", "i2v_train_q", "use_ca_lora", "q_downsample", "use_motion_embed"])
def test_flags_must_be_bool(field):
    with pytest.raises(ValueError, match=rf"^{field}='yes' must be true or false"):
        MIVAAdapterConfig(**{field: "yes"})


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_oa_bin_id_must_be_a_non_negative_int(value):
    with pytest.raises(ValueError, match=rf"oa_bin_id={value!r}"):
        MIVAAdapterConfig(oa_bin_id=value)


def test_first_frame_scale_parsing():
    assert parse_first_frame_scale(0.5) == ("float", 0.5)
    assert parse_first_frame_scale(1) == ("float", 1.0)
    assert parse_first_frame_scale("linear") == ("linear", 0.0)
    assert parse_first_frame_scale("adaptive_0.2") == ("adaptive", 0.2)
    assert parse_first_frame_scale("adaptive_T") == ("adaptive", 1.0)
    assert parse_first_frame_scale("adaptive") == ("adaptive", 1.0)
    for bad in (1.5, -0.1, "adaptive_-1", "adaptive_x", "linearr", True):
        with pytest.raises(ValueError, match=rf"sa_first_frame_scale={bad!r}"):
            MIVAAdapterConfig(sa_first_frame_scale=bad)


def test_unknown_field_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown MIVAAdapterConfig field 'sa_mdoe'; did you mean 'sa_mode'\?"):
        MIVAAdapterConfig.from_dict({"sa_mdoe": "first"})
    with pytest.raises(ValueError, match=r"'q_downsample_ration'; did you mean 'q_downsample_ratio'\?"):
        MIVAAdapterConfig.from_dict({"use_i2v": True, "q_downsample_ration": 2})
    with pytest.raises(ValueError, match=r"^unknown MIVAAdapterConfig field 'zzz'$"):
        MIVAAdapterConfig.from_dict({"zzz": 1})


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match=r"ca_pe_mode='rope3d'.*did you mean 'rope_3d'"):
        MIVAAdapterConfig.from_dict({"ca_pe_mode": "rope3d"})


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON"):
        MIVAAdapterConfig.from_json_file(path)


def test_derived_facts():
    assert not MIVAAdapterConfig().has_cross_attention_part
    assert MIVAAdapterConfig(use_ca_lora=True).has_cross_attention_part
    assert MIVAAdapterConfig(ca_mode="implicit").has_cross_attention_part
    assert MIVAAdapterConfig(q_downsample=True).has_cross_attention_part
    assert MIVAAdapterConfig(use_ca_lora=True).spatiotemporal_key == (False,)
    # Without q_downsample the PE settings do not matter (PE applies only inside spatiotemporal Q).
    assert MIVAAdapterConfig(ca_pe_mode="rope_3d").spatiotemporal_key == (False,)
    key = MIVAAdapterConfig(q_downsample=True, q_downsample_ratio=2, ca_pe_mode="naive").spatiotemporal_key
    assert key == (True, 2, "nearest", "naive", "standard")


# ------------------------------------------------------------------------------------- the parts declaration
FULL = dict(use_i2v=True, i2v_train_q=True, sa_mode="first_prev", sa_first_frame_scale="adaptive_0.5",
            use_motion_lora=True, use_motion_embed=True, use_ca_lora=True, use_q_lora=True, q_downsample=True)


def test_parts_declaration_is_the_one_answer():
    from miva.attention_processors import parts
    from miva.loaders.model_card import component_tags

    assert parts.TRAINABLE_PARTS == ("i2v", "adaptive_weight", "motion_lora", "motion_embed", "ca_lora", "implicit",
                                     "mask_branch")
    full = MIVAAdapterConfig(**FULL)
    assert parts.adapter_parts(full) == ["i2v", "adaptive_weight", "motion_lora", "motion_embed", "ca_lora"]
    assert parts.adapter_parts(MIVAAdapterConfig(**{**FULL, "ca_mode": "implicit", "sa_mode": "first"})) == [
        "i2v", "motion_lora", "motion_embed", "implicit"]
    assert component_tags(full) == ["cross-frame-first_prev", "motion-lora", "motion-embedding", "ca-lora",
                                    "spatiotemporal-query"]
    none = MIVAAdapterConfig(use_i2v=False, use_motion_lora=False)
    assert parts.adapter_parts(none) == [] and component_tags(none) == []
    assert not any(parts.has_part_at(none, kind) for kind in (parts.SELF, parts.CROSS, parts.TEMPORAL))
    assert MIVAAdapterConfig(use_i2v=False, use_motion_lora=False, q_downsample=True).has_cross_attention_part
    assert set(parts.FUSE_TARGETS) == {"to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora", "to_out_bias"}
    for part in parts.ADAPTER_PARTS:
        assert isinstance(getattr(MIVAAdapterConfig(), part.flag), (bool, str, float))  # a real config field


def test_every_adapter_parameter_belongs_to_a_declared_part(unet_motion):
    """Each parameter of every adapter module maps to exactly the declared part; each enabled part has parameters."""
    from miva.attention_processors import add_miva_adapter, get_miva_adapter_modules, parts

    for extra in ({}, {"ca_mode": "implicit"}, {"ca_out_lora_bias": True}):
        name = f"full{len(extra)}{'i' if 'ca_mode' in extra else ''}"
        config = MIVAAdapterConfig(**{**FULL, **extra})
        add_miva_adapter(unet_motion, name, config)
        found = set()
        for module in get_miva_adapter_modules(unet_motion, name).values():
            for parameter, _ in module.named_parameters():
                found.add(parts.part_of(module.part_kind, parameter))
        assert found == set(parts.adapter_parts(config))

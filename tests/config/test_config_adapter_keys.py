"""Item 5 of issue 11: adapter keys set in the YAML must agree with a loaded native adapter's own config; a
disagreement is one error line naming each key and both values (never silently the adapter's values)."""

import pytest

from miva.attention_processors import MIVAAdapterConfig
from miva.commands.common import load_config_adapters
from miva.config import ConfigError, load_config
from miva.pipelines import MIVAPipeline
from miva.tiny import tiny_components

OWN = dict(use_ca_lora=True, ca_lora_rank=4, q_downsample=True, q_downsample_ratio=2, ca_pe_mode="rope_3d")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("flow", MIVAAdapterConfig(**OWN))
    return pipe.save_adapter("flow", tmp_path_factory.mktemp("native") / "flow")


def _config(folder, **unet_keys):
    return load_config({"unet_checkpoint_path": str(folder), "adapter_names": ["flow"],
                        "unet_additional_kwargs": unet_keys})


@pytest.fixture(scope="module")
def pipe():
    return MIVAPipeline(**tiny_components(seed=0))


def test_disagreeing_yaml_keys_are_one_error_naming_both_values(native, pipe):
    config = _config(native, use_ca_lora=True, q_downsample=True, q_downsample_ratio=4, ca_pe_mode="rope_1d")
    with pytest.raises(ConfigError) as error:
        load_config_adapters(pipe, config)
    message = str(error.value)
    assert "\n" not in message
    assert "unet_additional_kwargs.q_downsample_ratio: YAML 4, adapter 2" in message
    assert "unet_additional_kwargs.ca_pe_mode: YAML 'rope_1d', adapter 'rope_3d'" in message
    assert "use_ca_lora" not in message and "q_downsample:" not in message  # these agree
    assert "flow" not in pipe.get_list_adapters().get("miva", [])  # nothing half-loaded


@pytest.mark.parametrize("keys", [{}, dict(q_downsample_ratio=2, ca_pe_mode="rope_3d", ca_lora_rank=4)])
def test_agreeing_or_absent_keys_load_the_adapter(native, pipe, keys):
    load_config_adapters(pipe, _config(native, **keys))
    assert pipe.unet.miva_context.configs["flow"].q_downsample_ratio == 2
    pipe.delete_adapters(["flow"])

"""Items 6 and 11 of issue 11: adapter configs and model cards record the base model and motion adapter really
used (`miva.tiny` under `--tiny`), and the card has a license, the motion adapter, a usage snippet with
`load_image`, dtype and device, and metadata that `ModelCardData` accepts."""

import pytest
from huggingface_hub import ModelCard, ModelCardData

from miva.attention_processors import MIVAAdapterConfig
from miva.config import load_config
from miva.loaders.adapter_io import write_adapter_folder
from miva.training.train_config import TrainConfig

SD, MOTION = "stable-diffusion-v1-5/stable-diffusion-v1-5", "guoyww/animatediff-motion-adapter-v1-5-3"


def _train_config(tiny, tmp_path):
    return TrainConfig.from_dict(dict(output_dir=str(tmp_path), tiny=tiny, pretrained_model_path=SD,
                                      motion_module_path=MOTION, video_root=str(tmp_path), prompt="clouds"))


@pytest.mark.parametrize("tiny, expected", [(True, ("miva.tiny", "miva.tiny")), (False, (SD, MOTION))])
def test_train_config_records_the_models_really_used(tiny, expected, tmp_path):
    adapter = _train_config(tiny, tmp_path).adapter
    assert (adapter.base_model, adapter.motion_adapter) == expected


def test_research_layout_tiny_run_records_miva_tiny(tmp_path):
    config = load_config({"output_dir": str(tmp_path), "pretrained_model_path": SD, "motion_module_path": MOTION,
                          "train_data": {"video_root": str(tmp_path), "prompt": "clouds"}})
    adapter = config.train_config(tiny=True).adapter
    assert (adapter.base_model, adapter.motion_adapter) == ("miva.tiny", "miva.tiny")


@pytest.mark.parametrize("tiny", [True, False])
def test_model_card_fields(tiny, tmp_path):
    base = "miva.tiny" if tiny else SD
    motion = "miva.tiny" if tiny else "/models/v3_sd15_mm.ckpt"
    config = MIVAAdapterConfig(use_ca_lora=True, base_model=base, motion_adapter=motion, prompt="clouds")
    folder = write_adapter_folder(tmp_path / "a", config, {}, adapter_name="clouds")
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    ModelCardData(**data)  # the metadata validates
    # The tiny base is miva's own random weights (miva's license); an SD1.5 adapter is a derivative of SD1.5.
    assert data["license"] == ("apache-2.0" if tiny else "creativeml-openrail-m")
    assert data["motion_adapter"] == motion
    assert data.get("base_model") == (None if tiny else SD)  # only a Hub id goes into base_model
    assert "stable-diffusion" not in card.text if tiny else f"- base model: `{SD}`" in card.text
    assert ("the offline miva.tiny test model (random weights" in card.text) == tiny
    if not tiny:
        assert f"- motion adapter: `{motion}`" in card.text
    # The usage code fits the base: the offline tiny model on the CPU, or SD1.5 + AnimateDiff in fp16 on CUDA.
    pieces = ('load_base("tiny")',) if tiny else ("load_image(", "dtype=torch.float16", '.to("cuda")', "export_to_gif(")
    for piece in pieces:
        assert piece in card.text
    if tiny:
        assert '.to("cuda")' not in card.text

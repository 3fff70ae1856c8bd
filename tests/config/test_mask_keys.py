"""The mask branch's research keys (docs/mask_branch.md): where each goes, and one-line errors for bad values."""

import pytest

from miva.config import ConfigError, load_config
from miva.config.trainer import TrainConfig

MASK = ["unet_additional_kwargs.use_mask_branch=true"]


def test_keys_reach_their_destinations():
    config = load_config({}, [*MASK, "train_data.mask_root=masks", "num_iterations_per_data=3",
                              "ground_truth_mask_probability=cosine", "validation_data.mask_path=m.png",
                              "validation_data.mask_inference_stride=2", "validation_data.mask_inference_cutoff=0.5",
                              "validation_data.mask_attention_mode=SA", "validation_data.use_image_guidance=false"])
    assert config.adapter_configs(tiny=True)[0].use_mask_branch is True
    train = config.train_config(tiny=True)
    assert (train.mask_root, train.num_iterations_per_data, train.ground_truth_mask_probability) == ("masks", 3, "cosine")
    assert train.adapter.use_mask_branch is True
    assert config.pipeline_kwargs()["mask_branch"] == dict(
        masks={"miva": "m.png"}, mask_inference_stride=2, mask_inference_cutoff=0.5, mask_attention_mode="SA",
        use_image_guidance=False)
    assert "mask_branch" not in load_config({}).pipeline_kwargs()


@pytest.mark.parametrize(("overrides", "message"), [
    (["validation_data.mask_attention_mode=TA"],
     "validation_data.mask_attention_mode: 'TA' is not supported: the MotionLoRA is a delta inside temporal "
     "attention's projections, so restricting it to a region would need the frozen temporal attention computed a "
     "second time at every motion module; use 'SA', 'CA' or 'original'"),
    (["validation_data.mask_attention_mode=sa"],
     "validation_data.mask_attention_mode: 'sa' is not one of ['SA', 'CA', 'original']; did you mean 'SA'?"),
    (["ground_truth_mask_probability=1.5"], "ground_truth_mask_probability: 1.5 must be a number in [0, 1] or 'cosine'"),
    (["ground_truth_mask_probability=linear"],
     "ground_truth_mask_probability: 'linear' must be a number in [0, 1] or 'cosine'"),
    (["num_iterations_per_data=0"], "num_iterations_per_data: 0 must be an integer >= 1"),
    (["validation_data.mask_inference_cutoff=0"],
     "validation_data.mask_inference_cutoff: 0 must be a finite number > 0.0 and <= 1.0"),
    (["validation_data.mask_inference_stride=0"], "validation_data.mask_inference_stride: 0 must be an integer >= 1"),
    (["unet_additional_kwargs.use_mask_branch=maybe"], "unet_additional_kwargs.use_mask_branch: 'maybe' must be true or false"),
    (["train_data.mask_rot=x"], None),
])  # fmt: skip
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config({}, overrides)
    if message is None:  # unknown keys are refused with a suggestion
        assert str(error.value) == "train_data.mask_rot: unknown key; did you mean 'mask_root'?"
    else:
        assert str(error.value) == message


def test_rules_between_fields():
    with pytest.raises(ConfigError, match=r"^mask_root='m' needs adapter.use_mask_branch: true$"):
        TrainConfig(tiny=True, mask_root="m")
    with pytest.raises(ConfigError, match=r"^adapter.use_mask_branch: true needs mask_root \(the clips' mask videos"):
        TrainConfig(output_dir="o", pretrained_model_path="a", motion_module_path="b", video_root="v",
                    adapter={"use_mask_branch": True})
    config = load_config({}, [*MASK, "validation_data.mask_path=[a.png,b.png]"])
    with pytest.raises(ConfigError, match=r"^validation_data.mask_path: 2 mask\(s\) for 1 adapter\(s\) with "
                                          r"use_mask_branch \['miva'\]; give one mask image per mask-branch adapter$"):
        config.pipeline_kwargs()

"""Issue 30 item 4: masks and schedules per adapter in a run config (`validation_data.adapter_masks` /
`image_masks` / `adapter_schedules`, `miva.config.regions`): parsing, one-line errors naming the key, the value and
what is valid, which mask each image gets, and the `miva infer --mask/--schedule` flags setting the same keys."""

import pytest

from miva.config import ConfigError, load_config
from miva.config.regions import flag_overrides, masks_for

TWO = {"adapter_names": ["water", "pan"], "unet_checkpoint_path": ["ckpt/water", "ckpt/pan"]}


def _config(overrides=(), **validation):
    data = {**TWO, "validation_data": {"video_length": 4, **validation}}
    return load_config(data, list(overrides))


def test_keys_parse_and_round_trip():
    config = _config(adapter_masks={"water": "m/w.png"}, image_masks={"lake": {"pan": "m/p.png", "water": None}},
                     adapter_schedules={"pan": [1, 1, 0.5, 0]})
    v = config.validation_data
    assert v.adapter_masks == {"water": "m/w.png"}
    assert v.image_masks == {"lake": {"pan": "m/p.png", "water": None}}
    assert v.adapter_schedules == {"pan": [1.0, 1.0, 0.5, 0.0]}
    assert all(type(w) is float for w in v.adapter_schedules["pan"])
    assert load_config(config.to_dict()) == config
    default = _config().validation_data
    assert (default.adapter_masks, default.image_masks, default.adapter_schedules) == ({}, {}, {})


def test_each_image_gets_the_shared_masks_with_its_own_over_them():
    v = _config(adapter_masks={"water": "m/w.png", "pan": "m/p.png"},
                image_masks={"lake": {"pan": "m/lake_pan.png", "water": None}}).validation_data
    images = ["lake", "sky"]
    assert masks_for(v, "sky", images) == {"water": ("validation_data.adapter_masks.water", "m/w.png"),
                                           "pan": ("validation_data.adapter_masks.pan", "m/p.png")}
    # null drops the shared mask of `water` for this image: it acts everywhere there
    assert masks_for(v, "lake", images) == {"pan": ("validation_data.image_masks.lake.pan", "m/lake_pan.png")}
    assert masks_for(_config().validation_data, "lake", images) == {}


BAD = [
    (dict(adapter_masks=["m.png"]), "validation_data.adapter_masks: ['m.png'] must be a mapping of adapter name -> "
     "a mask image path (white: the adapter acts, black: it does not) or null, e.g. {water: masks/water.png}"),
    (dict(adapter_masks={"water": 3}), "validation_data.adapter_masks.water: 3 must be a mask image path (white: the "
     "adapter acts, black: it does not) or null"),
    (dict(adapter_masks={"wter": "m.png"}), "validation_data.adapter_masks.wter: no adapter named 'wter'; the "
     "adapters are ['water', 'pan'] (adapter_names); did you mean 'water'?"),
    (dict(image_masks={"lake": {"pn": "m.png"}}), "validation_data.image_masks.lake.pn: no adapter named 'pn'; the "
     "adapters are ['water', 'pan'] (adapter_names); did you mean 'pan'?"),
    (dict(image_masks={"lake": "m.png"}), "validation_data.image_masks.lake: 'm.png' must be a mapping of adapter "
     "name -> a mask image path (white: the adapter acts, black: it does not) or null"),
    (dict(adapter_schedules={"pan": [1, 0]}), "validation_data.adapter_schedules.pan: 2 weights for video_length 4; "
     "give one weight per frame"),
    (dict(adapter_schedules={"pan": [1, "x", 0, 0]}), "validation_data.adapter_schedules.pan[1]: 'x' must be a "
     "finite number (the adapter's weight in that frame)"),
    (dict(adapter_schedules={"pan": 0.5}), "validation_data.adapter_schedules.pan: 0.5 must be a list of per-frame "
     "weights (one per frame, video_length of them)"),
    (dict(adapter_schedules={"pn": [1, 1, 1, 1]}), "validation_data.adapter_schedules.pn: no adapter named 'pn'; the "
     "adapters are ['water', 'pan'] (adapter_names); did you mean 'pan'?"),
]


@pytest.mark.parametrize(("keys", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_values_are_one_line_naming_key_value_and_what_is_valid(keys, message):
    with pytest.raises(ConfigError) as error:
        _config(**keys)
    assert str(error.value) == message


def test_schedule_length_follows_an_overridden_video_length():
    keys = dict(adapter_schedules={"pan": [1, 1, 0, 0]})
    _config(**keys)
    with pytest.raises(ConfigError, match=r"^validation_data.adapter_schedules.pan: 4 weights for video_length 6;"):
        _config(["validation_data.video_length=6"], **keys)


def test_an_image_mask_for_an_image_the_config_does_not_animate():
    v = _config(image_masks={"lak": {"water": "m.png"}}).validation_data
    with pytest.raises(ConfigError) as error:
        masks_for(v, "lake", ["lake", "sky"])
    assert str(error.value) == ("validation_data.image_masks.lak: no input image named 'lak'; the images are "
                                "['lake', 'sky'] (image file names without suffix); did you mean 'lake'?")


def test_flags_set_the_same_keys_as_the_yaml():
    items = flag_overrides(["water=masks/a b=c.png"], ["pan=1, 1,0.5,0"])
    config = _config(items)
    yaml_config = _config(adapter_masks={"water": "masks/a b=c.png"}, adapter_schedules={"pan": [1, 1, 0.5, 0]})
    assert config == yaml_config
    # the flags pass through the same checks as the keys
    with pytest.raises(ConfigError, match=r"^validation_data.adapter_schedules.pan: 3 weights for video_length 4;"):
        _config(flag_overrides([], ["pan=1,1,1"]))
    with pytest.raises(ConfigError, match=r"^validation_data.adapter_masks.wter: no adapter named 'wter'"):
        _config(flag_overrides(["wter=m.png"], []))


@pytest.mark.parametrize(("masks", "schedules", "message"), [
    (["water"], [], "--mask 'water': expected NAME=PATH, e.g. water=masks/water.png (an adapter name without dots)"),
    (["=m.png"], [], "--mask '=m.png': expected NAME=PATH, e.g. water=masks/water.png (an adapter name without dots)"),
    (["a.b=m.png"], [], "--mask 'a.b=m.png': expected NAME=PATH, e.g. water=masks/water.png (an adapter name without "
     "dots)"),
    ([], ["pan=1,x"], "--schedule 'pan=1,x': 'x' is not a number; expected NAME=v1,v2,... (one weight per frame), "
     "e.g. pan=1,1,0.5,0"),
    (["w=a.png", "w=b.png"], [], "--mask 'w=b.png': adapter 'w' is given twice; give one --mask per adapter"),
])
def test_malformed_flags_are_one_line_naming_the_flag(masks, schedules, message):
    with pytest.raises(ConfigError) as error:
        flag_overrides(masks, schedules)
    assert str(error.value) == message


def test_a_training_config_refuses_regions_instead_of_ignoring_them():
    data = {"adapter_names": ["water"], "validation_data": {"video_length": 4, "adapter_schedules": {"water": [1] * 4}}}
    with pytest.raises(ConfigError) as error:
        load_config(data).train_config(tiny=True)
    assert str(error.value) == ("validation_data.adapter_schedules: inference only (miva infer); the validation "
                                "videos of training use no masks or schedules, remove it from a training config")
    load_config({**data, "validation_data": {"video_length": 4}}).train_config(tiny=True)

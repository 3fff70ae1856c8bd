"""The few-shot benchmark's `--base wan`: the Wan row set, sampling, recipe, cache folder and shipped Wan adapters."""

import json
from pathlib import Path

import pytest
from test_fewshot_benchmark import _load_script  # the script loaded as a module (beside this file)

from miva.backbones.wan.config import WanAdapterConfig
from miva.config.trainer import TrainConfig
from miva.world import base_fingerprint
from miva.world.adapters import RECIPES, recipe_fingerprint, world_train_config
from miva.world.evaluate import WAN_SAMPLING

WAN_IDS = [
    "reference/right/ground_truth", "reference/right/still", "fewshot/right/base", "fewshot/right/10clips",
    "reference/zoom_in/ground_truth", "reference/zoom_in/still", "fewshot/zoom_in/base", "fewshot/zoom_in/10clips",
    "reference/rotate_cw/ground_truth", "reference/rotate_cw/still", "fewshot/rotate_cw/base",
    "fewshot/rotate_cw/10clips", "clips/right/1", "clips/right/3", "sweep/right/0.0", "sweep/right/0.5",
    "sweep/right/1.0", "sweep/right/1.5", "compose/right+down/residual_0.5", "compose/right+down/weights_1",
    "ablation/right/sa_first", "ablation/right/no_implicit", "ablation/right/no_motion_lora",
]


@pytest.fixture
def fewshot(monkeypatch):
    return _load_script(monkeypatch)


def test_the_wan_rows_are_the_dit_rows_with_unet_ids_and_valid_wan_recipes(fewshot, tmp_path):
    assert [row.id for row in fewshot.WAN_ROWS] == WAN_IDS
    assert set(WAN_IDS) - {row.id for row in fewshot.ROWS} == {"ablation/right/sa_first", "ablation/right/no_implicit",
                                                              "ablation/right/no_motion_lora"}
    specs = {spec for row in fewshot.WAN_ROWS for spec in row.adapters}
    assert {spec.base for spec in specs} == {"wan"} and not any(row.sampling for row in fewshot.WAN_ROWS)
    fingerprints = set()
    for name, overrides in fewshot.WAN_VARIANTS.items():
        recipe = fewshot._recipe(fewshot.AdapterSpec("right", variant=name, base="wan"), 600, tmp_path)
        config = world_train_config(tmp_path, tmp_path, adapter_name="x", **{
            k: v for k, v in recipe.items() if k != "num_clips"})
        adapter = TrainConfig.from_dict(config).adapter  # validated as a Wan adapter
        assert isinstance(adapter, WanAdapterConfig) and config["num_frames"] == RECIPES["wan"]["num_frames"]
        assert all(getattr(adapter, key) == value for key, value in overrides.items())
        fingerprints.add(recipe_fingerprint(config))
    assert len(fingerprints) == len(fewshot.WAN_VARIANTS)  # every ablation trains something else
    full = TrainConfig.from_dict(world_train_config(tmp_path, tmp_path, adapter_name="x", world="wan")).adapter
    assert (full.sa_mode, full.ca_mode, full.use_motion_lora, full.use_ca_lora) == ("first_prev", "implicit", True,
                                                                                  False)


def test_base_wan_trains_the_wan_recipe_under_the_wan_fingerprint(fewshot, wan_world, tmp_path, monkeypatch):
    assert fewshot.default_settings("wan") == {"steps": RECIPES["wan"]["steps"], "scenes": 20,
                                               "eval_steps": WAN_SAMPLING["num_inference_steps"], "max_clips": None}
    assert fewshot.sampling_mark(base="wan") == fewshot.sampling_mark(WAN_SAMPLING) != fewshot.sampling_mark()
    monkeypatch.setitem(RECIPES["wan"], "steps", 7)  # the Wan recipe's budget, not the UNet's (both 600 today)
    trainings = []

    def fake_training(motion, work, **recipe):
        trainings.append((motion, Path(work), recipe))
        raise RuntimeError("training")

    monkeypatch.setattr(fewshot, "train_world_adapter", fake_training)
    with pytest.raises(RuntimeError, match="training"):
        fewshot.main(["--base", "wan", "--rows", "ablation/right/sa_first", "--cache", str(tmp_path)])
    [(motion, work, recipe)] = trainings
    assert motion == "right" and work == tmp_path / f"base-{base_fingerprint(base='wan')}" / "work" / "right-10c-sa_first"
    assert base_fingerprint(base="wan") == base_fingerprint(wan_world) != base_fingerprint()
    assert recipe["world"] == "wan" and recipe["steps"] == 7  # and its key names no other budget than the Wan one
    assert recipe["adapter"] == {"sa_mode": "first"}
    with pytest.raises(SystemExit):  # a UNet-only row is no Wan row
        fewshot.main(["--base", "wan", "--rows", "orthogonal", "--cache", str(tmp_path)])


def _ship(folder: Path, fewshot, spec, base_print: str, world: str = "wan"):
    """A shipped adapter folder as `ship` leaves it: its recipe's train_config.yaml and training record."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "miva_adapter.safetensors").write_bytes(b"x" * 7)
    recipe = {k: v for k, v in fewshot._recipe(spec, 600, folder).items() if k not in ("num_clips", "world")}
    config = world_train_config(folder / "w", folder / "c", adapter_name="right", world=world, **recipe)
    TrainConfig.from_dict(config).to_yaml(folder / "train_config.yaml")
    record = {"motion": "right", "seconds": 3.5, "clips": 10, "steps": 600, "seed": 0, "base": base_print}
    (folder / "training.json").write_text(json.dumps(record))


def test_a_shipped_wan_adapter_serves_the_wan_row_of_its_recipe(fewshot, wan_world, tmp_path, monkeypatch):
    folder = tmp_path / "wan_adapters" / "right"  # where the wan_world fixture puts the shipped Wan adapters
    right = fewshot.AdapterSpec("right", base="wan")
    _ship(folder, fewshot, right, base_fingerprint(base="wan"))
    monkeypatch.setattr(fewshot, "train_world_adapter", lambda *a, **k: pytest.fail("trained"))
    assert fewshot.trained_adapter(right, tmp_path, 600) == (folder, {"seconds": 3.5, "steps": 600, "clips": 10,
                                                                     "bytes": 7})
    assert fewshot._shipped_equivalent(fewshot.AdapterSpec("right", variant="sa_first", base="wan"), 600,
                                       tmp_path) is None
    assert fewshot._shipped_equivalent(fewshot.AdapterSpec("right", clips=3, base="wan"), 600, tmp_path) is None
    _ship(folder, fewshot, fewshot.AdapterSpec("right"), base_fingerprint(base="wan"), world="unet")
    assert fewshot._shipped_equivalent(right, 600, tmp_path) is None  # the UNet recipe in its train_config.yaml
    _ship(folder, fewshot, right, base_fingerprint())
    assert fewshot._shipped_equivalent(right, 600, tmp_path) is None  # trained on the UNet base


def test_base_wan_reference_and_base_rows_end_to_end(fewshot, wan_world, tmp_path, capsys):
    args = ["--base", "wan", "--rows", "reference/right", "fewshot/right/base", "--cache", str(tmp_path),
            "--scenes", "1", "--eval-steps", "2"]
    truth, still, base = fewshot.main(args)
    assert [truth["row"], still["row"], base["row"]] == WAN_IDS[:3]
    assert {truth["base"], still["base"], base["base"]} == {"wan"}
    assert truth["sampling"] is None and base["sampling"] == {**WAN_SAMPLING, "num_inference_steps": 2}
    assert len(base["videos"][0]["frame_psnr"]) == WAN_SAMPLING["num_frames"] - 1  # 9 Wan frames
    assert len(truth["videos"][0]["frame_psnr"]) == WAN_SAMPLING["num_frames"] - 1
    cache = tmp_path / f"base-{base_fingerprint(base='wan')}"  # the Wan base's folder, the Wan sampling's rows
    rows = cache / f"rows-{fewshot.sampling_mark(base='wan')}-scenes1-eval_steps2"
    assert json.loads((rows / "fewshot__right__base.json").read_text()) == base
    assert [p.name for p in tmp_path.iterdir()] == [cache.name] and [p.name for p in cache.iterdir()] == [rows.name]
    assert f"| wan | fewshot/right/base | {base['target']} |" in capsys.readouterr().out

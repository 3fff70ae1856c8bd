"""`python -m miva.world.adapters --ship`: every seed of a shipped adapter's recipe is trained and validated, the
best on the validation scenes ships, and an interrupted run resumes only trainings of the same recipe."""

import json

import pytest

from miva.config.trainer import TrainConfig
from miva.world import BASE_PATH, base_fingerprint, shipped_adapters
from miva.world import adapters as world_adapters
from miva.world.adapters import (
    SHIPPED,
    ShippedAdapter,
    recipe_fingerprint,
    saved_recipe_fingerprint,
    world_train_config,
)


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    """Ship into a temporary folder with trainings and validations that only write what the real ones write."""
    monkeypatch.setattr(world_adapters, "ADAPTERS_PATH", tmp_path / "adapters")
    monkeypatch.setattr(world_adapters, "base_fingerprint", lambda base="unet": "b" * 12)
    trained, validated = [], []
    # validation scores by seed: seed 1 makes the motion more often, seed 2 as often but with a lower PSNR
    scores = {0: (0.5, 18.0), 1: (0.9, 17.0), 2: (0.9, 16.0)}

    def train(motion, work, *, adapter_name, log, seed=0, **recipe):
        trained.append((adapter_name, seed))
        (work / "adapter").mkdir(parents=True)
        (work / "adapter" / "miva_adapter.safetensors").write_bytes(bytes([seed]))
        config = world_train_config(work, work / "clips", adapter_name=adapter_name, seed=seed,
                                    **{k: v for k, v in recipe.items() if k != "num_clips"})
        TrainConfig.from_dict(config).to_yaml(work / "train_config.yaml")
        return {"adapter": work / "adapter", "seconds": 2.0 + seed, "config": config}

    def validate(adapter, motion, base="unet"):
        seed = (adapter / "miva_adapter.safetensors").read_bytes()[0]
        validated.append(seed)
        accuracy, psnr = scores[seed]
        return {"class_accuracy": accuracy, "direction_error": None, "zoom_error": None, "turn_error": None,
                "psnr": psnr}

    monkeypatch.setattr(world_adapters, "train_world_adapter", train)
    monkeypatch.setattr(world_adapters, "_validate", validate)
    monkeypatch.setattr("miva.world.samples.write_adapter_sample", lambda folder, name, motion, base="unet": None)
    recipe = {"adapter": {"sa_mode": "prev"}, "steps": 8}
    monkeypatch.setattr(world_adapters, "SHIPPED", {"right": ShippedAdapter("right", recipe, seeds=(0, 1, 2)),
                                                    "down": ShippedAdapter("down")})
    return tmp_path / "adapters", trained, validated


def test_ship_keeps_the_seed_with_the_best_validation_and_records_every_candidate(fake_world):
    adapters_path, trained, validated = fake_world
    world_adapters.ship(["right"], log=lambda message: None)
    assert trained == [("right", 0), ("right", 1), ("right", 2)] and validated == [0, 1, 2]
    shipped = adapters_path / "right"
    assert (shipped / "miva_adapter.safetensors").read_bytes() == bytes([1])  # 90%, then the higher PSNR
    record = json.loads((shipped / "training.json").read_text())
    assert record["seed"] == 1 and record["steps"] == 8 and record["clips"] == 10 and record["seconds"] == 3.0
    assert record["base"] == "b" * 12 and sorted(record["validation"]) == ["0", "1", "2"]
    assert record["validation"]["0"]["class_accuracy"] == 0.5
    expected = world_train_config(".", ".", adapter_name="right", adapter={"sa_mode": "prev"}, steps=8, seed=1)
    assert saved_recipe_fingerprint(shipped) == recipe_fingerprint(expected)
    assert sorted(p.name for p in adapters_path.parent.iterdir()) == ["adapters"]  # no training left behind
    assert not (adapters_path / "down").exists()  # only the names asked for
    with pytest.raises(ValueError, match=r"names=\['left'\] are not shipped adapters of the unet base; choose from \['down', 'right'\]"):
        world_adapters.ship(["left"])


def test_an_interrupted_ship_resumes_only_trainings_of_the_same_recipe(fake_world, monkeypatch):
    adapters_path, trained, validated = fake_world
    adapters_path.mkdir()
    done = adapters_path.parent / ".train_right_seed0"  # trained and validated before the interruption
    world_adapters.train_world_adapter("right", done, adapter_name="right", log=None, adapter={"sa_mode": "prev"},
                                       steps=8)
    (done / "training.json").write_text(json.dumps({"seed": 0, "seconds": 2.0, "validation": {
        "class_accuracy": 0.5, "psnr": 18.0}}))
    stale = adapters_path.parent / ".train_right_seed1"  # trained with another recipe (steps) before a change
    world_adapters.train_world_adapter("right", stale, adapter_name="right", log=None, seed=1, steps=4)
    (stale / "training.json").write_text(json.dumps({"seed": 1, "seconds": 9.0, "validation": {
        "class_accuracy": 1.0, "psnr": 30.0}}))
    trained.clear()
    world_adapters.ship(["right"], log=lambda message: None)
    assert trained == [("right", 1), ("right", 2)]  # seed 0 resumed, seed 1 trained again
    record = json.loads((adapters_path / "right" / "training.json").read_text())
    assert record["seed"] == 1 and record["validation"]["1"]["class_accuracy"] == 0.9  # not the stale 1.0


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_the_shipped_adapters_are_what_SHIPPED_says():
    """Each shipped folder was trained on the shipped base with its `SHIPPED` recipe and one of its seeds."""
    folders = shipped_adapters()
    assert sorted(folders) == sorted(SHIPPED)
    for name, shipped in SHIPPED.items():
        record = json.loads((folders[name] / "training.json").read_text())
        assert record["motion"] == shipped.motion and record["base"] == base_fingerprint()
        assert record["seed"] in shipped.seeds and (record["steps"], record["clips"]) == (shipped.steps, shipped.clips)
        config = world_train_config(".", ".", adapter_name=name, seed=record["seed"],
                                    **{k: v for k, v in shipped.recipe.items() if k != "num_clips"})
        assert saved_recipe_fingerprint(folders[name]) == recipe_fingerprint(config), name
        if "validation" in record:  # shipped by `--ship` since it validates (zoom_in and rotate_cw were before)
            assert sorted(record["validation"]) == sorted(str(seed) for seed in shipped.seeds)

"""The MotionWorld few-shot benchmark script runs one row end to end and resumes from its cache."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from miva.config.trainer import TrainConfig
from miva.world import BASE_PATH, base_fingerprint
from miva.world.adapters import recipe_fingerprint, world_train_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "motion_world" / "fewshot.py"


def _load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("motion_world_fewshot", SCRIPT)
    fewshot = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fewshot)  # dataclasses look their module up there
    spec.loader.exec_module(fewshot)
    return fewshot


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_one_tiny_row_end_to_end_then_cached(tmp_path, capsys, monkeypatch):
    fewshot = _load_script(monkeypatch)
    assert len({row.id for row in fewshot.ROWS}) == len(fewshot.ROWS)
    args = ["--rows", "fewshot/right/10clips", "--cache", str(tmp_path), "--steps", "2", "--scenes", "2",
            "--eval-steps", "2", "--max-clips", "2"]
    [result] = fewshot.main(args)
    assert result["row"] == "fewshot/right/10clips" and len(result["videos"]) == 2
    summary = result["summary"]
    assert summary["train_seconds"] > 0 and summary["adapter_bytes"] > 0 and summary["psnr"] > 0
    cache = tmp_path / f"base-{base_fingerprint()}"  # results of one base are never mixed with another's
    # rows and adapters made under other settings than the table's are kept apart from it
    rows = cache / f"rows-{fewshot.sampling_mark()}-steps2-scenes2-eval_steps2-max_clips2"
    cached = json.loads((rows / "fewshot__right__10clips.json").read_text())
    assert cached["summary"] == summary and (cache / "adapters" / "right-2c-full-2steps" / "adapter").is_dir()
    assert cached["sampling"]["num_inference_steps"] == 2 and [p.name for p in cache.glob("rows*")] == [rows.name]
    capsys.readouterr()
    [again] = fewshot.main(args)  # served from the cache: no training, no sampling
    assert again == cached and "== fewshot" not in capsys.readouterr().out
    assert cached["recipes"] == ["right-2c-full-2steps@" + fewshot.spec_fingerprint(
        fewshot.AdapterSpec("right", clips=2), 2, cache)]
    # a row measured with another recipe of its adapters is not shown (and would be measured again)
    (rows / "fewshot__right__10clips.json").write_text(json.dumps({**cached, "recipes": ["right-2c-full-2steps@0"]}))
    assert fewshot.main([*args, "--table"]) == []
    with pytest.raises(SystemExit):
        fewshot.main(["--rows", "no/such/row", "--cache", str(tmp_path)])


def _write_train_config(folder, fewshot, spec, steps, cache):
    """What `miva train` leaves next to an adapter: the full config it trained with, at other paths."""
    recipe = {k: v for k, v in fewshot._recipe(spec, steps, cache).items() if k != "num_clips"}
    config = world_train_config(folder / "work", folder / "clips", adapter_name="elsewhere", **recipe)
    TrainConfig.from_dict(config).to_yaml(folder / "train_config.yaml")


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_a_shipped_adapter_serves_its_row_only_for_the_same_recipe_and_base(tmp_path, monkeypatch):
    fewshot = _load_script(monkeypatch)
    folder = tmp_path / "right"
    folder.mkdir()
    (folder / "miva_adapter.safetensors").write_bytes(b"x" * 10)
    monkeypatch.setattr(fewshot, "shipped_adapters", lambda base="unet": {"right": folder})
    record = {"motion": "right", "seconds": 12.5, "clips": 10, "steps": 600, "base": base_fingerprint()}
    right = fewshot.AdapterSpec("right")

    def served(spec, steps=600, shipped=right, shipped_steps=600, **changes):
        (folder / "training.json").write_text(json.dumps({**record, **changes}))
        _write_train_config(folder, fewshot, shipped, shipped_steps, tmp_path)
        return fewshot._shipped_equivalent(spec, steps, tmp_path)

    assert served(right) == (folder, {"seconds": 12.5, "steps": 600, "clips": 10, "bytes": 10})
    assert served(right, base="000000000000") is None  # trained on another base
    assert served(right, steps=300) is None and served(right, clips=3) is None
    assert served(fewshot.AdapterSpec("right", variant="ca_only")) is None
    assert served(fewshot.AdapterSpec("right", oa_bin=0)) is None
    assert served(fewshot.AdapterSpec("right", seed=1)) is None  # another training of the recipe
    assert served(fewshot.AdapterSpec("down")) is None  # not shipped
    # the shipped recipe is whatever its train_config.yaml says: a variant at another budget serves that row
    stq = fewshot.AdapterSpec("right", variant="stq_r2_rope_3d", steps=1200)
    assert served(stq, steps=1200, shipped=stq, shipped_steps=1200)[0] == folder
    assert served(right, shipped=stq, shipped_steps=1200) is None
    (folder / "train_config.yaml").unlink()
    assert fewshot._shipped_equivalent(right, 600, tmp_path) is None  # no record of its recipe


def test_a_cached_adapter_of_another_recipe_is_trained_again(tmp_path, monkeypatch):
    fewshot = _load_script(monkeypatch)
    monkeypatch.setattr(fewshot, "shipped_adapters", lambda base="unet": {})
    spec = fewshot.AdapterSpec("right", variant="sa_prev")
    folder = tmp_path / "adapters" / spec.key(600)
    (folder / "adapter").mkdir(parents=True)
    (folder / "training.json").write_text(json.dumps({"seconds": 1.0, "steps": 600, "clips": 10, "bytes": 3}))
    _write_train_config(folder, fewshot, spec, 600, tmp_path)
    assert fewshot.trained_adapter(spec, tmp_path, 600)[0] == folder / "adapter"  # the same recipe: served

    trainings = []

    def fake_training(motion, work, **recipe):
        trainings.append(recipe)
        raise RuntimeError("training")

    monkeypatch.setattr(fewshot, "train_world_adapter", fake_training)
    # the variant's meaning changed since the adapter was cached (as when WORLD_PARTS changes)
    monkeypatch.setitem(fewshot.VARIANTS, "sa_prev", {"sa_mode": "prev", "motion_lora_rank": 4})
    with pytest.raises(RuntimeError, match="training"):
        fewshot.trained_adapter(spec, tmp_path, 600, log=lambda message: None)
    assert trainings[0]["adapter"]["motion_lora_rank"] == 4


def test_adapter_cache_keys_name_every_recipe_change(monkeypatch):
    fewshot = _load_script(monkeypatch)
    default = fewshot.RECIPES["unet"]["steps"]
    assert fewshot.AdapterSpec("right").key(default) == "right-10c-full"  # the names of earlier caches
    keys = {
        fewshot.AdapterSpec("right").key(default),
        fewshot.AdapterSpec("right").key(default // 2),
        fewshot.AdapterSpec("right", seed=1).key(default),
        fewshot.AdapterSpec("right", clips=3).key(default),
        fewshot.AdapterSpec("right", variant="ca_only").key(default),
        fewshot.AdapterSpec("right", oa_bin=0).key(default),
        fewshot.AdapterSpec("right+down").key(default),
    }
    assert len(keys) == 7
    mark = fewshot.sampling_mark()
    assert fewshot._rows_folder(dict(fewshot.DEFAULT_SETTINGS)) == f"rows-{mark}"
    assert fewshot._rows_folder({**fewshot.DEFAULT_SETTINGS, "scenes": 2}) == f"rows-{mark}-scenes2"
    unet = fewshot.sampling_defaults("unet")
    other = {**unet, "use_adain_norm": "on" if unet.get("use_adain_norm") != "on" else "off"}
    assert fewshot.sampling_mark(other) != mark  # rows sampled another way live in another folder


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_reference_rows_score_the_ground_truth_and_a_still_without_training(tmp_path, monkeypatch):
    fewshot = _load_script(monkeypatch)
    truth, still = fewshot.main(["--rows", "reference/right", "--cache", str(tmp_path), "--scenes", "1"])
    assert [truth["row"], still["row"]] == ["reference/right/ground_truth", "reference/right/still"]
    assert truth["summary"]["class_accuracy"] == 1.0 and truth["summary"]["direction_error"] < 1.0
    assert truth["summary"]["train_seconds"] is None and truth["sampling"] is None  # nothing trained or sampled
    assert still["summary"]["static_fraction"] == 1.0 and still["summary"]["direction_error"] is None
    assert still["summary"]["psnr"] < truth["summary"]["psnr"]
    assert not (tmp_path / f"base-{base_fingerprint()}" / "adapters").exists()


def test_the_recipe_fingerprint_names_what_is_trained_not_where(tmp_path):
    config = world_train_config(tmp_path / "a", tmp_path / "clips", adapter_name="right")
    fingerprint = recipe_fingerprint(config)
    assert len(fingerprint) == 12
    full = tmp_path / "train_config.yaml"
    TrainConfig.from_dict(config).to_yaml(full)  # the full dump `miva train` keeps, defaults filled in
    from omegaconf import OmegaConf

    assert recipe_fingerprint(OmegaConf.to_container(OmegaConf.load(full))) == fingerprint
    moved = world_train_config(tmp_path / "b", tmp_path / "other", adapter_name="renamed", base="elsewhere")
    assert recipe_fingerprint(moved) == fingerprint
    changes = [{"steps": 300}, {"seed": 1}, {"rank": 8}, {"learning_rate": 1e-3}, {"adapter": {"sa_mode": "prev"}},
               {"extra": {"num_frames": 16}}]
    others = {recipe_fingerprint(world_train_config(tmp_path, tmp_path, adapter_name="right", **c)) for c in changes}
    assert len(others) == len(changes) and fingerprint not in others

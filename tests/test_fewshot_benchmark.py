"""The MotionWorld few-shot benchmark script runs one row end to end and resumes from its cache."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from miva.world import BASE_PATH, base_fingerprint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "motion_world" / "fewshot.py"


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
    with pytest.raises(SystemExit):
        fewshot.main(["--rows", "no/such/row", "--cache", str(tmp_path)])


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_a_shipped_adapter_serves_its_row_only_for_the_same_recipe_and_base(tmp_path, monkeypatch):
    fewshot = _load_script(monkeypatch)
    folder = tmp_path / "right"
    folder.mkdir()
    (folder / "miva_adapter.safetensors").write_bytes(b"x" * 10)
    monkeypatch.setattr(fewshot, "shipped_adapters", lambda: {"right": folder})
    record = {"motion": "right", "seconds": 12.5, "clips": 10, "steps": 600, "base": base_fingerprint()}

    def served(spec, steps=600, **changes):
        (folder / "training.json").write_text(json.dumps({**record, **changes}))
        return fewshot._shipped_equivalent(spec, steps)

    right = fewshot.AdapterSpec("right")
    assert served(right) == (folder, {"seconds": 12.5, "steps": 600, "clips": 10, "bytes": 10})
    assert served(right, base="000000000000") is None  # trained on another base
    assert served(right, steps=300) is None and served(right, clips=3) is None
    assert served(fewshot.AdapterSpec("right", variant="ca_only")) is None
    assert served(fewshot.AdapterSpec("right", oa_bin=0)) is None
    assert served(fewshot.AdapterSpec("right", seed=1)) is None  # another training of the recipe
    assert served(fewshot.AdapterSpec("down")) is None  # not shipped


def test_adapter_cache_keys_name_every_recipe_change(monkeypatch):
    fewshot = _load_script(monkeypatch)
    default = fewshot.RECIPE_STEPS
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
    other = {**fewshot.SAMPLING, "use_adain_norm": "on" if fewshot.SAMPLING.get("use_adain_norm") != "on" else "off"}
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

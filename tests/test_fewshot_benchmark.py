"""The MotionWorld few-shot benchmark script runs one row end to end and resumes from its cache."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from miva.world import BASE_PATH

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "motion_world" / "fewshot.py"


@pytest.mark.skipif(not (BASE_PATH / "model_index.json").is_file(), reason="the MotionWorld weights are not built")
def test_one_tiny_row_end_to_end_then_cached(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("motion_world_fewshot", SCRIPT)
    fewshot = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fewshot)  # dataclasses look their module up there
    spec.loader.exec_module(fewshot)
    assert len({row.id for row in fewshot.ROWS}) == len(fewshot.ROWS)
    args = ["--rows", "fewshot/right/10clips", "--cache", str(tmp_path), "--steps", "2", "--scenes", "2",
            "--eval-steps", "2", "--max-clips", "2"]
    [result] = fewshot.main(args)
    assert result["row"] == "fewshot/right/10clips" and len(result["videos"]) == 2
    summary = result["summary"]
    assert summary["train_seconds"] > 0 and summary["adapter_bytes"] > 0 and summary["psnr"] > 0
    cached = json.loads((tmp_path / "rows" / "fewshot__right__10clips.json").read_text())
    assert cached["summary"] == summary and (tmp_path / "adapters" / "right-2c-full" / "adapter").is_dir()
    capsys.readouterr()
    [again] = fewshot.main(args)  # served from the cache: no training, no sampling
    assert again == cached and "== fewshot" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fewshot.main(["--rows", "no/such/row", "--cache", str(tmp_path)])

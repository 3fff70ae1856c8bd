"""`miva demo --base wan` (issue 31 item 4): the MotionWorld Wan base with its shipped adapter, the base alone when
none is shipped yet, and one line naming the rebuild command when the base folder is missing. On the session's
smoke Wan base (`wan_world`)."""

import dataclasses
import json
import shutil

from PIL import Image

import miva.base_registry as registry
from miva.cli import main


def _frames(gif) -> int:
    with Image.open(gif) as image:
        return image.n_frames


def test_demo_base_wan_without_shipped_adapters_shows_the_base(wan_world, tmp_path, capsys):
    assert main(["demo", "--base", "wan", "--out", str(tmp_path), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert ("no adapter is shipped for the wan base yet (build them with `python -m miva.world.adapters --base wan "
            "--ship`); showing the base alone") in out
    motion = json.loads((tmp_path / "motion.json").read_text())
    assert motion["world_base"] == "wan" and motion["num_frames"] == 9 and set(motion) >= {"base", "target"}
    assert "right" not in motion and _frames(tmp_path / "demo.gif") == 9
    with Image.open(tmp_path / "side_by_side.gif") as gif:  # ground truth | base, 2x upscaled, 2 px gap
        assert gif.size[0] == (64 * 2 + 2) * 2


def test_demo_base_wan_runs_its_shipped_adapter(wan_world, tmp_path, capsys):
    from miva.world import WAN_ADAPTERS_PATH
    from miva.world.adapters import train_world_adapter

    trained = train_world_adapter("right", tmp_path / "work", world="wan", steps=2, num_clips=2, log=lambda m: None)
    shutil.copytree(trained["adapter"], WAN_ADAPTERS_PATH / "right")
    out = tmp_path / "demo"
    assert main(["demo", "--base", "wan", "--out", str(out), "--steps", "2", "--adapter", "right"]) == 0
    printed = capsys.readouterr().out
    assert "with 'right'" in printed and "wan base, 9 frames, 2 steps, 2 videos" in printed
    motion = json.loads((out / "motion.json").read_text())
    assert motion["world_base"] == "wan" and set(motion) >= {"base", "right"}
    assert _frames(out / "demo.gif") == 9 and _frames(out / "side_by_side.gif") == 9
    assert main(["demo", "--base", "wan", "--out", str(out), "--adapter", "zoom_in"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "miva demo: error: adapter='zoom_in' is not a shipped MotionWorld adapter of the wan base; choose one of "
        "['right']")


def test_demo_base_wan_without_the_base_names_the_rebuild_command(monkeypatch, tmp_path, capsys):
    bases = tuple(dataclasses.replace(b, folder=tmp_path) if b.name == "miva-world-wan" else b
                  for b in registry.KNOWN_BASES)
    monkeypatch.setattr(registry, "KNOWN_BASES", bases)
    assert main(["demo", "--base", "wan", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"miva demo: error: miva-world-wan: no base in {tmp_path} (the MotionWorld Wan2.1-architecture "
                      f"base (64x64 frames, 9-frame clips, docs/motionworld.md)); rebuild it with `python -m "
                      f"miva.world.pretrain_wan --out {registry.WORLD_WAN_PATH}`")

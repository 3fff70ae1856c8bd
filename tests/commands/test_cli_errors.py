"""Item 7 of issue 11: every user error of the command line ends in one error line plus one hint line on stderr
and exit status 2, never a traceback; `--debug` (before or after the subcommand) or `MIVA_DEBUG=1` re-raises."""

from pathlib import Path

import pytest
import yaml

from miva.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"
INFER = str(EXAMPLES / "infer_single.yaml")
TRAIN = str(EXAMPLES / "train.yaml")


def _files(tmp_path):
    (tmp_path / "bad.yaml").write_text("output_dir: o\ntrain_data: [a, b\n")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "o"), "pretrained_model_path": "nobody/no-such-model",
        "motion_module_path": "nobody/no-such-motion-adapter"}))
    return tmp_path


CASES = {
    "train without --config": (["train"], "miva train: error: --config: required"),
    "frames over the motion-module limit": (
        ["infer", "--config", INFER, "--tiny", "--set", "validation_data.video_length=40"],
        "miva infer: error: num_frames=40 exceeds the motion module's maximum of 32"),
    "demo --frames 1": (["demo", "--frames", "1"], "miva demo: error: frames=1 must be >= 2"),
    "convert needs a checkpoint": (["convert", "--config", "{tmp}/offline.yaml", "--out", "{tmp}/cv"],
                                   "miva convert: error: unet_checkpoint_path: the config names no checkpoint"),
    "model that cannot be fetched": (["convert", "--config", "{tmp}/offline.yaml", "--out", "{tmp}/cv", "--set",
                                      "unet_checkpoint_path={tmp}/corrupt.safetensors"], "miva convert: error: "),
    "TrainConfig ValueError": (["train", "--config", TRAIN, "--tiny", "--set", "learning_rate=-1"],
                               "miva train: error: learning_rate: -1 must be a finite number > 0.0"),
    "--set max_train_steps=abc": (["train", "--config", TRAIN, "--tiny", "--set", "max_train_steps=abc"],
                                  "miva train: error: max_train_steps: 'abc' must be an integer >= 1"),
    "YAML syntax error": (["train", "--config", "{tmp}/bad.yaml"],
                          "miva train: error: {tmp}/bad.yaml: not valid YAML: while parsing a flow"),
    "corrupt checkpoint": (["infer", "--config", INFER, "--tiny", "--set",
                            "unet_checkpoint_path={tmp}/corrupt.safetensors"], "miva infer: error: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("MIVA_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a model that is not cached cannot be fetched (no network in tests)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(_files(tmp_path))
    argv, start = CASES[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    start = start.format(tmp=tmp_path)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("miva ")]
    assert len(errors) == 1 and errors[0].startswith(start), lines
    assert lines[-1] == "(run with --debug or MIVA_DEBUG=1 for the traceback)"
    assert lines[-2] == errors[0]
    print(f"{case}: {errors[0]}")


@pytest.mark.parametrize("how", ["flag before", "flag after", "env"])
def test_debug_shows_the_exception(how, monkeypatch):
    argv = ["demo", "--frames", "1"]
    if how == "env":
        monkeypatch.setenv("MIVA_DEBUG", "1")
    else:
        monkeypatch.delenv("MIVA_DEBUG", raising=False)
        argv = ["--debug", *argv] if how == "flag before" else [*argv, "--debug"]
    with pytest.raises(ValueError, match="frames=1 must be >= 2"):
        main(argv)

"""Item 3 of issue 27: CLI habits. A mistyped subcommand or flag gets the closest valid one and the usage of its
subcommand; Ctrl-C ends in one line (in `miva train`: the step, the last checkpoint and the command that resumes);
`--resume latest` without a checkpoint says that it starts fresh; known irrelevant library warnings are dropped,
and only those."""

import logging
import shlex
import warnings

import pytest

import miva.commands.infer
from miva.cli import main, quiet_known_noise

TRAIN_USAGE = "usage: miva train [-h] [--config CONFIG] [--set KEY.PATH=VALUE] [--tiny]"


def _exit_status(argv) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return stop.value.code


def test_mistyped_subcommand_suggests_it_and_shows_its_usage(capsys):
    assert _exit_status(["trian"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == TRAIN_USAGE
    assert err[-1] == ("miva: error: unknown command 'trian'; did you mean 'train'? (commands: demo, infer, train, "
                       "bases, embed-text, convert, app)")
    assert _exit_status(["bases", "crate", "--tiny"]) == 2  # one level down
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: miva bases create [-h]")
    assert err[-1] == "miva bases: error: unknown command 'crate'; did you mean 'create'? (commands: create)"
    assert _exit_status(["zzzz"]) == 2  # nothing close: the list of commands and the top usage
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: miva [-h]") and err[-1].startswith("miva: error: unknown command 'zzzz' (comm")


@pytest.mark.parametrize("argv, flag, suggestion", [
    (["train", "--confg", "x.yaml"], "--confg", "--config"),
    (["train", "--tiny", "--set", "a=1", "--confg=x.yaml"], "--confg", "--config"),
    (["train", "--resme", "latest"], "--resme", "--resume"),
    (["--debg", "train"], "--debg", "--debug"),
])
def test_mistyped_flag_suggests_it_and_shows_the_subcommand_usage(capsys, argv, flag, suggestion):
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err.splitlines()
    prog = "miva train" if argv[0] == "train" else "miva"
    assert err[0] == (TRAIN_USAGE if prog == "miva train" else "usage: miva [-h] [--version] [--debug] COMMAND ...")
    assert err[-1] == f"{prog}: error: unrecognized argument {flag!r}; did you mean {suggestion!r}?"


def test_valid_flags_abbreviations_and_values_pass_the_check(monkeypatch):
    seen = []
    monkeypatch.setattr(miva.commands.infer, "run", lambda args: seen.append(args) or 0)
    assert main(["--debug", "infer", "--conf", "x.yaml", "--set", "train=1", "--set=--x"]) == 0
    assert seen[0].config == "x.yaml" and seen[0].overrides == ["train=1", "--x"] and seen[0].debug


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.delenv("MIVA_DEBUG", raising=False)
    monkeypatch.setattr(miva.commands.infer, "run", interrupted)
    assert main(["infer", "--config", "x.yaml"]) == 130
    assert capsys.readouterr().err == "miva infer: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        main(["infer", "--config", "x.yaml", "--debug"])


def test_ctrl_c_in_train_says_how_to_resume_and_that_command_resumes(tmp_path, monkeypatch, capsys, caplog):
    from miva.training.train import MIVATrainer

    monkeypatch.delenv("MIVA_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--tiny", "--set", f"output_dir={out}", "--set", "max_train_steps=4", "--set",
            "checkpointing_steps=2", "--set", "validation_steps=4", "--resume", "latest"]
    real_log_step = MIVATrainer._log_step

    def ctrl_c_after_step_3(self, *args):
        real_log_step(self, *args)
        if self.global_step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(MIVATrainer, "_log_step", ctrl_c_after_step_3)
        with caplog.at_level(logging.INFO, logger="miva.training"):
            assert main(argv) == 130
    fresh = [r for r in caplog.records if "no checkpoint" in r.getMessage()]
    assert [(r.levelno, r.getMessage().removeprefix("[RANK 0] ")) for r in fresh] == [
        (logging.WARNING, f"resume_from_checkpoint='latest': no checkpoint in {out} yet; starting fresh from step 0")]
    resume = f"miva train --tiny --set output_dir={out} --set max_train_steps=4 --set checkpointing_steps=2 " \
             "--set validation_steps=4 --resume latest"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"miva train: interrupted at step 3 (last checkpoint: {out}/checkpoint-2); resume with: {resume}")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="miva.training"):
        assert main(shlex.split(resume)[1:]) == 0
    assert f"resumed from {out}/checkpoint-2 at step 2" in caplog.text
    assert (out / "adapter" / "miva_adapter.safetensors").is_file()


def test_interrupt_before_the_first_checkpoint_says_it_starts_again(tmp_path, monkeypatch):
    from miva.training.command import interrupted_message

    class Args:
        config, tiny, overrides = "my run.yaml", False, ["resume_from_checkpoint=x", "seed=1"]

    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"ste')  # a line cut short by the kill
    assert interrupted_message(Args, str(tmp_path)) == (
        "interrupted at step 2 (no checkpoint yet, so this starts again from step 0); resume with: "
        "miva train --config 'my run.yaml' --set seed=1 --resume latest")


# The exact messages the libraries print (diffusers 0.42, transformers 5, huggingface_hub), written out here.
NOISE = {
    "diffusers.models.modeling_utils": "There are modules in UNetMotionModel that should be kept in float32: []. "
    "Casting directly with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead "
    "to keep these modules in float32.",
    "transformers.utils.import_utils": "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
    "`CLIPImageProcessorPil` for backward compatibility. Install torchvision to use the default backend, or import "
    "`CLIPImageProcessorPil` directly to silence this warning.",
}
KEPT = {  # the same loggers, other messages: they still reach the user
    "diffusers.models.modeling_utils": "There are modules in UNetMotionModel that should be kept in float32: "
    "['norm']. Casting directly with `to()` can lead to inconsistent results",
    "transformers.utils.import_utils": "Could not load PIL fallback CLIPImageProcessorPil",
}
SYMLINK = ("`huggingface_hub` cache-system uses symlinks by default to efficiently store duplicated files but your "
           "machine does not support them in /cache. Caching files will still work")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_known_noise_is_dropped_and_nothing_else():
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    for name in NOISE:
        logger, collect = logging.getLogger(name), _Collect()
        assert sum(type(f).__name__ == "_DropNoise" for f in logger.filters) == 1
        level = logger.level
        logger.addHandler(collect)
        logger.setLevel(logging.WARNING)  # whatever verbosity an earlier test left on the library's root logger
        try:
            logger.warning(NOISE[name])
            logger.warning(KEPT[name])
        finally:
            logger.removeHandler(collect)
            logger.setLevel(level)
        assert collect.messages == [KEPT[name]], name
    with warnings.catch_warnings(record=True) as caught:
        quiet_known_noise()
        warnings.warn(SYMLINK)
        warnings.warn("another UserWarning")
    assert [str(w.message) for w in caught] == ["another UserWarning"]

"""Item 6 of issue 27 (the disk part): a disk that fills (ENOSPC) or a file over the size limit (EFBIG) during a
checkpoint write ends in one line naming the problem and the checkpoint, the partial folder removed; the writes
are patched to fail as a full disk makes them fail."""

import errno
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import miva.training.checkpointing as checkpointing
from miva.cli import main

TAIL = "Free space on that disk or set output_dir to another one, then rerun with --resume latest"


def _argv(out: Path) -> list[str]:
    return ["train", "--tiny", "--set", f"output_dir={out}", "--set", "max_train_steps=2", "--set",
            "checkpointing_steps=2", "--set", "validation_steps=2"]


def test_full_disk_in_miva_train_is_one_line(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.delenv("MIVA_DEBUG", raising=False)
    monkeypatch.setattr(safetensors.torch, "save_file", full)  # the adapter tensors: the first file written
    out = tmp_path / "run"
    assert main(_argv(out)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == (
        f"miva train: error: no space left on device: writing checkpoint {out}/checkpoint-2 failed (OSError: "
        f"[Errno 28] No space left on device); the partial checkpoint-2.tmp was removed. {TAIL}")
    assert not (out / "checkpoint-2.tmp").exists() and not (out / "checkpoint-2").exists()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    import argparse

    from miva.training.command import add_arguments, config_from_args
    from miva.training.train import MIVATrainer

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path_factory.mktemp("disk") / "run"
    t = MIVATrainer(config_from_args(parser.parse_args(_argv(out)[1:])))
    t.setup()
    return t


def _save_fails(trainer, match: str) -> OSError:
    with pytest.raises(OSError) as error:
        trainer.save_checkpoint(0)
    assert str(error.value).startswith(match), str(error.value)
    assert str(error.value).endswith(TAIL)
    assert sorted(p.name for p in trainer.output_dir.iterdir() if p.name.startswith("checkpoint")) == []
    return error.value


def test_torch_writer_without_errno_on_a_full_disk(trainer, monkeypatch):
    """torch's zip writer reports a full disk as "unexpected pos", without an errno: the free space decides."""
    def torch_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 4096))
    error = _save_fails(trainer, f"no space left on device: writing checkpoint {trainer.output_dir}/checkpoint-0 "
                                 "failed (RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos")
    assert error.errno == errno.ENOSPC and error.filename == str(trainer.output_dir / "checkpoint-0")


@pytest.mark.parametrize("code, message, problem", [
    (errno.EFBIG, "File too large", "file too large"),
    (errno.ENOSPC, "No space left on device", "no space left on device"),
])
def test_trainer_state_write_on_a_full_disk(trainer, monkeypatch, code, message, problem):
    def full(folder, state):
        raise OSError(code, message, str(Path(folder) / "trainer_state.json"))

    monkeypatch.setattr(checkpointing, "write_trainer_state", full)
    tmp = trainer.output_dir / "checkpoint-0.tmp"
    _save_fails(trainer, f"{problem}: writing checkpoint {trainer.output_dir}/checkpoint-0 failed (OSError: "
                         f"[Errno {code}] {message}: '{tmp}/trainer_state.json'); the partial checkpoint-0.tmp was "
                         "removed.")


def test_safetensors_error_text_is_recognised(trainer, monkeypatch):
    """safetensors words a full disk in its Rust error, without an errno attribute."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    _save_fails(trainer, f"no space left on device: writing checkpoint {trainer.output_dir}/checkpoint-0 failed "
                         "(SafetensorError: Error while serializing: IoError")


def test_other_write_errors_are_not_called_a_full_disk(trainer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("some bug")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="^some bug$"):
        trainer.save_checkpoint(0)

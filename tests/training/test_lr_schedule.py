"""Item 12 of issue 11: `lr_scheduler` / `lr_warmup_steps` / `lr_num_cycles` drive the trainer's learning rate
through diffusers' `get_scheduler`; the per-step rates in the training log follow the schedule's formula."""

import json

import pytest

from miva.config import ConfigError, load_config
from miva.training.train import LOG_FILE, train
from miva.training.train_config import TrainConfig

LR, STEPS, WARMUP = 1e-3, 6, 2


def _linear(step):
    """diffusers' 'linear' schedule written out: warm up from 0, then decay linearly to 0 at STEPS."""
    if step < WARMUP:
        return LR * step / WARMUP
    return LR * max(0.0, (STEPS - step) / (STEPS - WARMUP))


def test_linear_schedule_with_warmup_is_followed(tmp_path):
    config = TrainConfig.from_dict(dict(
        output_dir=str(tmp_path), tiny=True, prompt="clouds", num_frames=4, width=64, height=64,
        sample_frame_rate=1, mixed_precision="no", max_train_steps=STEPS, checkpointing_steps=None,
        validation_steps=None, learning_rate=LR, lr_scheduler="linear", lr_warmup_steps=WARMUP,
        gradient_checkpointing=False))
    train(config)
    records = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert record["lr"] == pytest.approx(_linear(record["step"] - 1), rel=1e-6, abs=1e-12)


def test_schedule_keys_are_checked_and_mapped(tmp_path):
    with pytest.raises(ValueError, match=r"lr_scheduler='cosin' is not one of .*did you mean 'cosine'"):
        TrainConfig.from_dict(dict(output_dir=str(tmp_path), tiny=True, lr_scheduler="cosin"))
    with pytest.raises(ValueError, match="lr_warmup_steps=5 has no effect with lr_scheduler='constant'"):
        TrainConfig.from_dict(dict(output_dir=str(tmp_path), tiny=True, lr_warmup_steps=5))
    research = {"output_dir": str(tmp_path), "train_data": {"video_root": str(tmp_path), "prompt": "clouds"},
                "lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 10, "lr_num_cycles": 3}
    trainer = load_config(research).train_config(tiny=True)
    assert (trainer.lr_scheduler, trainer.lr_warmup_steps, trainer.lr_num_cycles) == ("cosine_with_restarts", 10, 3)
    with pytest.raises(ConfigError, match=r"^lr_scheduler: 'cosin' is not one of"):
        load_config({**research, "lr_scheduler": "cosin"})

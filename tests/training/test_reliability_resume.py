"""SIGKILL a short `--tiny` training run at chosen moments, rerun it with `--resume latest` until it finishes, and
compare with an uninterrupted run: the same final adapter bit for bit, every step logged once with the same loss.

Kill points are events seen in the output folder (the synthetic clips being written, a step logged, a checkpoint
or the final adapter being written), so they hit the moments that matter instead of random wall-clock times. CI
runs one chain of three kills; `pytest -m slow` runs many chains with random kill points.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [
    "max_train_steps=4",
    "checkpointing_steps=2",
    "checkpoints_total_limit=1",
    "validation_steps=null",
    "report_to=none",
    "num_frames=4",
    "width=32",
    "height=32",
    "gradient_checkpointing=false",
    "seed=7",
]


def command(output_dir: Path, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "miva.training.train", "--tiny", "--set", f"output_dir={output_dir}"]
    for item in SETTINGS:
        args += ["--set", item]
    return args + (["--resume", "latest"] if resume else [])


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        DIFFUSERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",  # the same in every run: float sums must not depend on thread scheduling
    )
    return env


def logged_steps(output_dir: Path) -> int:
    path = output_dir / "train_log.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


# Kill points: (name, predicate on the output folder). Checked every few milliseconds while the run is alive.
KILL_POINTS = {
    "writing clips": lambda out: any(
        p.name.startswith("synthetic_clips.miva-tmp-") and any(p.iterdir()) for p in out.glob("synthetic_clips*")
    ),
    "step 1 logged, before the first checkpoint": lambda out: logged_steps(out) >= 1,
    "step 3 logged": lambda out: logged_steps(out) >= 3,
    "saving a checkpoint": lambda out: any(out.glob("checkpoint-*.tmp")),
    "saving the final adapter": lambda out: any(out.glob("adapter.miva-tmp-*")),
}


def _holds(predicate, output_dir: Path) -> bool:
    try:
        return output_dir.is_dir() and bool(predicate(output_dir))
    except OSError:  # a folder renamed between listing and reading it: look again at the next poll
        return False


def run_until(output_dir: Path, resume: bool, kill_when=None, delay: float = 0.0, timeout: float = 1200) -> str:
    """Run the training command; SIGKILL it `delay` seconds after `kill_when(output_dir)` holds. Returns "killed" or
    "finished" (a run that finishes before the kill point is fine: the point was passed between two polls)."""
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block the child
    process = subprocess.Popen(
        command(output_dir, resume), env=environment(), stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT
    )
    start = time.monotonic()
    try:
        while process.poll() is None:
            if kill_when is not None and _holds(kill_when, output_dir):
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                process.wait()
                return "killed"
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"training did not finish in {timeout} s")
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        stderr = log.read().decode(errors="replace")
        log.close()
    assert process.returncode == 0, f"training failed (rc {process.returncode}):\n{stderr[-3000:]}"
    return "finished"


def final_state(output_dir: Path):
    tensors = load_file(str(output_dir / "adapter" / "miva_adapter.safetensors"))
    lines = (output_dir / "train_log.jsonl").read_text().splitlines()
    return tensors, [(r["step"], r["loss"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert run_until(out, resume=False) == "finished"
    return final_state(out)


def check_chain(reference, output_dir: Path, kills: list[tuple[str, float]]) -> list[str]:
    """Kill at each point in turn (each rerun resumes), then finish; compare with the uninterrupted run."""
    outcomes = []
    for index, (point, delay) in enumerate(kills):
        outcomes.append(run_until(output_dir, resume=index > 0, kill_when=KILL_POINTS[point], delay=delay))
    run_until(output_dir, resume=True)
    tensors, log = final_state(output_dir)
    ref_tensors, ref_log = reference
    assert [s for s, _ in log] == [s for s, _ in ref_log], f"steps logged {[s for s, _ in log]} (kills {kills})"
    assert log == ref_log, f"losses differ from the uninterrupted run (kills {kills})"
    assert tensors.keys() == ref_tensors.keys()
    changed = [k for k in tensors if not tensors[k].equal(ref_tensors[k])]
    assert not changed, f"final adapter differs in {len(changed)} tensors, e.g. {changed[0]} (kills {kills})"
    leftovers = sorted(p.name for p in output_dir.iterdir() if ".miva-" in p.name or p.name.endswith(".tmp"))
    assert not leftovers, f"temporary folders left behind: {leftovers}"
    return outcomes


def test_killed_three_times_resumes_to_the_same_adapter(reference, tmp_path):
    """While the synthetic clips are written (the partial folder must not be used), after step 1 before any
    checkpoint (its log line must not be duplicated), and after step 3 (resume from checkpoint-2)."""
    outcomes = check_chain(
        reference,
        tmp_path / "run",
        [("writing clips", 0.0), ("step 1 logged, before the first checkpoint", 0.0), ("step 3 logged", 0.0)],
    )
    assert outcomes == ["killed"] * 3


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_killed_at_random_points_resumes_to_the_same_adapter(reference, tmp_path, seed):
    """Many chains of 1-3 kills at random event points, each after a random delay (so some land mid-write)."""
    rng = random.Random(seed)
    kills = [(rng.choice(sorted(KILL_POINTS)), rng.uniform(0.0, 0.4)) for _ in range(rng.randint(1, 3))]
    check_chain(reference, tmp_path / "run", kills)


# ------------------------------------------------------------------------------- damaged checkpoints (in process)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 steps with checkpoints after steps 2 and 4 (in process, on 3 small synthetic clips)."""
    from miva.training.synthetic import write_synthetic_dataset
    from miva.training.train import train

    clips = tmp_path_factory.mktemp("clips")
    write_synthetic_dataset(clips, num_clips=3, num_frames=6, height=32, width=32, fmt="gif")
    out = tmp_path_factory.mktemp("run")
    train(small_config(clips, out))
    return clips, out


def small_config(clips, out, **overrides):
    from miva.training.train_config import TrainConfig

    fields = dict(
        output_dir=str(out),
        tiny=True,
        video_root=str(clips),
        prompt="clouds",
        num_frames=4,
        sample_frame_rate=1,
        width=32,
        height=32,
        adapter=dict(use_ca_lora=True, ca_lora_rank=2, motion_lora_rank=2),
        learning_rate=1e-3,
        max_train_steps=4,
        checkpointing_steps=2,
        validation_steps=None,
        mixed_precision="no",
        gradient_checkpointing=False,
        report_to="none",
        seed=3,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def _damage(out, checkpoint, how):
    folder = out / checkpoint
    if how == "truncated adapter state":
        path = folder / "adapter_state.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "trainer state not JSON":
        (folder / "trainer_state.json").write_text("{'global_step': 4")
    elif how == "truncated optimizer":
        path = folder / "optimizer.bin"
        path.write_bytes(path.read_bytes()[:50])


@pytest.mark.parametrize("how", ["truncated adapter state", "trainer state not JSON", "truncated optimizer"])
def test_damaged_newest_checkpoint_is_skipped_for_the_newest_good_one(trained, tmp_path, how, caplog):
    import shutil

    from miva.training.train import train

    clips, reference = trained
    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("adapter", "train_log.jsonl"))
    _damage(out, "checkpoint-4", how)
    with caplog.at_level("WARNING"):
        train(small_config(clips, out, resume_from_checkpoint="latest"))
    assert "skipping checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    ours = load_file(str(out / "adapter" / "miva_adapter.safetensors"))
    theirs = load_file(str(reference / "adapter" / "miva_adapter.safetensors"))
    assert all(ours[k].equal(theirs[k]) for k in theirs)  # resumed from checkpoint-2, replayed steps 3 and 4
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [3, 4]


def test_no_good_checkpoint_is_a_one_line_error_naming_them(trained, tmp_path):
    import shutil

    from miva.training.train import MIVATrainer

    clips, reference = trained
    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("adapter"))
    _damage(out, "checkpoint-4", "trainer state not JSON")
    _damage(out, "checkpoint-2", "truncated adapter state")
    with pytest.raises(ValueError) as error:
        MIVATrainer(small_config(clips, out, resume_from_checkpoint="latest")).setup()
    message = str(error.value)
    assert "\n" not in message and "no usable checkpoint" in message
    assert "checkpoint-4 (ValueError" in message and "checkpoint-2 (" in message

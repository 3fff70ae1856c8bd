"""Training checkpoints: folder naming, the adapter-only model state, finding the one to resume, pruning.

A checkpoint is `<output_dir>/checkpoint-<step>/`, written by `accelerator.save_state` into
`checkpoint-<step>.tmp/` and renamed when complete (so a killed run never leaves a half-written checkpoint under
the final name). Our accelerate save/load hooks replace the full-UNet `model.safetensors` with the adapter's own
tensors (`adapter_state.safetensors`, plus `learned_embeds.safetensors` for a learned word): a few MB instead of
the whole 1.3B-parameter UNet, since everything else is frozen and rebuilt from the base model on resume. The tensors
use the one adapter format of `miva_adapter.safetensors` (`loaders.adapter_state`), read back by its strict loader;
checkpoints written with the older keys (`<layer>.processor.adapters.<name>.<part>`) still resume.
`trainer_state.json` records the global step and what was trained.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write_text, remove_folder, replace_folder, sweep_leftovers
from ..guards import read_json_object
from ..loaders.adapter_state import adapter_state_dict, load_adapter_state

__all__ = [
    "ADAPTER_STATE_FILE",
    "CheckpointMixin",
    "EMBEDS_FILE",
    "LOG_FILE",
    "TRAINER_STATE_FILE",
    "adapter_state_dict",
    "checkpoint_adapter_state",
    "find_checkpoint",
    "checkpoint_problem",
    "list_checkpoints",
    "load_adapter_state",
    "prune_checkpoints",
    "read_trainer_state",
]

ADAPTER_STATE_FILE = "adapter_state.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"  # one JSON line per optimiser step, in output_dir
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as `(step, path)`, oldest first (`*.tmp` folders are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(output_dir: str | os.PathLike, resume: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder `resume_from_checkpoint` names: None, `"latest"` (None when there is none yet), a folder
    path, or a bare `checkpoint-<step>` name inside `output_dir`."""
    if resume is None:
        return None
    if str(resume) == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir() and (Path(output_dir) / path).is_dir():
        path = Path(output_dir) / path
    if not (path / TRAINER_STATE_FILE).is_file():
        available = [p.name for _, p in list_checkpoints(output_dir)]
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(resume)!r} is not a checkpoint folder (no "
            f"{TRAINER_STATE_FILE}); checkpoints in {output_dir}: {available or 'none'}"
        )
    return path


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    """The checkpoint's `trainer_state.json`; `ValueError` naming the file when it is not a JSON object with a
    non-negative integer `global_step`."""
    path = Path(checkpoint) / TRAINER_STATE_FILE
    state = read_json_object(path, TRAINER_STATE_FILE)
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: global_step={step!r} is not a non-negative int")
    return state


def checkpoint_problem(checkpoint: str | os.PathLike, learned_word: bool = False) -> str | None:
    """Why the checkpoint folder cannot be resumed from (unreadable trainer state or adapter tensors), or None.

    Only our own files are read here; accelerate's (optimizer, RNG states) are checked by loading them."""
    from safetensors import safe_open

    try:
        read_trainer_state(checkpoint)
        for name in (ADAPTER_STATE_FILE, EMBEDS_FILE) if learned_word else (ADAPTER_STATE_FILE,):
            with safe_open(str(Path(checkpoint) / name), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
    except Exception as e:  # any reason is a reason not to resume from it
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def write_trainer_state(folder: str | os.PathLike, state: dict) -> None:
    with open(Path(folder) / TRAINER_STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (None keeps all); returns the deleted folders."""
    if keep is None:
        return []
    sweep_leftovers(output_dir, "checkpoint-")  # folders an interrupted prune had renamed aside
    checkpoints = list_checkpoints(output_dir)
    doomed = [path for _, path in checkpoints[: max(len(checkpoints) - keep, 0)]]
    for path in doomed:
        remove_folder(path)  # renamed aside first: never half-deleted under its checkpoint name
    return doomed


def commit_folder(tmp: Path, final: Path) -> None:
    """Rename a completely written `tmp` folder to `final` (replacing an older `final`, renamed aside first)."""
    replace_folder(tmp, final)


# errno -> what a full or limited disk is called in the message; the markers are how libraries that do not keep the
# errno word it (safetensors' Rust I/O errors, C's strerror).
_DISK_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large",
                  errno.EDQUOT: "disk quota exceeded"}
_DISK_MARKERS = {"No space left on device": errno.ENOSPC, "StorageFull": errno.ENOSPC, "File too large": errno.EFBIG,
                 "FileTooLarge": errno.EFBIG, "Disk quota exceeded": errno.EDQUOT}
_ALMOST_FULL = 1 << 20  # bytes: a write that failed with less free than this failed for want of space


def disk_full_errno(error: BaseException, folder: str | os.PathLike) -> int | None:
    """`errno.ENOSPC` / `EFBIG` / `EDQUOT` when `error` (or an exception it was raised from) says the disk is full or
    the file too large, or when `folder`'s disk is (almost) full after a write failed without saying why (torch's
    writer reports only "unexpected pos"); None otherwise."""
    seen = error
    while seen is not None:
        if getattr(seen, "errno", None) in _DISK_PROBLEMS:
            return seen.errno
        for marker, code in _DISK_MARKERS.items():
            if marker in str(seen):
                return code
        seen = seen.__cause__ or seen.__context__
    try:
        return errno.ENOSPC if shutil.disk_usage(folder).free < _ALMOST_FULL else None
    except OSError:
        return None


class CheckpointDiskError(OSError):
    """A checkpoint that did not fit on the disk (`errno` ENOSPC, EFBIG or EDQUOT; `filename`: the checkpoint). Its
    message is the sentence alone, without Python's `[Errno N]` prefix."""

    def __str__(self) -> str:
        return self.strerror


def disk_full_error(code: int, final: Path, tmp: Path, error: BaseException) -> OSError:
    """The one-line error for a checkpoint that did not fit on the disk: the problem, the path, what to do."""
    detail = (str(error).splitlines() or [type(error).__name__])[0][:200]
    message = (
        f"{_DISK_PROBLEMS[code]}: writing checkpoint {final} failed ({type(error).__name__}: {detail}); the partial "
        f"{tmp.name} was removed. Free space on that disk or set output_dir to another one, then rerun with "
        "--resume latest"
    )
    return CheckpointDiskError(code, message, str(final))


def checkpoint_adapter_state(unet: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Adapter `adapter_name`'s tensors in the one adapter format (`loaders.adapter_state`, the keys of
    `miva_adapter.safetensors`), as contiguous CPU copies for `adapter_state.safetensors`."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in adapter_state_dict(unet, adapter_name).items()}


class CheckpointMixin:
    """The `MIVATrainer` side of checkpoints: accelerate save/load hooks, atomic `save_checkpoint`, and resuming.

    Uses the trainer's `accelerator`, `config`, `unet` (unwrapped), `learned_token`, `output_dir`, `global_step` and
    `logger`.
    """

    def _save_model_hook(self, models, weights, output_dir) -> None:
        """Replace accelerate's full-model weights by the adapter's tensors (and the learned word)."""
        from safetensors.torch import save_file

        weights.clear()
        if self.accelerator.is_main_process:
            save_file(
                checkpoint_adapter_state(self.unet, self.config.adapter_name),
                str(Path(output_dir) / ADAPTER_STATE_FILE),
            )
            if self.learned_token:
                save_file(self.learned_token.state_dict(), str(Path(output_dir) / EMBEDS_FILE))

    def _load_model_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        models.clear()
        load_adapter_state(self.unet, self.config.adapter_name, load_file(str(Path(input_dir) / ADAPTER_STATE_FILE)))
        if self.learned_token:
            self.learned_token.load_state_dict(load_file(str(Path(input_dir) / EMBEDS_FILE)))

    def _trainer_state(self, epoch: int) -> dict:
        from miva import __version__

        config = self.config
        return dict(
            global_step=self.global_step,
            epoch=epoch,
            adapter_name=config.adapter_name,
            adapter_config=config.adapter.to_dict(),
            trainable_modules=config.parts,
            word_to_learn=config.word_to_learn,
            seed=config.seed,
            num_processes=self.accelerator.num_processes,
            train_batch_size=config.train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            miva_version=__version__,
        )

    def save_checkpoint(self, epoch: int) -> Path:
        """`accelerator.save_state` into `checkpoint-<step>.tmp`, then rename; keep the newest K. A full disk (or a
        file over the size limit) ends in one `OSError` naming the problem and the checkpoint."""
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.global_step}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if acc.is_main_process:
                write_trainer_state(tmp, self._trainer_state(epoch))
        except Exception as e:  # a full disk surfaces as OSError, safetensors' or torch's own errors
            code = disk_full_errno(e, tmp if tmp.exists() else self.output_dir)
            if code is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the space it took is what the user needs back
            raise disk_full_error(code, final, tmp, e) from e
        if acc.is_main_process:
            commit_folder(tmp, final)
            for path in prune_checkpoints(self.output_dir, self.config.checkpoints_total_limit):
                self.logger.info(f"removed old checkpoint {path}")
            self.logger.info(f"saved checkpoint {final}")
        acc.wait_for_everyone()
        return final

    def _resume(self) -> None:
        config, acc = self.config, self.accelerator
        resume = config.resume_from_checkpoint
        path = find_checkpoint(self.output_dir, resume)
        if path is None:
            if resume is not None:  # a warning: the user asked to resume, and it does not happen
                self.logger.warning(
                    f"resume_from_checkpoint={str(resume)!r}: no checkpoint in {self.output_dir} yet; starting "
                    "fresh from step 0"
                )
            if acc.is_main_process:
                self._truncate_log(0)  # lines of an earlier attempt that died before its first checkpoint
            return
        if str(resume) == "latest":
            candidates = [p for _, p in reversed(list_checkpoints(self.output_dir))]
        else:
            candidates = [path]
        skipped = []
        for path in candidates:
            problem = checkpoint_problem(path, learned_word=bool(self.learned_token))
            if problem is None:
                state = read_trainer_state(path)
                self._check_resumable(path, state)
                try:
                    acc.load_state(str(path))
                except Exception as e:  # a damaged accelerate file (optimizer, RNG state): try an older one
                    problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if problem is None:
                break
            skipped.append(f"{path.name} ({problem})")
            self.logger.warning(f"skipping checkpoint {path}: it is damaged ({problem})")
        else:
            raise ValueError(
                f"resume_from_checkpoint={str(resume)!r}: no usable checkpoint in {self.output_dir}: "
                + "; ".join(skipped)
                + ". Delete the damaged folders to start over"
            )
        self.global_step = int(state["global_step"])
        self.logger.info(f"resumed from {path} at step {self.global_step}")
        if acc.is_main_process:
            self._truncate_log(self.global_step)

    def _check_resumable(self, path: Path, state: dict) -> None:
        """Refuse a checkpoint of another adapter; warn when the data order will differ."""
        config, acc = self.config, self.accelerator
        for key, mine in (
            ("adapter_name", config.adapter_name),
            ("adapter_config", config.adapter.to_dict()),
            ("trainable_modules", config.parts),
            ("word_to_learn", config.word_to_learn),
        ):
            if state.get(key) != mine:
                raise ValueError(
                    f"cannot resume from {path}: it was trained with {key}={state.get(key)!r}, this "
                    f"run has {key}={mine!r}"
                )
        for key in ("seed", "num_processes", "train_batch_size", "gradient_accumulation_steps"):
            mine = getattr(config, key, None) if key != "num_processes" else acc.num_processes
            if state.get(key) != mine:
                self.logger.warning(
                    f"resuming {path} with {key}={mine} (it had {state.get(key)}): the data order "
                    "will differ from an uninterrupted run"
                )

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past `step` (they belong to the interrupted run that this one replays), and a last line
        that a kill cut short; rewritten atomically."""
        path = self.output_dir / LOG_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

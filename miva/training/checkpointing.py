"""Training checkpoints: folder naming, the adapter-only model state, finding the one to resume, pruning.

A checkpoint is `<output_dir>/checkpoint-<step>/`, written by `accelerator.save_state` into
`checkpoint-<step>.tmp/` and renamed when complete (so a killed run never leaves a half-written checkpoint under
the final name). Our accelerate save/load hooks replace the full-UNet `model.safetensors` with the adapter's own
tensors (`adapter_state.safetensors`, plus `learned_embeds.safetensors` for a learned word): a few MB instead of
the whole 1.3B-parameter UNet, since everything else is frozen and rebuilt from the base model on resume.
`trainer_state.json` records the global step and what was trained.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ADAPTER_STATE_FILE",
    "EMBEDS_FILE",
    "TRAINER_STATE_FILE",
    "adapter_state_dict",
    "find_checkpoint",
    "list_checkpoints",
    "load_adapter_state",
    "prune_checkpoints",
    "read_trainer_state",
]

ADAPTER_STATE_FILE = "adapter_state.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
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
        raise FileNotFoundError(f"resume_from_checkpoint={str(resume)!r} is not a checkpoint folder (no "
                                f"{TRAINER_STATE_FILE}); checkpoints in {output_dir}: {available or 'none'}")
    return path


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    with open(Path(checkpoint) / TRAINER_STATE_FILE, encoding="utf-8") as f:
        return json.load(f)


def write_trainer_state(folder: str | os.PathLike, state: dict) -> None:
    with open(Path(folder) / TRAINER_STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (None keeps all); returns the deleted folders."""
    if keep is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [path for _, path in checkpoints[: max(len(checkpoints) - keep, 0)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def commit_folder(tmp: Path, final: Path) -> None:
    """Rename a completely written `tmp` folder to `final` (replacing an older `final`)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def adapter_state_dict(unet: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Every tensor of adapter `adapter_name` in `unet.state_dict()` (trained or not), as contiguous CPU copies."""
    marker = f".adapters.{adapter_name}."
    return {k: v.detach().cpu().contiguous().clone() for k, v in unet.state_dict().items() if marker in k}


def load_adapter_state(unet: nn.Module, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `adapter_state_dict`) into adapter `adapter_name` of `unet`, in place, exactly.

    Raises `ValueError` naming the first missing or unexpected key, or a key whose shape differs (both shapes).
    """
    current = adapter_state_dict_refs(unet, adapter_name)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        key = (missing or unexpected)[0]
        kind = "missing from the checkpoint" if missing else "in the checkpoint but not in the adapter"
        raise ValueError(f"adapter {adapter_name!r}: key {key!r} is {kind} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected); was the checkpoint trained with another adapter config?")
    with torch.no_grad():
        for key, target in current.items():
            if target.shape != state[key].shape:
                raise ValueError(f"adapter {adapter_name!r}: key {key!r} has shape {tuple(state[key].shape)} in the "
                                 f"checkpoint but {tuple(target.shape)} in the adapter")
            target.copy_(state[key].to(device=target.device, dtype=target.dtype))


def adapter_state_dict_refs(unet: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Like `adapter_state_dict`, but the live tensors (no copy)."""
    marker = f".adapters.{adapter_name}."
    return {k: v for k, v in unet.state_dict(keep_vars=True).items() if marker in k}

"""The Train tab's input checks: the uploaded clips (one line per bad clip), and messages in the form's words.

The trainer's own checks name config keys (`learning_rate`, `sample_frame_rate`) and pass on ffmpeg's whole report
for a clip it cannot decode; a user of the page sees the form's labels and one line per clip instead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .registry import AppInputError

MIN_CLIPS, MAX_CLIPS = 3, 30
SIDECAR_SUFFIX = ".txt"

# Config keys the trainer's and the data's messages name -> the Train form's labels (what the user sees).
FORM_LABELS = {
    "learning_rate": "Learning rate",
    "max_train_steps": "Steps",
    "num_frames": "Frames per sample",
    "sample_frame_rate": "Frame stride",
    "motion_lora_rank": "LoRA rank",
    "ca_lora_rank": "LoRA rank",
    "random_flip": "Random flip",
    "prompt": "Prompt of the clips",
}


def in_form_words(message: str, labels: dict[str, str] = FORM_LABELS) -> str:
    """`message` with the config keys it names (`learning_rate=0.0`) written as the form's labels (`Learning rate =
    0.0`), so a user of the page reads the names on the page."""
    for key, label in labels.items():
        message = re.sub(rf"\b{key}=", f"{label} = ", message)
        message = re.sub(rf"\b{key}\b", label, message)
    return message


def clips_word(count: int) -> str:
    return f"{count} clip" if count == 1 else f"{count} clips"


def clip_problem(path: Path, frames_needed: int) -> str | None:
    """One line on what is wrong with clip `path` for the form's frames and stride (None: nothing). ffmpeg's own
    report (its version and build configuration included) is cut to its last line, the reason."""
    from ..training.data import count_frames

    try:
        frames = count_frames(path)
    except (OSError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip(" .()")]
        reason = lines[-1].rsplit(": ", 1)[-1].strip(" .()") if lines else type(e).__name__
        return f"{path.name}: not a readable video ({reason})"
    if frames < frames_needed:
        return (
            f"{path.name}: {frames} frames, too short for {frames_needed} (Frames per sample and Frame stride: "
            "lower them or use a longer clip)"
        )
    return None


def stage_clips(request, job_dir: Path, height: int, width: int):
    """Copy the clips of `request` (a `miva.app.training.TrainRequest`) into `<job_dir>/clips` (or use its folder),
    check each one (one line per bad clip), then build the trainer's own `ClipDataset` (prompts); returns
    `(video_root, number of clips)`. Raises `AppInputError`."""
    from ..training.data import VIDEO_EXTENSIONS, ClipDataset, _find_clips

    if request.clips:
        root = job_dir / "clips"
        root.mkdir(parents=True, exist_ok=True)
        for upload in request.clips:
            path = Path(upload)
            suffix = path.suffix.lower()
            if suffix not in VIDEO_EXTENSIONS and suffix != SIDECAR_SUFFIX:
                raise AppInputError(
                    f"{path.name} is not a clip: expected a video with an extension in {VIDEO_EXTENSIONS} "
                    f"(or a {SIDECAR_SUFFIX} prompt beside one)"
                )
            shutil.copyfile(path, root / path.name)
    elif request.folder.strip():
        root = Path(os.path.expanduser(request.folder.strip()))
        if not root.is_dir():
            raise AppInputError(f"clip folder {str(root)!r} is not a folder on this machine")
    else:
        raise AppInputError(f"no clips: upload {MIN_CLIPS}-{MAX_CLIPS} clips or give a folder of clips")
    try:
        found = _find_clips(root, VIDEO_EXTENSIONS)  # the trainer's own search: the clips it would read
    except (OSError, ValueError) as e:
        raise AppInputError(str(e)) from e
    needed = (int(request.num_frames) - 1) * int(request.stride) + 1
    problems = [line for clip in found if (line := clip_problem(clip, needed))]
    if problems:
        raise AppInputError("\n".join(problems))
    try:
        dataset = ClipDataset(
            root,
            prompt=request.prompt.strip(),  # may be empty: train on the empty prompt
            num_frames=int(request.num_frames),
            sample_frame_rate=int(request.stride),
            width=width,
            height=height,
            cache_clips=False,
        )
    except (OSError, ValueError) as e:  # what the checks above leave to the dataset: the message names the clips
        raise AppInputError(in_form_words(str(e))) from e
    count = len(dataset.clips)
    if not MIN_CLIPS <= count <= MAX_CLIPS:
        raise AppInputError(
            f"{clips_word(count)}: a MIVA adapter is trained on {MIN_CLIPS}-{MAX_CLIPS} clips of one motion"
        )
    return root, count

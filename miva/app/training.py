"""The Train tab's work: check the clips, run the project's trainer (`miva.training.train`) in a background thread,
and report its loss and progress while it runs.

The trainer writes one JSON line per optimiser step to `<job>/train_log.jsonl`; the page polls `TrainingJob.losses`
(the same file, so the plot shows exactly what the trainer logged). A finished adapter is registered in the app's
`AdapterRegistry` (the Animate tab lists it) and zipped for download. One training run at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bases import Base, fresh_pipeline
from .registry import AdapterRegistry, AppInputError

logger = logging.getLogger("miva.app")

MIN_CLIPS, MAX_CLIPS = 3, 30
# The adapter parts the form offers -> the MIVAAdapterConfig switches that add them (all others off).
PART_SWITCHES = {
    "i2v": {"use_i2v": True},
    "motion_lora": {"use_motion_lora": True},
    "ca_lora": {"use_ca_lora": True},
    "implicit": {"ca_mode": "implicit"},
    "motion_embed": {"use_motion_embed": True},
}
ALL_OFF = {"use_i2v": False, "use_motion_lora": False, "use_ca_lora": False, "use_motion_embed": False}
SIDECAR_SUFFIX = ".txt"


@dataclass
class TrainRequest:
    """The Train form. `clips`: uploaded files (clips, and optional `<clip>.txt` prompt sidecars); `folder`: a
    folder of clips on this machine (used when nothing is uploaded). `prompt` may be empty (a sidecar overrides it)."""

    name: str
    clips: list[str] = field(default_factory=list)
    folder: str = ""
    prompt: str = ""
    parts: list[str] = field(default_factory=lambda: ["i2v", "motion_lora"])
    steps: int = 100
    learning_rate: float = 1e-4
    num_frames: int = 8
    stride: int = 1
    seed: int = 0


def adapter_config_for(parts: list[str]):
    """The `MIVAAdapterConfig` with exactly `parts` (names from `PART_SWITCHES`)."""
    from ..attention_processors import MIVAAdapterConfig

    if not parts:
        raise AppInputError(f"adapter parts: pick at least one of {list(PART_SWITCHES)}")
    unknown = [p for p in parts if p not in PART_SWITCHES]
    if unknown:
        raise AppInputError(f"adapter part {unknown[0]!r} is not one of {list(PART_SWITCHES)}")
    switches = dict(ALL_OFF)
    for part in parts:
        switches.update(PART_SWITCHES[part])
    return MIVAAdapterConfig(**switches)


def stage_clips(request: TrainRequest, job_dir: Path, height: int, width: int):
    """Copy the uploaded clips into `<job_dir>/clips` (or use `request.folder`) and check them with the trainer's
    own `ClipDataset` (readable, long enough); returns `(video_root, number of clips)`. Raises `AppInputError`."""
    from ..training.data import VIDEO_EXTENSIONS, ClipDataset

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
        dataset = ClipDataset(
            root,
            prompt=request.prompt.strip(),  # may be empty: train on the empty prompt
            num_frames=int(request.num_frames),
            sample_frame_rate=int(request.stride),
            width=width,
            height=height,
            cache_clips=False,
        )
    except (OSError, ValueError) as e:  # unreadable or too short clips, no prompt: the message names the clips
        raise AppInputError(str(e)) from e
    count = len(dataset.clips)
    if not MIN_CLIPS <= count <= MAX_CLIPS:
        raise AppInputError(f"{count} clips: a MIVA adapter is trained on {MIN_CLIPS}-{MAX_CLIPS} clips of one motion")
    return root, count


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """`folder`'s files in a zip at `zip_path` (written beside, then renamed: never a half-written zip)."""
    partial = zip_path.with_name(zip_path.name + ".partial")
    made = shutil.make_archive(str(partial), "zip", root_dir=folder)
    os.replace(made, zip_path)
    return zip_path


class TrainingJob:
    """One training run in a background thread. `state`: "starting" -> "training" -> "done" | "failed"."""

    def __init__(self, base: Base, registry: AdapterRegistry, job_dir: Path, request: TrainRequest, config):
        self.base, self.registry, self.job_dir, self.request, self.config = base, registry, job_dir, request, config
        self.total_steps = config.max_train_steps
        self.state, self.error = "starting", ""
        self.adapter_path: Path | None = None
        self.zip_path: Path | None = None
        self.registered_name: str | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=f"miva-train-{request.name}", daemon=True)

    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state in ("starting", "training")

    def _run(self) -> None:
        from ..training.train import train

        try:
            pipe = fresh_pipeline(self.base)  # its own copy: the Animate tab's weights are never trained
            components = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
            self.state = "training"
            self.adapter_path = Path(train(self.config, components=components))
            self.zip_path = zip_folder(self.adapter_path, self.job_dir / f"{self.request.name}.zip")
            self.registered_name = self.registry.add(self.request.name, self.adapter_path)
            self.state = "done"
        except Exception as e:  # shown in the page; the server goes on serving
            logger.exception("training %r failed", self.request.name)
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            self.seconds = time.perf_counter() - self.started

    def losses(self) -> list[tuple[int, float]]:
        """`(step, loss)` for every step logged so far."""
        from ..training.checkpointing import LOG_FILE

        path = self.job_dir / LOG_FILE
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:  # the trainer may be writing the last line right now
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append((int(record["step"]), float(record["loss"])))
        return rows

    def summary(self) -> str:
        """One line for the page."""
        rows = self.losses()
        step = rows[-1][0] if rows else 0
        loss = f", loss {rows[-1][1]:.4f}" if rows else ""
        if self.state == "starting":
            return f"**{self.request.name}**: loading the base and checking the clips ..."
        if self.state == "training":
            return f"**{self.request.name}**: step {step}/{self.total_steps}{loss}"
        if self.state == "done":
            return (
                f"**{self.request.name}**: done, {step} steps in {self.seconds:.0f} s{loss}; listed in the Animate tab "
                f"as **{self.registered_name}** ({self.adapter_path})"
            )
        return f"**{self.request.name}**: failed after step {step}: {self.error}"


class TrainingManager:
    """Starts training jobs (one at a time) under `<out_dir>/train/<name>-<k>`."""

    def __init__(self, base: Base, registry: AdapterRegistry, out_dir: Path):
        self.base, self.registry, self.out_dir = base, registry, Path(out_dir)
        self.job: TrainingJob | None = None
        self._lock = threading.Lock()

    def start(self, request: TrainRequest) -> TrainingJob:
        """Check `request` (name, parts, clips) and start its job; raises `AppInputError` for bad input."""
        from ..training.train_config import TrainConfig

        name = request.name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise AppInputError(f"adapter name {request.name!r}: use letters, digits, '_' or '-' (e.g. waterfall)")
        request = dataclasses.replace(request, name=name)
        adapter = adapter_config_for(list(request.parts))
        with self._lock:
            if self.job is not None and self.job.running:
                raise AppInputError(f"training {self.job.request.name!r} is still running; wait for it to finish")
            k = 1
            while (self.out_dir / "train" / f"{name}-{k}").exists():
                k += 1
            job_dir = self.out_dir / "train" / f"{name}-{k}"
            job_dir.mkdir(parents=True)
            d = self.base.defaults
            try:
                root, _ = stage_clips(request, job_dir, d.height, d.width)
                config = TrainConfig(
                    output_dir=str(job_dir),
                    tiny=self.base.train_model_path is None,
                    pretrained_model_path=self.base.train_model_path,
                    motion_module_path=self.base.train_motion_path,
                    adapter=adapter,
                    adapter_name=name,
                    video_root=str(root),
                    prompt=request.prompt.strip(),  # may be empty: train on the empty prompt
                    num_frames=int(request.num_frames),
                    sample_frame_rate=int(request.stride),
                    width=d.width,
                    height=d.height,
                    learning_rate=float(request.learning_rate),
                    max_train_steps=int(request.steps),
                    mixed_precision="fp16" if _cuda() else "no",
                    gradient_checkpointing=_cuda(),
                    checkpointing_steps=None,
                    validation_steps=int(request.steps),  # one sample GIF at the end, for the model card
                    validation={"num_inference_steps": d.num_inference_steps, "guidance_scale": d.guidance_scale},
                    report_to="none",
                    seed=int(request.seed),
                )
            except (AppInputError, ValueError) as e:  # TrainConfig names the field and the valid values
                shutil.rmtree(job_dir, ignore_errors=True)  # a rejected request leaves nothing behind
                raise AppInputError(str(e)) from e
            self.job = TrainingJob(self.base, self.registry, job_dir, request, config).start()
            return self.job


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- page callbacks
def request_from_form(form, values: dict) -> TrainRequest:
    """The `TrainRequest` that the Train form's `values` (`{component: value}`) describe."""
    uploads = values[form.clips] or []
    return TrainRequest(
        name=values[form.name] or "",
        clips=[str(u) for u in ([uploads] if isinstance(uploads, str) else uploads)],
        folder=values[form.folder] or "",
        prompt=values[form.prompt] or "",
        parts=list(values[form.parts] or []),
        steps=int(values[form.steps]),
        learning_rate=float(values[form.learning_rate]),
        num_frames=int(values[form.num_frames]),
        stride=int(values[form.stride]),
    )


def loss_table(job: TrainingJob | None):
    """`pandas.DataFrame` with columns `step`, `loss` (what the live plot shows)."""
    import pandas as pd

    rows = job.losses() if job is not None else []
    # Explicit dtypes: an empty frame would be `object` and the plot would treat the axes as categories.
    return pd.DataFrame(
        {
            "step": pd.Series([s for s, _ in rows], dtype="int64"),
            "loss": pd.Series([v for _, v in rows], dtype="float64"),
        }
    )


def on_train(manager: TrainingManager, form, values: dict) -> dict:
    """Train button: start the job and the page's poll timer; bad input becomes a message in the page."""
    import gradio as gr

    try:
        job = manager.start(request_from_form(form, values))
    except AppInputError as e:
        raise gr.Error(str(e), duration=None) from e
    return {form.status: job.summary(), form.timer: gr.Timer(active=True), form.plot: loss_table(job), form.zip: None}


def on_poll(manager: TrainingManager, form, adapter_pickers: list, registry: AdapterRegistry) -> dict:
    """Timer tick while training: the loss plot and status; at the end the zip, the Animate tab's refreshed adapter
    lists, and the timer stopped."""
    import gradio as gr

    job = manager.job
    update = {form.plot: loss_table(job), form.status: job.summary() if job else ""}
    if job is None or not job.running:
        update[form.timer] = gr.Timer(active=False)
        update[form.zip] = str(job.zip_path) if job is not None and job.zip_path else None
        for picker in adapter_pickers:
            update[picker] = gr.Dropdown(choices=registry.choices())
    return update

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
from .clips import in_form_words, stage_clips
from .parts import PART_SWITCHES, adapter_config_for  # noqa: F401  (public names: the form's parts)
from .registry import AdapterRegistry, AppInputError, page_html

logger = logging.getLogger("miva.app")


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
    rank: int | None = None  # None: the base's recipe (or MIVAAdapterConfig's default)
    random_flip: bool | None = None  # None: the base's recipe


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """`folder`'s files in a zip at `zip_path` (written beside, then renamed: never a half-written zip)."""
    partial = zip_path.with_name(zip_path.name + ".partial")
    made = shutil.make_archive(str(partial), "zip", root_dir=folder)
    os.replace(made, zip_path)
    return zip_path


class TrainingStopped(Exception):
    """Raised inside the trainer's loop after the step in which the page's Stop was pressed."""


class TrainingJob:
    """One training run in a background thread. `state`: "starting" -> "training" -> "done" | "failed" |
    "stopped" (`stop()`: after the current step; nothing is saved)."""

    def __init__(self, base: Base, registry: AdapterRegistry, job_dir: Path, request: TrainRequest, config):
        self.base, self.registry, self.job_dir, self.request, self.config = base, registry, job_dir, request, config
        self.total_steps = config.max_train_steps
        self.state, self.error = "starting", ""
        self.adapter_path: Path | None = None
        self.zip_path: Path | None = None
        self.registered_name: str | None = None
        self.started = time.perf_counter()
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"miva-train-{request.name}", daemon=True)

    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        """Ask the run to stop after its current step."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self.state in ("starting", "training")

    def _trainer(self, components: dict):
        """The project's trainer, checking after every logged step whether Stop was pressed."""
        from ..training.train import MIVATrainer

        stop = self._stop

        class StoppableTrainer(MIVATrainer):
            def _log_step(self, *args, **kwargs):
                super()._log_step(*args, **kwargs)
                if stop.is_set():
                    raise TrainingStopped

        return StoppableTrainer(self.config, components=components)

    def _run(self) -> None:
        try:
            pipe = fresh_pipeline(self.base)  # its own copy: the Animate tab's weights are never trained
            components = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
            self.state = "training"
            if self._stop.is_set():
                raise TrainingStopped
            self.adapter_path = Path(self._trainer(components).train())
            self.zip_path = zip_folder(self.adapter_path, self.job_dir / f"{self.request.name}.zip")
            self.registered_name = self.registry.add(self.request.name, self.adapter_path)
            self.state = "done"
        except TrainingStopped:
            logger.info("training %r stopped from the page", self.request.name)
            self.state = "stopped"
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
        if self.state == "stopped":
            return f"**{self.request.name}**: stopped at step {step}/{self.total_steps}{loss}; no adapter saved"
        return f"**{self.request.name}**: failed after step {step}: {self.error}"


class TrainingManager:
    """Starts training jobs (one at a time) under `<out_dir>/train/<name>-<k>`."""

    def __init__(self, base: Base, registry: AdapterRegistry, out_dir: Path):
        self.base, self.registry, self.out_dir = base, registry, Path(out_dir)
        self.job: TrainingJob | None = None
        self._lock = threading.Lock()

    def start(self, request: TrainRequest) -> TrainingJob:
        """Check `request` (name, parts, clips) and start its job; raises `AppInputError` for bad input."""
        name = request.name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise AppInputError(f"Adapter name {request.name!r}: use letters, digits, '_' or '-' (e.g. waterfall)")
        request = dataclasses.replace(request, name=name)
        with self._lock:
            if self.job is not None and self.job.running:
                raise AppInputError(f"training {self.job.request.name!r} is still running; wait or press Stop")
            k = 1
            while (self.out_dir / "train" / f"{name}-{k}").exists():
                k += 1
            job_dir = self.out_dir / "train" / f"{name}-{k}"
            job_dir.mkdir(parents=True)
            try:
                config = self.config_for(request, job_dir)
            except (AppInputError, ValueError) as e:  # TrainConfig names the field and the valid values
                shutil.rmtree(job_dir, ignore_errors=True)  # a rejected request leaves nothing behind
                raise AppInputError(in_form_words(str(e))) from e
            self.job = TrainingJob(self.base, self.registry, job_dir, request, config).start()
            return self.job

    def stop(self) -> str:
        """Stop the running job after its current step; returns a line for the page."""
        job = self.job
        if job is None or not job.running:
            return "no training is running"
        job.stop()
        return f"**{job.request.name}**: stopping after the current step ..."

    def config_for(self, request: TrainRequest, job_dir: Path):
        """The `TrainConfig` of `request`: the base's recipe (its adapter settings, batch size, ...) with the form's
        values over it; stages the clips under `job_dir`."""
        from ..training.train_config import TrainConfig

        d, t = self.base.defaults, self.base.train_defaults
        rank = t.rank if request.rank is None else int(request.rank)
        if rank is not None and rank < 1:
            raise AppInputError(f"LoRA rank = {rank}: must be an integer >= 1")
        recipe = dict(t.recipe(rank) if t.recipe else {})
        adapter = adapter_config_for(list(request.parts), recipe.pop("adapter", None), rank)
        root, _ = stage_clips(request, job_dir, d.height, d.width)
        form = dict(
            output_dir=str(job_dir),
            tiny=self.base.train_model_path is None,
            pretrained_model_path=self.base.train_model_path,
            motion_module_path=self.base.train_motion_path,
            adapter=adapter,
            adapter_name=request.name,
            video_root=str(root),
            prompt=request.prompt.strip(),  # may be empty: train on the empty prompt
            num_frames=int(request.num_frames),
            sample_frame_rate=int(request.stride),
            width=d.width,
            height=d.height,
            random_flip=t.random_flip if request.random_flip is None else bool(request.random_flip),
            learning_rate=float(request.learning_rate),
            max_train_steps=int(request.steps),
            mixed_precision="fp16" if _cuda() else "no",
            gradient_checkpointing=_cuda(),
            checkpointing_steps=None,
            validation_steps=int(request.steps),  # one sample GIF at the end, for the model card
            validation={
                "num_inference_steps": d.num_inference_steps,
                "guidance_scale": d.guidance_scale,
                "pipeline_kwargs": dict(d.sampling),  # sampled as the Animate tab samples this base
            },
            report_to="none",
            seed=int(request.seed),
        )
        return TrainConfig(**{**recipe, **form})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- page callbacks
def form_number(value, label: str, kind=float):
    """A number box's value as `kind`; an empty box is an `AppInputError` naming the box's `label`."""
    if value is None or value == "":
        raise AppInputError(f"{label}: enter a number")
    return kind(value)


def request_from_form(form, values: dict) -> TrainRequest:
    """The `TrainRequest` that the Train form's `values` (`{component: value}`) describe."""
    uploads = values[form.clips] or []
    return TrainRequest(
        name=values[form.name] or "",
        clips=[str(u) for u in ([uploads] if isinstance(uploads, str) else uploads)],
        folder=values[form.folder] or "",
        prompt=values[form.prompt] or "",
        parts=list(values[form.parts] or []),
        steps=form_number(values[form.steps], "Steps", int),
        learning_rate=form_number(values[form.learning_rate], "Learning rate"),
        num_frames=int(values[form.num_frames]),
        stride=int(values[form.stride]),
        rank=form_number(values[form.rank], "LoRA rank", int),
        random_flip=bool(values[form.random_flip]),
        seed=form_number(values[form.seed], "Seed", int),
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
    except AppInputError as e:  # the user's to fix: a message in the page, no traceback in the server's log
        raise gr.Error(page_html(str(e)), duration=None, print_exception=False) from e
    return {form.status: job.summary(), form.timer: gr.Timer(active=True), form.plot: loss_table(job), form.zip: None}


def on_stop(manager: TrainingManager, form) -> dict:
    """Stop button: the running job stops after its current step (the poll timer reports it)."""
    return {form.status: manager.stop()}


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
            update[picker] = gr.Dropdown(choices=registry.labelled_choices())
    return update

"""The Animate tab's work: turn the form into one `MIVAPipeline` call and write the video (MP4 + GIF) and the
optional cross-attention maps.

`Animator` holds the app's one pipeline. Adapters are loaded into it on first use (by source) and kept, so picking an
adapter again costs nothing; each Generate then activates exactly the picked ones with their weights. A lock makes
Generate calls take turns on the shared pipeline.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bases import Base, fresh_pipeline
from .clips import in_form_words
from .registry import NO_ADAPTER, AdapterRegistry, AppInputError, page_html

logger = logging.getLogger("miva.app")

PARALLEL_MODES = ("residual", "weights")
# `MIVAPipeline.__call__` arguments its messages name -> the Animate form's labels (what the user sees).
FORM_LABELS = {
    "num_frames": "Frames",
    "num_inference_steps": "Steps",
    "guidance_scale": "Guidance",
    "use_adain_norm": "AdaIN normalisation",
    "shared_noise_ratio": "Shared noise ratio",
    "first_frame_cond_type": "First-frame conditioning",
    "use_dct_init": "DCT low-frequency init",
    "dct_cutoff_ratio": "DCT cutoff ratio",
    "dct_cutoff_shape": "DCT cutoff shape",
    "cil_ratio": "CIL ratio",
    "negative_prompt": "Negative prompt",
    "batch_prompt": "its own prompt",
}
SEED_RANGE = 2**31  # a random seed is drawn from [0, SEED_RANGE)
CA_MAP_FRAMES = 3  # frames shown per level in the gallery (first, middle, last): enough to see where words attend


@dataclass(frozen=True)
class BadUpload:
    """What the image input holds when the uploaded file (`name`) is not an image."""

    name: str

    def message(self) -> str:
        return f"Image: {self.name} is not an image file; upload a PNG, JPEG, WebP or GIF picture"


@dataclass
class AdapterPick:
    """One picker row: the picker's value (a registered name, a folder or a Hub id), its weight, its own prompt."""

    choice: str
    weight: float = 1.0
    prompt: str = ""


@dataclass
class AnimateRequest:
    """Everything one Generate needs. `sampling` holds the research options of `MIVAPipeline.__call__`
    (`use_adain_norm`, `shared_noise_ratio`, `first_frame_cond_type`, `use_dct_init`, `dct_cutoff_ratio`,
    `dct_cutoff_shape`, `cil_ratio`)."""

    image: object  # PIL image, or None when nothing was uploaded
    prompt: str = ""
    negative_prompt: str = ""
    adapters: list[AdapterPick] = field(default_factory=list)
    parallel_mode: str = "residual"
    num_frames: int = 8
    height: int = 64
    width: int = 64
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    seed: int = 0
    fps: int = 8
    sampling: dict = field(default_factory=dict)
    ca_maps: bool = False


@dataclass
class AnimateResult:
    mp4: Path
    gif: Path
    frames: object  # (F, H, W, 3) float in [0, 1], what the files encode
    ca_maps: list[tuple[str, str]]  # (png path, caption)
    adapters: list[tuple[str, float]]  # (name in the pipeline, weight), in order
    seconds: float


def check_request(request: AnimateRequest, max_frames: int) -> None:
    """Raise `AppInputError` naming the form's field for what the page can get wrong before the pipeline runs;
    `max_frames`: the most frames the base's motion module makes."""
    if request.image is None:
        raise AppInputError("no image: upload an image (or click an example) before pressing Generate")
    if isinstance(request.image, BadUpload):
        raise AppInputError(request.image.message())
    if request.parallel_mode not in PARALLEL_MODES:
        raise AppInputError(f"Composition {request.parallel_mode!r} is not one of {list(PARALLEL_MODES)}")
    if not 2 <= int(request.num_frames) <= max_frames:
        raise AppInputError(
            f"Frames = {request.num_frames}: this base makes 2 to {max_frames} frames (frame 0 is the image itself)"
        )
    if int(request.num_inference_steps) < 1:
        raise AppInputError(f"Steps = {request.num_inference_steps}: need at least 1")
    picked = [p.choice for p in request.adapters]
    twice = sorted({c for c in picked if picked.count(c) > 1})
    if twice:
        raise AppInputError(f"adapter {twice[0]!r} is picked twice; pick each adapter once and set its weight")


class Animator:
    """The app's pipeline and the adapters loaded into it."""

    def __init__(self, base: Base, registry: AdapterRegistry, out_dir: Path):
        self.base, self.registry, self.out_dir = base, registry, Path(out_dir)
        self.pipe = fresh_pipeline(base)
        self._loaded: dict[str, str] = {}  # str(source) -> adapter name in self.pipe
        self._lock = threading.Lock()
        self._count = 0

    @property
    def max_frames(self) -> int:
        """The most frames the base's motion module makes (its `motion_max_seq_length`)."""
        return (getattr(self.pipe, "unet", None) or self.pipe.transformer).miva_context.max_frames

    def adapter_name(self, choice: str) -> str | None:
        """The pipeline's name for picker value `choice`, loading its source on first use (None: no adapter).
        Errors name the value (a folder that is not an adapter, an unknown Hub id)."""
        from ..loaders.sources import sanitize_name

        source = self.registry.source(choice)
        if source is None:
            return None
        key = str(source)
        if key not in self._loaded:
            taken = set(self._loaded.values())
            name, k = sanitize_name(choice), 2
            while name in taken:
                name, k = f"{sanitize_name(choice)}-{k}", k + 1
            try:
                self.pipe.load_adapters(str(source), adapter_names=[name])
            except (OSError, ValueError) as e:  # FileNotFoundError, Hub errors, shape / key mismatches
                raise AppInputError(f"adapter {choice!r}: {e}") from e
            self._loaded[key] = name
            logger.info("adapter %r: loaded from %s", name, source)
        return self._loaded[key]

    def animate(self, request: AnimateRequest, on_step: Callable[[int, int], None] | None = None) -> AnimateResult:
        """Run one Generate; `on_step(done, total)` after every denoising step. Raises `AppInputError` on bad
        input (the pipeline's own `ValueError`s, which name the argument, included)."""
        import torch

        from ..commands.video_io import save_video
        from ..pipelines.ca_maps import save_ca_maps

        check_request(request, self.max_frames)
        with self._lock:
            start = time.perf_counter()
            picks = [(self.adapter_name(p.choice), p) for p in request.adapters]
            picks = [(name, p) for name, p in picks if name is not None]
            names = [name for name, _ in picks]
            weights = [float(p.weight) for _, p in picks]
            self.pipe.set_adapters(names, weights, parallel_mode=request.parallel_mode)
            own_prompts = [p.prompt.strip() or None for _, p in picks]
            total = int(request.num_inference_steps)

            def step_end(pipe, i, t, tensors):
                if on_step is not None:
                    on_step(i + 1, total)
                return {}

            try:
                out = self.pipe(
                    image=request.image.convert("RGB"),
                    prompt=request.prompt or "",
                    negative_prompt=request.negative_prompt or None,
                    num_frames=int(request.num_frames),
                    height=int(request.height),
                    width=int(request.width),
                    num_inference_steps=total,
                    guidance_scale=float(request.guidance_scale),
                    generator=torch.Generator().manual_seed(int(request.seed)),
                    batch_prompt=own_prompts if any(own_prompts) else None,
                    **({"ca_map_resolutions": "all"} if request.ca_maps else {}),  # a Wan base has none
                    callback_on_step_end=step_end,
                    output_type="np",
                    **request.sampling,
                )
            except ValueError as e:  # the pipeline's input checks name the argument and the valid values
                raise AppInputError(in_form_words(str(e), FORM_LABELS)) from e
            self._count += 1
            name = f"video{self._count:04d}_seed{int(request.seed)}"
            folder = self.out_dir / "videos"
            gif = Path(save_video(out.frames[0], str(folder), name, "gif", request.fps)[0])
            mp4 = Path(save_video(out.frames[0], str(folder), name, "mp4", request.fps)[0])
            maps = []
            if request.ca_maps and out.ca_maps:
                f = int(request.num_frames)
                frames = sorted({0, f // 2, f - 1})[:CA_MAP_FRAMES]
                for path in save_ca_maps(out, folder / f"{name}_ca_maps", token_index=1, frames=frames):
                    frame = int(re.search(r"frame(\d+)", Path(path).stem).group(1))
                    maps.append((path, f"{Path(path).parent.name}, frame {frame}: first word"))
            return AnimateResult(mp4, gif, out.frames[0], maps, list(zip(names, weights)), time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- page callback
def request_from_form(form, values: dict, defaults) -> AnimateRequest:
    """The `AnimateRequest` that the Animate form's `values` (`{component: value}`) describe."""
    picks = [
        AdapterPick(values[row.choice] or "", float(values[row.weight]), values[row.prompt] or "")
        for row in form.adapters
    ]
    seed = values[form.seed]
    if values[form.random_seed]:
        seed = random.randrange(SEED_RANGE)
    elif seed is None or seed == "":
        raise AppInputError("Seed: enter a number, or tick Random seed")
    return AnimateRequest(
        image=values[form.image],
        prompt=values[form.prompt] or "",
        negative_prompt=values[form.negative_prompt] or "",
        adapters=[p for p in picks if p.choice.strip() not in ("", NO_ADAPTER)],
        parallel_mode=values[form.parallel_mode],
        num_frames=int(values[form.num_frames]),
        height=defaults.height,
        width=defaults.width,
        num_inference_steps=int(values[form.steps]),
        guidance_scale=float(values[form.guidance]),
        seed=int(seed),
        sampling={key: values[component] for key, component in form.sampling.items()},
        ca_maps=bool(values[form.ca_maps]),
    )


def on_generate(animator: Animator, form, values: dict, progress) -> dict:
    """Generate button: the video, the MP4 + GIF downloads, the CA-map gallery, a status line and the seed used.
    A run that fails leaves the previous video, downloads and maps in place: its message is a warning in the page and
    the status line (bad input: no traceback in the server's log; a bug: the traceback goes to the terminal)."""
    import gradio as gr

    try:
        request = request_from_form(form, values, animator.base.defaults)
        progress((0, request.num_inference_steps), desc="denoising", unit="steps")
        result = animator.animate(request, on_step=lambda done, total: progress((done, total), desc="denoising"))
    except Exception as e:
        if isinstance(e, AppInputError):  # the user's to fix
            message = str(e)
        else:  # a bug or a resource problem: say so in the page; details go to the terminal
            logger.exception("Generate failed")
            message = f"Generate failed: {type(e).__name__}: {e} (details in the terminal)"
        gr.Warning(page_html(message), duration=None)
        return {form.status: f"**Not generated** (the video shown is the previous one): {message}"}
    used = ", ".join(f"{name} x{weight:g}" for name, weight in result.adapters) or "none (the base alone)"
    status = (
        f"{request.num_frames} frames, {request.width}x{request.height}, {request.num_inference_steps} steps, "
        f"seed {request.seed} in {result.seconds:.1f} s; adapters: {used}"
    )
    logger.info("generated %s: %s", result.mp4, status)
    return {
        form.video: str(result.mp4),
        form.downloads: [str(result.mp4), str(result.gif)],
        form.gallery: result.ca_maps,
        form.status: status,
        form.seed: request.seed,  # the seed used (a random one included), to make the video again
    }

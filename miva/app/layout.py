"""The page: an Animate tab and a Train tab (Gradio Blocks), wired to `animate.on_generate` and
`training.on_train` / `training.on_poll`.

Components are grouped in small form classes (`AnimateForm`, `TrainForm`) so that each callback reads its values by
name (`values[form.prompt]`) instead of by position. Elements a test or a user script needs to find carry an
`elem_id` (`input-image`, `adapter-0`, `generate`, `output-video`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .animate import PARALLEL_MODES, Animator, on_generate
from .registry import NO_ADAPTER, AdapterRegistry
from .training import PART_SWITCHES, TrainingManager, on_poll, on_stop, on_train

ADAPTER_SLOTS = 3  # picker rows in the Animate tab
POLL_SECONDS = 1.0


@dataclass
class AdapterRow:
    choice: object
    weight: object
    prompt: object


@dataclass
class AnimateForm:
    image: object = None
    prompt: object = None
    negative_prompt: object = None
    adapters: list[AdapterRow] = field(default_factory=list)
    parallel_mode: object = None
    num_frames: object = None
    steps: object = None
    guidance: object = None
    seed: object = None
    random_seed: object = None
    sampling: dict = field(default_factory=dict)  # MIVAPipeline argument name -> component
    ca_maps: object = None
    generate: object = None
    video: object = None
    downloads: object = None
    status: object = None
    gallery: object = None

    def inputs(self) -> set:
        rows = [c for row in self.adapters for c in (row.choice, row.weight, row.prompt)]
        plain = [self.image, self.prompt, self.negative_prompt, self.parallel_mode, self.num_frames, self.steps]
        return {*plain, self.guidance, self.seed, self.random_seed, self.ca_maps, *rows, *self.sampling.values()}


@dataclass
class TrainForm:
    clips: object = None
    folder: object = None
    prompt: object = None
    name: object = None
    parts: object = None
    steps: object = None
    learning_rate: object = None
    num_frames: object = None
    stride: object = None
    rank: object = None
    random_flip: object = None
    seed: object = None
    train: object = None
    stop: object = None
    plot: object = None
    status: object = None
    zip: object = None
    timer: object = None

    def inputs(self) -> set:
        plain = {self.clips, self.folder, self.prompt, self.name, self.parts, self.steps, self.learning_rate}
        return plain | {self.num_frames, self.stride, self.rank, self.random_flip, self.seed}


def example_paths(base, out_dir: Path) -> list[str]:
    """The base's example images as PNGs under `<out_dir>/examples` (Gradio examples are files)."""
    folder = out_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(base.example_images()):
        path = folder / f"example_{k}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _research_options(gr, base_sampling: dict, names=None) -> dict:
    """The research sampling options of `MIVAPipeline.__call__`, starting from the pipeline's defaults with the
    base's own sampling (`SamplingDefaults.sampling`) over them; only `names` when given (what the base's pipeline
    takes: `SamplingDefaults.research_options`)."""
    value = {
        "use_adain_norm": "off",
        "shared_noise_ratio": 0.0,
        "first_frame_cond_type": "lamp",
        "use_dct_init": False,
        "dct_cutoff_ratio": 0.23,
        "dct_cutoff_shape": "rect",
        "cil_ratio": 1.0,
        **base_sampling,
    }
    options = {
        "use_adain_norm": gr.Radio(
            ["off", "on", "last"], value=value["use_adain_norm"], label="AdaIN normalisation (LAMP)", elem_id="adain"
        ),
        "shared_noise_ratio": gr.Slider(
            0.0, 1.0, value=value["shared_noise_ratio"], step=0.05, label="Shared noise ratio"
        ),
        "first_frame_cond_type": gr.Radio(
            ["lamp", "cinemo"],
            value=value["first_frame_cond_type"],
            label="First-frame conditioning",
            elem_id="first-frame-cond",
        ),
        "use_dct_init": gr.Checkbox(value["use_dct_init"], label="DCT low-frequency init (cinemo only)", elem_id="dct"),
        "dct_cutoff_ratio": gr.Slider(0.0, 1.0, value=value["dct_cutoff_ratio"], step=0.01, label="DCT cutoff ratio"),
        "dct_cutoff_shape": gr.Radio(["rect", "tri"], value=value["dct_cutoff_shape"], label="DCT cutoff shape"),
        "cil_ratio": gr.Slider(0.5, 1.0, value=value["cil_ratio"], step=0.01, label="CIL ratio (timestep scaling)"),
    }
    return options if names is None else {k: v for k, v in options.items() if k in names}


def _animate_tab(gr, base, registry: AdapterRegistry, out_dir: Path, max_frames: int) -> AnimateForm:
    from .upload import checked_image

    d = base.defaults
    form = AnimateForm()
    shipped = list(base.shipped_adapters)
    with gr.Row():
        with gr.Column(scale=1):
            form.image = checked_image(
                label="Image", type="pil", sources=["upload", "clipboard"], height=240, elem_id="input-image"
            )
            form.prompt = gr.Textbox(d.prompt, label="Prompt", elem_id="prompt")
            examples = example_paths(base, out_dir)
            prompts = base.example_prompts()
            if examples and prompts:  # each example with its own prompt (what the base was trained with)
                gr.Examples([[p, t] for p, t in zip(examples, prompts)], [form.image, form.prompt], label="Examples")
            elif examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[form.image], label="Example images")
            form.negative_prompt = gr.Textbox("", label="Negative prompt (with guidance > 1)")
            with gr.Group():
                for k in range(ADAPTER_SLOTS):
                    with gr.Row(equal_height=True):
                        choice = gr.Dropdown(
                            registry.labelled_choices(),
                            value=shipped[0] if k == 0 and shipped else NO_ADAPTER,
                            allow_custom_value=True,
                            label=f"Adapter {k + 1}",
                            info="listed, or type a folder / Hub id" if k == 0 else None,
                            scale=3,
                            elem_id=f"adapter-{k}",
                        )
                        weight = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="weight", scale=2)
                        prompt = gr.Textbox("", label="its own prompt (optional)", scale=3)
                    form.adapters.append(AdapterRow(choice, weight, prompt))
            form.parallel_mode = gr.Radio(list(PARALLEL_MODES), value=PARALLEL_MODES[0], label="Composition")
            with gr.Row():
                form.num_frames = gr.Slider(
                    d.min_frames,
                    max_frames,
                    value=min(d.num_frames, max_frames),
                    step=d.frame_step,
                    label="Frames",
                    elem_id="frames",
                    info=f"at most {max_frames}: what this base's motion module makes",
                )
                form.steps = gr.Slider(1, 100, value=d.num_inference_steps, step=1, label="Steps", elem_id="steps")
            with gr.Row():
                form.guidance = gr.Slider(1.0, 15.0, value=d.guidance_scale, step=0.5, label="Guidance")
                form.seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
                form.random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
            with gr.Accordion("Research sampling options (this base's defaults)", open=False):
                form.sampling = _research_options(gr, d.sampling, d.research_options)
            form.ca_maps = gr.Checkbox(False, label="Show cross-attention maps")
            form.generate = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=1):
            form.video = gr.Video(
                label="Video", autoplay=True, loop=True, interactive=False, height=320, elem_id="output-video"
            )
            form.status = gr.Markdown(elem_id="animate-status")
            form.downloads = gr.File(label="Download (MP4, GIF)", file_count="multiple", elem_id="downloads")
            form.gallery = gr.Gallery(label="Cross-attention maps", columns=6, height=240, elem_id="ca-maps")
    return form


def _train_tab(gr, base, max_frames: int) -> TrainForm:
    from ..attention_processors import MIVAAdapterConfig

    d, t = base.defaults, base.train_defaults
    form = TrainForm()
    with gr.Row():
        with gr.Column(scale=1):
            form.clips = gr.File(
                label="Clips: 3-30 videos of one motion (mp4, webm, gif; a <clip>.txt beside one is its prompt)",
                file_count="multiple",
                elem_id="train-clips",
            )
            form.folder = gr.Textbox("", label="... or a folder of clips on this machine", elem_id="train-folder")
            form.prompt = gr.Textbox(d.prompt, label="Prompt of the clips", elem_id="train-prompt")
            form.name = gr.Textbox("my_motion", label="Adapter name", elem_id="train-name")
            form.parts = gr.CheckboxGroup(
                list(PART_SWITCHES), value=list(t.parts), label="Adapter parts", elem_id="train-parts"
            )
            with gr.Row():
                form.steps = gr.Number(t.steps, label="Steps", precision=0, minimum=1, elem_id="train-steps")
                form.learning_rate = gr.Number(t.learning_rate, label="Learning rate", minimum=0, elem_id="train-lr")
                rank = MIVAAdapterConfig().motion_lora_rank if t.rank is None else t.rank
                form.rank = gr.Number(rank, label="LoRA rank", precision=0, minimum=1, elem_id="train-rank")
            with gr.Row():
                form.num_frames = gr.Slider(
                    t.min_frames,
                    max_frames,
                    value=min(t.num_frames, max_frames),
                    step=t.frame_step,
                    label="Frames per sample",
                    elem_id="train-frames",
                )
                form.stride = gr.Slider(1, 8, value=t.stride, step=1, label="Frame stride")
            with gr.Row():
                form.random_flip = gr.Checkbox(
                    t.random_flip,
                    label="Random flip",
                    elem_id="train-flip",
                    info="mirror clips left-right at random: off for motions with a direction (it turns right into left)",
                )
                form.seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="train-seed")
            with gr.Row():
                form.train = gr.Button("Train", variant="primary", elem_id="train")
                form.stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        with gr.Column(scale=1):
            form.plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260, elem_id="loss-plot")
            form.status = gr.Markdown(elem_id="train-status")
            form.zip = gr.File(label="Trained adapter (zip of the native folder)", elem_id="train-zip")
    form.timer = gr.Timer(POLL_SECONDS, active=False)
    return form


@dataclass
class MivaApp:
    """The page (`blocks`, a `gradio.Blocks`) and what it drives."""

    blocks: object
    animator: Animator
    trainer: TrainingManager
    registry: AdapterRegistry
    out_dir: Path
    animate: AnimateForm | None = None  # the forms' components (their starting values: the base's defaults)
    train: TrainForm | None = None


def build_app(base, registry: AdapterRegistry, out_dir: Path, animator: Animator | None = None) -> MivaApp:
    """The page for `base`; outputs go under `out_dir`. `animator` (the loaded pipeline) defaults to a new one."""
    import gradio as gr

    from .upload import check_upload

    out_dir = Path(out_dir)
    animator = animator or Animator(base, registry, out_dir)
    trainer = TrainingManager(base, registry, out_dir)
    for name, note in base.adapter_notes.items():  # e.g. a shipped adapter that does not make its motion yet
        registry.set_note(name, note)
    max_frames = animator.max_frames
    d = base.defaults
    with gr.Blocks(title="miva", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## miva: animate an image with MIVA motion adapters\nBase: **{base.label}**, "
            f"{d.width}x{d.height}. Pick adapters and weights, press Generate; or train a new adapter on a few clips."
        )
        with gr.Tabs():
            with gr.Tab("Animate", id="animate"):
                animate = _animate_tab(gr, base, registry, out_dir, max_frames)
            with gr.Tab("Train", id="train"):
                train = _train_tab(gr, base, max_frames)

        def generate(values, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for a progress bar)
            return on_generate(animator, animate, values, progress)

        animate.generate.click(
            generate,
            inputs=animate.inputs(),
            outputs=[animate.video, animate.downloads, animate.gallery, animate.status, animate.seed],
        )
        # An upload that is not an image: its one-line message at once, not at Generate.
        animate.image.upload(check_upload, inputs=[animate.image], outputs=None)
        train.train.click(
            lambda values: on_train(trainer, train, values),
            inputs=train.inputs(),
            outputs=[train.status, train.timer, train.plot, train.zip],
        )
        train.stop.click(lambda: on_stop(trainer, train), outputs=[train.status])
        pickers = [row.choice for row in animate.adapters]
        train.timer.tick(
            lambda: on_poll(trainer, train, pickers, registry),
            outputs=[train.plot, train.status, train.zip, train.timer, *pickers],
        )
        # A page opened (or reloaded) later lists the adapters trained since, and follows a run still going on.
        demo.load(
            lambda: (
                [gr.Timer(active=trainer.job is not None and trainer.job.running)]
                + [gr.Dropdown(choices=registry.labelled_choices()) for _ in pickers]
            ),
            outputs=[train.timer, *pickers],
        )
    return MivaApp(demo, animator, trainer, registry, out_dir, animate, train)

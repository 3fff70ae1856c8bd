"""`miva infer`: animate the images of a research-layout config with its MIVA adapters.

    miva infer --config examples/configs/infer_single.yaml [--set validation_data.video_length=8] [--format mp4]
    miva infer --config examples/configs/infer_single.yaml --tiny        # dry run on the offline tiny models
    accelerate launch -m miva.cli infer --config X.yaml                  # images split across the processes

Builds `MIVAPipeline` from `pretrained_model_path` + `motion_module_path`, loads the adapters
(`unet_checkpoint_path` or the split `adapter_*_path` checkpoints, `adapter_weights`, `parallel_mode`), then makes one
video per input image (`validation_data.image_path` + `prompt_path`), named after the image, in `output_dir`; with
`CA_Map_visualization_resolution` also the cross-attention maps (`<output_dir>/<image>_CAMap/<level>/...png`). The
resolved config is written to `<output_dir>/config.yaml`. Each video's noise comes from a generator seeded with
`global_seed`, so a video does not depend on how the images are split across processes. `--mask NAME=PATH` and
`--schedule NAME=v1,v2,...` set `validation_data.adapter_masks` / `adapter_schedules` (`miva.config.regions`): where
and in which frames each adapter acts.
"""

from __future__ import annotations

import argparse
import os

from .common import add_config_arguments, log

HELP = "animate the images of a config with its MIVA adapters (videos named after the images in output_dir)"
CONFIG_COPY = "config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("gif", "mp4", "png", "images", "eval"),
        default=None,
        help="output format (default: validation_data.format, else gif)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (videos and denoising steps)")
    parser.add_argument(
        "--mask",
        dest="masks",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="where adapter NAME acts: a mask image (white: acts, black: not), for every input image; sets "
        "validation_data.adapter_masks.NAME; repeatable",
    )
    parser.add_argument(
        "--schedule",
        dest="schedules",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="adapter NAME's weight in each frame (video_length numbers); sets "
        "validation_data.adapter_schedules.NAME; repeatable",
    )


def run_infer(config, tiny: bool = False, fmt: str | None = None, quiet: bool = False) -> list[str]:
    """Animate every input of `config` (this process's share under accelerate); returns the paths written here.
    Unless `quiet`, the main process shows a progress bar over the videos and diffusers' bar over the steps."""
    import torch
    import yaml
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from ..pipelines.ca_maps import save_ca_maps
    from .backbone_run import call_kwargs_for, denoiser
    from .common import build_pipeline, device_and_dtype, load_config_adapters, load_image, load_learned_words
    from .regions import config_region_kwargs
    from .video_io import hist_match_frames, save_mask_videos, save_video

    # Several processes without CUDA (torchrun / `accelerate launch` on CPUs): gloo on the CPU.
    state = PartialState(cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    device, dtype = device_and_dtype(state)
    v = config.validation_data
    items = config.inputs(must_exist=not tiny)
    names = [item.name for item in items]
    regions = [config_region_kwargs(config, item, names) for item in items]  # every mask checked before any video
    show = not quiet and state.is_main_process
    pipe = build_pipeline(config, tiny=tiny, device=device, dtype=dtype, progress=show)
    load_config_adapters(pipe, config, tiny=tiny)
    load_learned_words(pipe, config)
    kwargs = call_kwargs_for(pipe, config, config.pipeline_kwargs())
    use_ip = getattr(denoiser(pipe), "encoder_hid_proj", None) is not None
    fmt = fmt or v.format
    if state.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, CONFIG_COPY), "w", encoding="utf-8") as f:
            yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    written: list[str] = []
    # A `with` bar: it is closed (its line ended) even when a video fails, so the error line stands alone.
    with state.split_between_processes(list(enumerate(items))) as mine, tqdm(
        total=len(mine), desc="videos", unit="video", disable=not show
    ) as bar:
        for index, item in mine:
            image = load_image(item, tiny, v.width, v.height, index)
            out = pipe(
                image=image,
                prompt=item.prompt,
                generator=torch.Generator().manual_seed(config.global_seed),
                output_type="np",
                **({"ip_adapter_image": image} if use_ip else {}),
                **kwargs,
                **regions[index],
            )
            frames = out.frames[0]
            if v.hist_match:
                frames = hist_match_frames(frames)
            paths = save_video(frames, config.output_dir, item.name, fmt, v.fps)
            if getattr(out, "masks", None):  # mask-branch adapters: their predicted mask videos
                paths += save_mask_videos(out.masks, config.output_dir, item.name, fmt, v.fps)
            if getattr(out, "ca_maps", None):
                paths += save_ca_maps(out, os.path.join(config.output_dir, f"{item.name}_CAMap"))
            log(
                f"[process {state.process_index}] {item.name} ({item.prompt!r}): wrote {paths[0]}"
                + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
            )
            written += paths
            bar.update(1)
    state.wait_for_everyone()
    return written


def run(args: argparse.Namespace) -> int:
    from .common import load_args_config

    run_infer(load_args_config(args), tiny=args.tiny, fmt=args.format, quiet=args.quiet)
    return 0

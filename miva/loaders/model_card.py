"""The `README.md` model card of a MIVA adapter (built with `huggingface_hub.ModelCard` / `ModelCardData`)."""

from __future__ import annotations

import os
import re

from ..attention_processors.adapter_config import MIVAAdapterConfig
from ..attention_processors.parts import component_lines, component_tags
from ..base_registry import TINY_RECORDED, known_base

__all__ = ["BASE_TAGS", "component_tags", "is_hub_id", "miva_model_card"]

BASE_TAGS = ["miva", "animatediff", "image-to-video", "diffusers"]
TINY_MODELS = TINY_RECORDED  # what `--tiny` runs record as base model and motion adapter (a registry alias)
# The adapter is a derivative of the SD1.5 base it was trained on, which is under this license.
DEFAULT_LICENSE = "creativeml-openrail-m"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def is_hub_id(value: str | None) -> bool:
    """A Hub repo id (`name` or `org/name`), not a local path nor a base miva knows by name (`miva-world`, `tiny`,
    `miva.tiny`: `miva.base_registry`)."""
    return (bool(value) and known_base(value) is None and not os.path.isabs(value) and not os.path.exists(value)
            and bool(_REPO_ID.match(value)))


def _components_text(config: MIVAAdapterConfig) -> list[str]:
    rows = component_lines(config)
    if config.word_to_learn:
        rows.append(f"- learned token `{config.word_to_learn}` (its text embedding ships in the adapter file)")
    return rows or ["- (no trainable parts)"]


def _recorded(value: str | None) -> str:
    if known_base(value) is not None:
        return f"`{value}`: {known_base(value).description}"
    if known_base(value.split("/")[0] if value else None) is not None:
        return f"`{value}`: part of {known_base(value.split('/')[0]).description}"
    return f"`{value}`" if value else "not recorded"


def _usage(config: MIVAAdapterConfig, base_model: str | None, adapter_name: str, where: str) -> list[str]:
    """The usage snippet: a known base's own (`miva.base_registry`), else an SD1.5 + AnimateDiff one."""
    prompt = config.prompt or "a description of the picture"
    known = known_base(base_model)
    if known is not None:
        return known.usage.format(where=where, name=adapter_name, prompt=prompt).splitlines()
    base_line = base_model if is_hub_id(base_model) else "<an SD1.5 checkpoint>"
    motion_line = config.motion_adapter if is_hub_id(config.motion_adapter) else "<an AnimateDiff motion adapter>"
    return [
        "import torch",
        "from diffusers import MotionAdapter",
        "from diffusers.utils import export_to_gif, load_image",
        "from miva import MIVAPipeline",
        "",
        f'motion_adapter = MotionAdapter.from_pretrained("{motion_line}", dtype=torch.float16)',
        f'pipe = MIVAPipeline.from_pretrained("{base_line}", motion_adapter=motion_adapter,',
        '                                     dtype=torch.float16).to("cuda")',
        f'pipe.load_adapters("{where}", adapter_names="{adapter_name}")',
        f'video = pipe(image=load_image("input.png"), prompt="{prompt}", num_frames=16,',
        '             generator=torch.Generator("cuda").manual_seed(42)).frames[0]',
        'export_to_gif(video, "output.gif")',
    ]


def miva_model_card(
    config: MIVAAdapterConfig,
    *,
    adapter_name: str,
    repo_id: str | None = None,
    base_model: str | None = None,
    sample: str | None = None,
    extra_tags: list[str] | None = None,
    license: str | None = None,
):
    """A `huggingface_hub.ModelCard` for adapter `adapter_name`.

    YAML metadata: `license`, `library_name: diffusers`, `pipeline_tag: image-to-video`, tags (`miva`,
    `animatediff`, `image-to-video`, ... plus one per component), `base_model` (when it is a Hub id) and
    `motion_adapter` (as recorded). Body: what the adapter contains, what it was trained on, a usage snippet
    (`load_image`, dtype, device, `pipe.load_adapters(...)`), and the sample GIF (`sample`, a path relative to the
    card) when given. `license`: default the known base's (`miva.base_registry`), else `DEFAULT_LICENSE`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from miva import __version__

    base_model = base_model or config.base_model
    known = known_base(base_model)
    license = license or (known.license if known is not None else DEFAULT_LICENSE)
    tags = list(dict.fromkeys([*BASE_TAGS, *component_tags(config), *(extra_tags or [])]))
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-video",
        tags=tags,
        base_model=base_model if is_hub_id(base_model) else None,
        model_name=repo_id.split("/")[-1] if repo_id else adapter_name,
        license=license,
        motion_adapter=config.motion_adapter,
    )
    where = repo_id or f"path/to/{adapter_name}"
    lines = [
        f"# MIVA adapter `{adapter_name}`",
        "",
        "A **miva** image-to-video adapter: a small set of attention-processor weights that makes "
        "the stock diffusers AnimateDiff UNet animate a given picture with one learned motion.",
        "",
        "## Contents",
        "",
        *_components_text(config),
        "",
        "## Trained on",
        "",
        f"- base model: {_recorded(base_model)}",
        f"- motion adapter: {_recorded(config.motion_adapter)}",
        "",
        "## Usage",
        "",
        "```python",
        *_usage(config, base_model, adapter_name, where),
        "```",
        "",
    ]
    if sample:
        lines += ["## Sample", "", f"![sample]({sample})", ""]
    lines += [
        f"Saved with miva {__version__}; the adapter files are `adapter_config.json` and `miva_adapter.safetensors`.",
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)

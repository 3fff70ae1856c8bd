"""Which images a config animates, with which prompts (`validation_data` image_path / prompt_path / prompts).

Rules (docs/research.md#sampling, docs/research.md#inputs):
- `prompt_path` selects images in the folder `image_path`: a list of names (`"cat"` -> `cat.png`, else the first of
  `cat.jpg` / `cat.jpeg` / `cat.webp` that exists; a name with a suffix is taken as is), `"all"` (every image in
  the folder, sorted by name) or `"newlamp"` (`1.png` .. `20.png`). Without `prompt_path`, `image_path` may name a
  single image.
- The prompt of image i: `batch_prompt` when it is one string (it overrides `prompts`, as in the research code);
  else `prompts[i]` (a list, one per image) or `prompts` (one string for all); else, with per-adapter prompts
  (`multi_ca`), the adapters' prompts joined by ", "; else the text of `<image stem>.txt` beside the image; else "".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .fields import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NEWLAMP_IMAGES = tuple(f"{i}.png" for i in range(1, 21))


@dataclass(frozen=True)
class InputItem:
    """One video to make: `name` (the output file stem = the image's stem), the image path and its prompt."""

    name: str
    image: str
    prompt: str


def _named_image(folder: Path, name: str) -> Path:
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return folder / name
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return folder / f"{name}.png"


def _image_paths(v) -> list[Path]:
    if v.image_path is None:
        raise ConfigError("validation_data.image_path: required (a folder of input images, or one image)")
    folder, selection = Path(v.image_path), v.prompt_path
    if selection is None:
        if folder.is_dir():
            raise ConfigError(
                f"validation_data.prompt_path: required because image_path {str(folder)!r} is a folder; "
                "give a list of image names, 'all' or 'newlamp'"
            )
        return [folder]
    if selection == "all":
        if not folder.is_dir():
            raise ConfigError(
                f"validation_data.image_path: {str(folder)!r} is not a folder (prompt_path: all lists the images in it)"
            )
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ConfigError(f"validation_data.image_path: {str(folder)!r} has no {list(IMAGE_SUFFIXES)} images")
        return images
    if selection == "newlamp":
        return [folder / name for name in NEWLAMP_IMAGES]
    return [_named_image(folder, name) for name in selection]


def resolve_inputs(validation_data, must_exist: bool = True) -> list[InputItem]:
    """The `InputItem`s of a `ValidationData` section (see the module docstring for the rules).

    `must_exist`: raise `ConfigError` naming `prompt_path` for a missing image (`miva infer --tiny` passes False and
    draws missing images with `miva.tiny.make_test_image`).
    """
    v = validation_data
    paths = _image_paths(v)
    if must_exist:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(
                f"validation_data.prompt_path: image {str(missing[0])!r} not found "
                f"({len(missing)} of {len(paths)} missing)"
            )
    if isinstance(v.prompts, list) and len(v.prompts) != len(paths):
        raise ConfigError(
            f"validation_data.prompts: {len(v.prompts)} prompts for {len(paths)} images; give one "
            "prompt per image (or one string for all)"
        )
    items = []
    for i, path in enumerate(paths):
        if isinstance(v.batch_prompt, str):
            prompt = v.batch_prompt
        elif v.prompts is not None:
            prompt = v.prompts[i] if isinstance(v.prompts, list) else v.prompts
        elif v.multi_ca and isinstance(v.batch_prompt, list):
            prompt = ", ".join(v.batch_prompt)
        elif path.with_suffix(".txt").is_file():
            prompt = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        else:
            prompt = ""
        items.append(InputItem(name=path.stem, image=str(path), prompt=prompt))
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ConfigError(
            f"validation_data.prompt_path: two images are named {duplicate!r}; output files are named "
            "after the images, so names must be distinct"
        )
    return items

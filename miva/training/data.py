"""Few-shot clip data: read clips, sample F frames at a stride, resize / crop / flip, normalise to [-1, 1].

A MIVA adapter is trained on ~10 clips of one motion. ``ClipDataset`` reads a folder of clips (videos, GIFs or
sub-folders of image frames) and returns, per item, ``F`` frames at stride ``sample_frame_rate`` from a random start,
resized (aspect kept) and centre-cropped to ``(height, width)``, optionally flipped left-right as a whole clip.

Differences from the research ``LAMPDataset`` (docs/research.md#training), on purpose:

- the random start is drawn from every valid start, ``[0, len - 1 - (F - 1) * rate]`` inclusive (the research range
  ``[0, len - F * rate - 1]`` leaves the last ``rate`` starts unused);
- frames are resized keeping the aspect ratio and centre-cropped (decord's fixed ``(512, 320)`` read stretches);
- clips that are too short fail when the dataset is built, listing every offending file, instead of mid-training;
- per-item randomness is a pure function of ``(seed, epoch, index)``, so a resumed run sees the same samples.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "ClipDataset",
    "collate_clips",
    "read_clip",
    "count_frames",
    "natural_sort_key",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_RESIZE_CHUNK = 16  # frames resized at once, to bound the float32 working memory for long clips


def natural_sort_key(path: str | Path) -> list:
    """Sort key that orders embedded numbers by value: ``frame_2.png`` before ``frame_10.png``."""
    parts = re.split(r"(\d+)", Path(path).name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted((p for p in files if not p.name.startswith(".")), key=natural_sort_key)


def _to_rgb_uint8(frames: np.ndarray, path: Path) -> np.ndarray:
    """``(F, H, W)`` / ``(F, H, W, 1|2|3|4)`` of uint8 / uint16 / bool -> ``(F, H, W, 3)`` uint8 (alpha dropped)."""
    if frames.dtype == np.uint16:
        frames = (frames >> 8).astype(np.uint8)
    elif frames.dtype == np.bool_:
        frames = frames.astype(np.uint8) * 255
    elif frames.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel dtype {frames.dtype} (expected 8- or 16-bit images)")
    if frames.ndim == 3:  # grayscale
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{path}: unsupported frame shape {frames.shape[1:]}")
    channels = frames.shape[-1]
    if channels in (1, 2):  # gray, gray + alpha
        frames = np.repeat(frames[..., :1], 3, axis=-1)
    elif channels == 4:
        frames = frames[..., :3]
    return np.ascontiguousarray(frames)


def _read_frame_folder(folder: Path) -> np.ndarray:
    import imageio.v3 as iio

    files = _frame_files(folder)
    if not files:
        raise ValueError(f"{folder}: frame folder has no image files with an extension in {IMAGE_EXTENSIONS}")
    frames = []
    for f in files:
        try:
            image = iio.imread(f)
        except Exception as e:
            raise ValueError(f"{f}: could not read frame ({e})") from e
        frame = _to_rgb_uint8(image[None], f)[0]
        if frames and frame.shape != frames[0].shape:
            raise ValueError(f"{f}: frame size {frame.shape[:2]} differs from {files[0].name}'s {frames[0].shape[:2]}")
        frames.append(frame)
    return np.stack(frames)


def _read_gif(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    # mode="RGB" makes Pillow composite every frame (palette, disposal, transparency) into full RGB.
    return iio.imread(path, index=None, plugin="pillow", mode="RGB")


def _read_video(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    finally:
        reader.close()
    if not frames:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(frames)


def read_clip(path: str | Path) -> np.ndarray:
    """Decode a clip into ``(F, H, W, 3)`` uint8 RGB frames.

    ``path`` is a video (``.mp4 .webm .mov .avi .mkv``, decoded by imageio-ffmpeg's bundled ffmpeg), a ``.gif``
    (imageio's Pillow plugin), or a folder of image frames in natural order (``frame_2`` before ``frame_10``).
    Alpha is dropped and grayscale is expanded to RGB.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the clip cannot be decoded, has an unsupported extension, or has no frames (names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"clip not found: {path}")
    if path.is_dir():
        return _read_frame_folder(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported clip extension {suffix!r}; expected one of {VIDEO_EXTENSIONS} "
            "or a folder of image frames"
        )
    try:
        frames = _read_gif(path) if suffix == ".gif" else _read_video(path)
    except Exception as e:
        raise ValueError(f"{path}: could not decode clip ({type(e).__name__}: {e})") from e
    frames = _to_rgb_uint8(np.asarray(frames), path)
    if len(frames) == 0:
        raise ValueError(f"{path}: clip has no frames")
    return frames


def count_frames(path: str | Path) -> int:
    """Number of frames ``read_clip(path)`` returns, without keeping the frames in memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"clip not found: {path}")
    if path.is_dir():
        return len(_frame_files(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".gif":
            from PIL import Image

            with Image.open(path) as im:
                return int(getattr(im, "n_frames", 1))
        if suffix in VIDEO_EXTENSIONS:
            import imageio_ffmpeg

            return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except Exception as e:
        raise ValueError(f"{path}: could not decode clip ({type(e).__name__}: {e})") from e
    raise ValueError(
        f"{path}: unsupported clip extension {suffix!r}; expected one of {VIDEO_EXTENSIONS} or a folder of image frames"
    )


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``(F, 3, h, w)`` frames so they cover ``(height, width)`` with the aspect kept, then centre-crop.

    Uses antialiased bilinear interpolation (area-like when downsampling). Returns float32 ``(F, 3, height, width)``
    in the input's value range; no copy is made when the size already matches.
    """
    h, w = frames.shape[-2:]
    frames = frames.float()
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
        if (new_h, new_w) != (h, w):
            frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        frames = frames[..., top : top + height, left : left + width]
    return frames


def _sidecar(path: Path) -> Path:
    """``clip.mp4`` -> ``clip.txt``; frame folder ``clip/`` -> ``clip.txt`` (next to it)."""
    return path.parent / ((path.name if path.is_dir() else path.stem) + ".txt")


def _find_clips(root: Path, extensions: Sequence[str]) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"clip folder not found: {root}")
    if not root.is_dir():
        return [root]
    clips = []
    for p in root.iterdir():
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.suffix.lower() in extensions) or (p.is_dir() and _frame_files(p)):
            clips.append(p)
    if not clips:
        hint = " (it holds image frames itself: pass [root] to use it as one clip)" if _frame_files(root) else ""
        raise ValueError(
            f"no clips in {root}: expected files with an extension in {tuple(extensions)} "
            f"or sub-folders of image frames{hint}"
        )
    return sorted(clips, key=natural_sort_key)


class ClipDataset(Dataset):
    """Few-shot video clips -> ``{"pixel_values": (F, 3, H, W) float32 in [-1, 1], "prompt": str, "path": str}``.

    Args:
        root: a folder of clips (files with an extension in ``extensions`` and sub-folders of image frames, taken in
            natural order), a single clip, or an explicit list of clip paths.
        prompt: the prompt for every clip. A non-empty sidecar ``<clip name>.txt`` next to a clip (``a.mp4`` ->
            ``a.txt``, frame folder ``a/`` -> ``a.txt``) overrides it for that clip; a clip with neither is an error.
        num_frames: frames per item (F).
        sample_frame_rate: stride between sampled frames; an int, or an inclusive ``(min, max)`` range drawn per
            item. A range is clamped per clip to the strides that fit; only a clip too short for ``min`` is an error.
        width, height: output frame size; frames are resized with the aspect kept and centre-cropped.
        random_flip: flip the whole clip left-right with probability 0.5.
        extensions: clip file extensions searched for in ``root``.
        seed: base seed of the per-item randomness; ``None`` uses ``torch.initial_seed()`` at construction (so
            ``accelerate.utils.set_seed`` before building the dataset makes it reproducible).
        cache_clips: keep the decoded, resized and cropped clips in memory (meant for ~10 few-shot clips). Otherwise
            clips are decoded again for every item.

    Reproducibility: item ``i`` draws its stride, start and flip from a ``torch.Generator`` seeded with a stable
    hash of ``(seed, epoch, i)`` (``numpy.random.SeedSequence``, unlike Python's ``hash`` it is fixed across
    versions and processes). The item is therefore the same in any worker, any process and after a resume; call
    ``set_epoch(epoch)`` at the start of each epoch to get new samples per epoch. With ``persistent_workers=True``
    the workers hold copies of the dataset and do not see ``set_epoch``; use non-persistent workers.

    Raises:
        FileNotFoundError, ValueError: at construction, for a missing root or clip, no clips, an unreadable clip
        (named), and clips without a prompt or too short for ``num_frames`` at the (minimum) stride (all listed).
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        *,
        prompt: str | None = None,
        num_frames: int = 16,
        sample_frame_rate: int | tuple[int, int] = 4,
        width: int = 512,
        height: int = 320,
        random_flip: bool = True,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        seed: int | None = None,
        cache_clips: bool = True,
    ):
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} must be >= 1")
        if width < 1 or height < 1:
            raise ValueError(f"width={width!r} and height={height!r} must be >= 1")
        if isinstance(sample_frame_rate, numbers.Integral):
            rate_range = (int(sample_frame_rate), int(sample_frame_rate))
        else:
            rate_range = tuple(int(r) for r in sample_frame_rate)
            if len(rate_range) != 2:
                raise ValueError(f"sample_frame_rate={sample_frame_rate!r} must be an int or a (min, max) pair")
        if rate_range[0] < 1 or rate_range[0] > rate_range[1]:
            raise ValueError(f"sample_frame_rate={sample_frame_rate!r} must be >= 1, with min <= max for a range")

        self.num_frames = num_frames
        self.sample_frame_rate = sample_frame_rate
        self.rate_range = rate_range
        self.width, self.height = width, height
        self.random_flip = random_flip
        self.extensions = tuple(e.lower() for e in extensions)
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.cache_clips = cache_clips
        self.epoch = 0

        if isinstance(root, (str, Path)):
            self.clips = _find_clips(Path(root), self.extensions)
        else:
            self.clips = [Path(p) for p in root]
            if not self.clips:
                raise ValueError("ClipDataset got an empty list of clips")
            missing = [str(p) for p in self.clips if not p.exists()]
            if missing:
                raise FileNotFoundError(f"clips not found: {', '.join(missing)}")

        self.prompts = [self._prompt_for(p, prompt) for p in self.clips]
        no_prompt = [str(p) for p, pr in zip(self.clips, self.prompts) if pr is None]
        if no_prompt:
            raise ValueError(
                f"no prompt for clip(s) {', '.join(no_prompt)}: pass prompt=... or write a sidecar "
                "<clip name>.txt next to each clip"
            )

        self._cache: dict[int, torch.Tensor] = {}
        self.frame_counts = []
        for i, path in enumerate(self.clips):
            if cache_clips:
                self._cache[i] = self._decode(path)
                self.frame_counts.append(len(self._cache[i]))
            else:
                self.frame_counts.append(count_frames(path))
        short = [f"{p} has {n} frames" for p, n in zip(self.clips, self.frame_counts) if n < self.frames_needed()]
        if short:
            raise ValueError(
                f"clip(s) too short: {'; '.join(short)}, but {self.frames_needed()} are needed "
                f"((num_frames - 1) * sample_frame_rate + 1 with num_frames={num_frames}, "
                f"{self._rate_text()}); lower them or use longer clips"
            )

    def frames_needed(self, rate: int | None = None) -> int:
        """Frames a clip needs for ``num_frames`` at ``rate`` (default: the minimum stride)."""
        return (self.num_frames - 1) * (self.rate_range[0] if rate is None else rate) + 1

    def _rate_text(self) -> str:
        lo, hi = self.rate_range
        return f"sample_frame_rate={lo}" if lo == hi else f"sample_frame_rate={lo}, the minimum of ({lo}, {hi})"

    @staticmethod
    def _prompt_for(path: Path, prompt: str | None) -> str | None:
        sidecar = _sidecar(path)
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip()
            if text:
                return text
        return prompt

    def _decode(self, path: Path) -> torch.Tensor:
        """Read a clip and resize / crop all of it: ``(F, 3, height, width)`` uint8."""
        frames = torch.from_numpy(read_clip(path)).permute(0, 3, 1, 2)
        chunks = [
            resize_center_crop(frames[i : i + _RESIZE_CHUNK], self.height, self.width).round().clamp(0, 255).byte()
            for i in range(0, len(frames), _RESIZE_CHUNK)
        ]
        return torch.cat(chunks)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (items depend only on seed, epoch and index)."""
        self.epoch = int(epoch)

    def item_generator(self, index: int) -> torch.Generator:
        """The ``torch.Generator`` that item ``index`` of the current epoch draws from."""
        state = np.random.SeedSequence([self.seed % 2**64, self.epoch % 2**64, index]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        path = self.clips[index]
        if index in self._cache:
            clip = self._cache[index]  # (F, 3, H, W) uint8, already resized and cropped
        else:
            clip = torch.from_numpy(read_clip(path)).permute(0, 3, 1, 2)
        length = len(clip)
        generator = self.item_generator(index)

        # Stride: clamp the range to the strides this clip can hold.
        lo, hi = self.rate_range
        if self.num_frames > 1:
            hi = min(hi, (length - 1) // (self.num_frames - 1))
        if hi < lo:
            raise ValueError(
                f"{path} has {length} frames, but {self.frames_needed()} are needed "
                f"(num_frames={self.num_frames}, {self._rate_text()})"
            )
        rate = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))
        # Start: every valid start, [0, length - 1 - (F - 1) * rate] inclusive.
        max_start = length - self.frames_needed(rate)
        start = int(torch.randint(max_start + 1, (1,), generator=generator))
        flip = bool(torch.rand(1, generator=generator) < 0.5)  # always drawn, so random_flip leaves the rest alone

        frames = clip[start : start + (self.num_frames - 1) * rate + 1 : rate]
        if index not in self._cache:
            frames = resize_center_crop(frames, self.height, self.width).round().clamp(0, 255)
        frames = frames.float()
        if self.random_flip and flip:
            frames = frames.flip(-1)
        pixel_values = (frames / 127.5 - 1.0).clamp(-1.0, 1.0)
        return {"pixel_values": pixel_values.contiguous(), "prompt": self.prompts[index], "path": str(path)}


def collate_clips(batch: Sequence[dict]) -> dict:
    """Stack items: ``{"pixel_values": (B, F, 3, H, W), "prompts": list[str], "paths": list[str]}``."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "prompts": [item["prompt"] for item in batch],
        "paths": [item["path"] for item in batch],
    }

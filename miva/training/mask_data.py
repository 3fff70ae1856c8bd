"""Training clips with their region's mask videos (the mask branch, docs/mask_branch.md#training-data).

`mask_root` holds one mask clip per training clip, under the clip's own name (its stem), in either layout:

- a mask video file `<mask_root>/<stem>.<ext>` (mp4, gif, ... `data.VIDEO_EXTENSIONS`), or
- a folder of frame images `<mask_root>/<stem>/` (PNG, ...; natural order), e.g. MotionWorld's
  `masks/<region>/clip_000/frame_0000.png` (`miva.world.regions.write_regional_clips`).

Both are read by the clips' own reader (`data.read_clip`), grey = the channel mean, 255 = inside the region. The mask
must have as many frames as its clip. `MaskClipDataset` carries the mask as a fourth channel of the clip through the
parent's resize, crop, frame sampling and flip, so clip and mask get the very same augmentation by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Sampler

from .data import VIDEO_EXTENSIONS, ClipDataset, read_clip, resize_center_crop

__all__ = ["MaskClipDataset", "RepeatedBatchSampler", "find_mask"]

_CHUNK = 32  # frames resized at a time


def find_mask(clip: Path, mask_root: str | Path) -> Path:
    """The mask clip of `clip` in `mask_root` (a video file or a frame folder of the clip's stem); a one-line error
    naming both layouts when there is none or more than one."""
    clip, root = Path(clip), Path(mask_root)
    stem = clip.stem if clip.suffix.lower() in VIDEO_EXTENSIONS else clip.name  # a file, or a frame folder
    found = [p for p in ([root / stem] + [root / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS]) if p.exists()]
    if len(found) != 1:
        problem = "no mask" if not found else f"{len(found)} masks ({', '.join(str(p) for p in found)})"
        raise FileNotFoundError(f"mask_root={str(root)!r}: {problem} for clip {str(clip)!r}; expected exactly one of "
                                f"{str(root / stem)}/ (frame images) or {str(root / stem)}.<video extension>")
    return found[0]


class MaskClipDataset(ClipDataset):
    """`ClipDataset` whose items also hold `"masks"`: `(F, H, W)` float32 in [0, 1], sampled, resized, cropped and
    flipped exactly like `"pixel_values"` (the mask rides along as a fourth channel). Clips are always cached."""

    def __init__(self, root, *, mask_root: str | Path, **kwargs):
        self.mask_root = Path(mask_root)
        if not self.mask_root.is_dir():
            raise FileNotFoundError(f"mask_root={str(mask_root)!r} is not a folder")
        kwargs["cache_clips"] = True  # the parent's uncached path would read the clip without its mask
        super().__init__(root, **kwargs)

    def _decode(self, path: Path) -> torch.Tensor:
        """The clip and its mask, resized and cropped together: `(F, 4, height, width)` uint8."""
        frames = torch.from_numpy(read_clip(path)).permute(0, 3, 1, 2)
        mask_path = find_mask(path, self.mask_root)
        mask = torch.from_numpy(read_clip(mask_path)).float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)
        if len(mask) != len(frames) or mask.shape[-2:] != frames.shape[-2:]:
            raise ValueError(f"{mask_path}: the mask has {len(mask)} frames of {tuple(mask.shape[-2:])}, its clip "
                             f"{path} {len(frames)} of {tuple(frames.shape[-2:])}; they must match")
        both = torch.cat([frames.float(), mask], dim=1)
        chunks = [resize_center_crop(both[i:i + _CHUNK], self.height, self.width).round().clamp(0, 255).byte()
                  for i in range(0, len(both), _CHUNK)]
        return torch.cat(chunks)

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        both = item["pixel_values"]  # (F, 4, H, W) in [-1, 1]
        item["pixel_values"] = both[:, :3].contiguous()
        item["masks"] = ((both[:, 3] + 1) / 2).clamp(0, 1).contiguous()
        return item


class RepeatedBatchSampler(Sampler[list[int]]):
    """Yields each batch of `batch_sampler` `repeats` times in a row (`num_iterations_per_data`: several
    optimiser steps on each loaded batch; the items are the same, their draws depend only on seed, epoch, index)."""

    def __init__(self, batch_sampler, repeats: int):
        self.batch_sampler, self.repeats = batch_sampler, int(repeats)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            for _ in range(self.repeats):
                yield list(batch)

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.repeats

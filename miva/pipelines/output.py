"""`MIVAPipelineOutput`: what `MIVAPipeline.__call__` returns."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

__all__ = ["MIVAPipelineOutput"]


@dataclass
class MIVAPipelineOutput(BaseOutput):
    """Output of `MIVAPipeline`.

    Args:
        frames: like `AnimateDiffPipelineOutput.frames`: a list (per video) of PIL lists, np `(B, F, H, W, 3)`,
            pt `(B, F, 3, H, W)`, or the latents `(B, C, F, h, w)` for `output_type="latent"`.
        ca_maps: with `ca_map_resolutions`, `level -> (B, F, h, w, 77)` mean cross-attention maps (see
            `miva.pipelines.ca_maps`), else None.
        masks: with `mask_branch`, adapter name -> its predicted mask video `(B, F, H, W)` in [0, 1] (float32),
            else None (docs/mask_branch.md).
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]
    ca_maps: dict[str, torch.Tensor] | None = None
    masks: dict[str, torch.Tensor] | None = None

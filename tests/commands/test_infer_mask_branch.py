"""`miva infer` with a mask-branch adapter (docs/mask_branch.md) writes each predicted mask video beside the video:
`<image>_mask_<adapter>`, grey frames equal to the pipeline's `output.masks` (tiny pipeline, fresh adapter)."""

from pathlib import Path

import numpy as np
from PIL import Image

from miva.cli import main

ROOT = Path(__file__).resolve().parents[2]
SINGLE = str(ROOT / "examples" / "configs" / "infer_single.yaml")


def test_infer_writes_the_predicted_mask_video_of_each_mask_branch_adapter(tmp_path, monkeypatch):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(tmp_path / "left.png")
    seen = []
    from miva.pipelines.pipeline_miva import MIVAPipeline

    call = MIVAPipeline.__call__

    def spy(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        seen.append({name: video.clone() for name, video in out.masks.items()})
        return out

    monkeypatch.setattr(MIVAPipeline, "__call__", spy)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["infer", "--config", SINGLE, "--tiny", "--quiet", "--format", "png", "--set", f"output_dir={out}",
                 "--set", "unet_additional_kwargs.use_mask_branch=true",
                 "--set", f"validation_data.mask_path={tmp_path / 'left.png'}",
                 "--set", "validation_data.num_inference_steps=2",
                 "--set", "validation_data.CA_Map_visualization_resolution=null"]) == 0  # maps and masks exclude
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders and all(name.endswith("_mask_waterfall") or f"{name}_mask_waterfall" in folders for name in folders)
    masked = [name for name in folders if name.endswith("_mask_waterfall")]
    assert len(masked) == len(seen) >= 1
    for name, masks in zip(masked, seen):
        assert list(masks) == ["waterfall"]
        predicted = masks["waterfall"][0]  # (F, H, W) in [0, 1]
        frames = sorted((out / name).glob("*.png"), key=lambda p: int(p.stem))
        written = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in frames])
        assert written.shape == (*predicted.shape, 3)
        assert np.allclose(written, predicted.numpy()[..., None], atol=1 / 255 + 1e-6)
        assert np.array_equal(written[..., 0], written[..., 2])  # grey

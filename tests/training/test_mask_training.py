"""The mask branch's training (docs/mask_branch.md#training): Dice against hand-computed values, the ground-truth
probability schedule, clips and masks through the same augmentation in both mask layouts, repeated batches, the
mask step's loss (frame 0 excluded, gradients into the mask part) and a tiny training run logging the Dice score."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler

from miva.attention_processors import MIVAAdapterConfig, add_miva_adapter, miva_call, set_miva_adapters
from miva.attention_processors.mask_guidance import MaskGuidance
from miva.tiny import tiny_components, tiny_unet_motion
from miva.training.mask_data import MaskClipDataset, RepeatedBatchSampler, find_mask
from miva.training.mask_training import dice_score, ground_truth_probability, mask_step_loss, soft_dice_loss
from miva.training.train import LOG_FILE, train
from miva.training.train_config import TrainConfig

FRAMES, SIZE = 10, 64


def _frames(shift: int) -> list[np.ndarray]:
    """A red block moving right on black: red in {0, 255}, so every format stores it exactly."""
    out = []
    for f in range(FRAMES):
        frame = np.zeros((SIZE, SIZE + 16, 3), np.uint8)  # wider than tall: the resize crops
        frame[10:40, shift + 3 * f : shift + 3 * f + 20, 0] = 255
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two clips, one per mask layout: a frame folder with a mask folder, a GIF with a mask GIF. Each mask is its
    clip's red channel."""
    root = tmp_path_factory.mktemp("mask_data")
    clips, masks = root / "clips", root / "masks"
    (clips / "a").mkdir(parents=True)
    (masks / "a").mkdir(parents=True)
    for i, frame in enumerate(_frames(0)):
        Image.fromarray(frame).save(clips / "a" / f"frame_{i:04d}.png")
        Image.fromarray(frame[..., 0]).save(masks / "a" / f"frame_{i:04d}.png")
    b = _frames(20)
    Image.fromarray(b[0]).save(clips / "b.gif", save_all=True, append_images=[Image.fromarray(x) for x in b[1:]])
    grey = [Image.fromarray(x[..., 0]) for x in b]
    grey[0].save(masks / "b.gif", save_all=True, append_images=grey[1:])
    for name in ("a", "b"):
        (clips / f"{name}.txt").write_text("a red block moving")
    return clips, masks


def test_dice_against_hand_computed_values():
    predicted = torch.tensor([[1.0, 0.9, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    # video 0: P = {0, 1}, T = {0, 2}: 2 * 1 / (2 + 2); video 1: both empty: 1; video 2: disjoint: 0
    assert torch.allclose(dice_score(predicted, target), torch.tensor([0.5, 1.0, 0.0]))
    # soft: video 0 of [[0.5, 0.5]] vs [[1, 0]]: 2 * 0.5 / (1 + 1) = 0.5, so the loss is 0.5
    assert abs(soft_dice_loss(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])).item() - 0.5) < 1e-5
    soft = torch.tensor([[0.3, 0.8]], requires_grad=True)
    soft_dice_loss(soft, torch.tensor([[0.0, 1.0]])).backward()
    assert soft.grad[0, 0] > 0 > soft.grad[0, 1]  # pushes the wrong pixel down, the right one up


def test_ground_truth_probability_schedule():
    assert ground_truth_probability(0.3, 50, 100) == 0.3
    assert ground_truth_probability("cosine", 0, 100) == 1.0
    assert abs(ground_truth_probability("cosine", 50, 100) - 0.5) < 1e-12
    assert abs(ground_truth_probability("cosine", 100, 100)) < 1e-12
    assert abs(ground_truth_probability("cosine", 25, 100) - (1 + 2 ** -0.5) / 2) < 1e-12


def test_masks_get_the_clips_augmentation_in_both_layouts(data):
    clips, masks = data
    dataset = MaskClipDataset(clips, mask_root=masks, prompt=None, num_frames=4, sample_frame_rate=(1, 3),
                              width=SIZE, height=SIZE, random_flip=True, seed=0)
    assert [Path(p).name for p in dataset.clips] == ["a", "b.gif"]
    flips = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["pixel_values"].shape == (4, 3, SIZE, SIZE) and item["masks"].shape == (4, SIZE, SIZE)
            assert torch.equal(item["masks"], (item["pixel_values"][:, 0] + 1) / 2)  # the same crop, frames, flip
            column = (item["masks"][0].sum(0) * torch.arange(SIZE)).sum() / item["masks"][0].sum()
            flips.add(bool(column > SIZE / 2))  # the block stays in the left half unless the clip is flipped
    assert flips == {True, False}


def test_find_mask_errors(data, tmp_path):
    clips, masks = data
    assert find_mask(clips / "a", masks) == masks / "a"
    assert find_mask(clips / "b.gif", masks) == masks / "b.gif"
    with pytest.raises(FileNotFoundError, match=r"^mask_root='.*': no mask for clip '.*c.gif'; expected exactly one "
                                                 r"of .*c/ \(frame images\) or .*c.<video extension>$"):
        find_mask(clips / "c.gif", masks)


def test_repeated_batches():
    sampler = RepeatedBatchSampler(BatchSampler(range(3), 2, drop_last=False), 2)
    assert list(sampler) == [[0, 1], [0, 1], [2], [2]] and len(sampler) == 4


class _FakeUNet(torch.nn.Module):
    """Predicts zeros, or `frame0` on frame 0 only; records the batch of each call."""

    def __init__(self, frame0=0.0):
        super().__init__()
        self.frame0, self.calls = frame0, []

    def forward(self, sample, t, encoder_hidden_states):
        self.calls.append(sample.shape[0])
        out = torch.zeros_like(sample)
        out[:, :, 0] = self.frame0
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("ground_truth", [True, False])
def test_mask_loss_excludes_frame0(ground_truth):
    parts = tiny_components(seed=0)
    vae, scheduler = parts["vae"], parts["scheduler"]
    g = torch.Generator().manual_seed(0)
    latents, masks = torch.randn(2, 4, 4, 8, 8, generator=g), (torch.rand(2, 4, 64, 64, generator=g) > 0.5).float()
    losses = []
    for frame0 in (0.0, 1e3):
        unet = _FakeUNet(frame0)
        guidance = MaskGuidance(("m",), 2, 4)
        loss, logs = mask_step_loss(unet, vae, guidance, latents=latents, masks=masks,
                                    prompt_embeds=torch.zeros(2, 77, 32), noise_scheduler=scheduler,
                                    generator=torch.Generator().manual_seed(1), use_ground_truth=ground_truth)
        losses.append(loss.item())
        assert unet.calls == ([4] if ground_truth else [2, 4])  # the stream alone first when it predicts the mask
        assert 0 <= logs["dice"] <= 1
    assert losses[0] == losses[1]
    # Zero prediction: each stream's MSE is mean(noise^2) over frames 1..: about 1 each, 2 in all.
    assert 1.6 < losses[0] < 2.4


def test_mask_step_trains_the_mask_part():
    unet = tiny_unet_motion(seed=0)
    add_miva_adapter(unet, "m", MIVAAdapterConfig(use_mask_branch=True, use_motion_lora=False))
    set_miva_adapters(unet, ["m"])
    parts = tiny_components(seed=0)
    g = torch.Generator().manual_seed(0)
    latents, masks = torch.randn(1, 4, 4, 8, 8, generator=g), (torch.rand(1, 4, 64, 64, generator=g) > 0.5).float()
    guidance = MaskGuidance(("m",), 1, 4)
    with miva_call(unet, mask_guidance=guidance):
        loss, _ = mask_step_loss(unet, parts["vae"], guidance, latents=latents, masks=masks,
                                 prompt_embeds=torch.randn(1, 77, 32, generator=g), noise_scheduler=parts["scheduler"],
                                 generator=torch.Generator().manual_seed(1), use_ground_truth=False, dice_weight=0.5)
        loss.backward()
    grads = {n: p.grad for n, p in unet.named_parameters() if "mask_to" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert torch.isfinite(loss)


def test_tiny_training_run_logs_dice(data, tmp_path):
    clips, masks = data
    config = TrainConfig(output_dir=str(tmp_path / "run"), tiny=True, video_root=str(clips), mask_root=str(masks),
                         prompt="a red block", num_frames=4, sample_frame_rate=1, width=SIZE, height=SIZE,
                         adapter=dict(use_mask_branch=True, motion_lora_rank=2), max_train_steps=3,
                         num_iterations_per_data=2, ground_truth_mask_probability="cosine",
                         checkpointing_steps=None, validation_steps=None, mixed_precision="no", report_to="none")
    train(config)
    records = [json.loads(line) for line in Path(tmp_path / "run", LOG_FILE).read_text().splitlines()]
    steps = [r for r in records if "dice" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(0 <= r["dice"] <= 1 and np.isfinite(r["mask_loss"]) for r in steps)
    assert steps[0]["ground_truth_mask"] == 1.0  # cosine: p = 1 at step 0

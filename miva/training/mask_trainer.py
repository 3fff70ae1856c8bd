"""What the trainer does differently for an adapter with a mask branch (docs/mask_branch.md#training): clips with
their masks, each batch used `num_iterations_per_data` times, and the mask step (`mask_training.mask_step_loss`)
with a per-run `MaskGuidance` that the training call carries through the backward."""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler

from ..attention_processors.mask_guidance import MaskGuidance
from .data import ClipDataset, collate_clips
from .mask_data import MaskClipDataset, RepeatedBatchSampler
from .mask_training import ground_truth_probability, mask_step_loss

__all__ = ["MaskBranchMixin", "collate_mask_clips"]


def collate_mask_clips(batch) -> dict:
    """`collate_clips` plus `"masks"`: `(B, F, H, W)`."""
    return {**collate_clips(batch), "masks": torch.stack([item["masks"] for item in batch])}


class MaskBranchMixin:
    """Mixed into `MIVATrainer`; without a mask branch every hook returns the plain trainer's choice."""

    mask_guidance: MaskGuidance | None = None  # the training call's (`miva_call(..., mask_guidance=...)`)
    step_logs: dict[str, float] = {}

    def mask_data(self) -> tuple[type, object, dict]:
        """`(dataset class, collate_fn, extra dataset kwargs)`; sets up the run's `MaskGuidance`."""
        config = self.config
        if not config.adapter.use_mask_branch:
            return ClipDataset, collate_clips, {}
        self.mask_guidance = MaskGuidance((config.adapter_name,), config.train_batch_size, config.num_frames)
        return MaskClipDataset, collate_mask_clips, {"mask_root": config.mask_root}

    def batching(self, sampler) -> dict:
        """The DataLoader's batching arguments: each batch `num_iterations_per_data` times in a row."""
        config = self.config
        if config.num_iterations_per_data == 1:
            return {"batch_size": config.train_batch_size, "sampler": sampler}
        batches = BatchSampler(sampler, config.train_batch_size, drop_last=False)
        return {"batch_sampler": RepeatedBatchSampler(batches, config.num_iterations_per_data)}

    def mask_step_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The mask branch's micro-batch loss; its Dice score and mask loss go to `step_logs` (logged per step)."""
        from .trainer_parts import encode_frames

        config = self.config
        p = ground_truth_probability(config.ground_truth_mask_probability, self.global_step, config.max_train_steps)
        use_ground_truth = bool(torch.rand(1, generator=generator, device=generator.device).item() < p)
        latents = encode_frames(self.vae, batch["pixel_values"], generator)
        loss, logs = mask_step_loss(
            self.unet_model, self.vae, self.mask_guidance, latents=latents, masks=batch["masks"].to(latents.device),
            prompt_embeds=self.prompt_embeds(batch["prompts"]), noise_scheduler=self.noise_scheduler,
            generator=generator, use_ground_truth=use_ground_truth, dice_weight=config.mask_dice_loss_weight,
            timestep_range=config.timestep_range)
        self.step_logs = {**logs, "ground_truth_mask": float(use_ground_truth)}
        return loss

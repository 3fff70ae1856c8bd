"""The output side of a training run (a `MIVATrainer` mixin): the step log, validation GIFs and the final save
as a native adapter folder (`split_ckpt`) or a full UNet file, pushed to the Hub when asked."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpointing import EMBEDS_FILE, LOG_FILE
from .validation import run_validation

__all__ = ["ADAPTER_FOLDER", "FULL_UNET_FILE", "TrainerOutputsMixin"]

ADAPTER_FOLDER = "adapter"
FULL_UNET_FILE = "model.safetensors"


class TrainerOutputsMixin:
    """Uses the trainer's `accelerator`, `config`, `unet` (unwrapped), `text_encoder`, `tokenizer`, `learned_token`,
    `output_dir`, `global_step`, `last_gif`, `last_gif_step` and `logger`."""

    def _log_step(self, epoch: int, loss: float, seconds: float, lr: float) -> None:
        extra = getattr(self, "step_logs", {})  # e.g. the mask branch's Dice score (mask_trainer.py)
        self.accelerator.log({"loss": loss, "lr": lr, **extra}, step=self.global_step)
        if self.accelerator.is_main_process:
            record = dict(step=self.global_step, epoch=epoch, loss=loss, lr=lr, step_time=seconds, **extra)
            with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------------- validation, saving
    def validation_pipeline(self):
        """The pipeline validation samples with: a `MIVAPipeline` over the training components (UNet in training)."""
        from ..pipelines.pipeline_miva import MIVAPipeline

        return MIVAPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                            motion_adapter=None, scheduler=self.scheduler, feature_extractor=None, image_encoder=None)

    def validate(self) -> list[Path]:
        """Validation GIFs for the current step (main process; the others wait)."""
        acc = self.accelerator
        gifs = []
        if acc.is_main_process:
            gifs = run_validation(self)
            self.last_gif = gifs[-1] if gifs else self.last_gif
        self.last_gif_step = self.global_step
        acc.wait_for_everyone()
        return gifs

    def final_path(self) -> Path:
        return self.output_dir / (ADAPTER_FOLDER if self.config.split_ckpt else FULL_UNET_FILE)

    def save_final(self) -> Path:
        """Native adapter folder (`split_ckpt`) or the whole UNet in one safetensors file; push when asked."""
        acc, config = self.accelerator, self.config
        acc.wait_for_everyone()
        path = self.final_path()
        if acc.is_main_process:
            text_encoder = self.text_encoder if self.learned_token else None
            if config.split_ckpt:
                from ..loaders.adapter_io import save_miva_adapter

                path = Path(
                    save_miva_adapter(
                        self.unet,
                        config.adapter_name,
                        path,
                        text_encoder=text_encoder,
                        tokenizer=self.tokenizer if text_encoder is not None else None,
                        sample_gif=self.last_gif,
                        base_model=config.adapter.base_model,
                    )
                )
            else:
                self._save_full_unet(path)
            self.logger.info(f"saved {path}")
            if config.push_to_hub:
                from ..loaders.adapter_io import push_miva_adapter_to_hub

                push_miva_adapter_to_hub(
                    self.unet,
                    config.adapter_name,
                    config.hub_model_id,
                    private=config.hub_private,
                    sample_gif=self.last_gif,
                    text_encoder=text_encoder,
                    tokenizer=self.tokenizer if text_encoder else None,
                    base_model=config.adapter.base_model,
                    commit_message=f"MIVA adapter {config.adapter_name}, step {self.global_step}",
                )
                self.logger.info(f"pushed adapter {config.adapter_name!r} to {config.hub_model_id}")
        acc.wait_for_everyone()
        return path

    def _save_full_unet(self, path: Path) -> None:
        """Research 'full' format: the whole UNet state dict (base in the training weight dtype, adapter float32),
        with `adapter_config.json` and the learned word (`learned_embeds.safetensors`) beside it."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "adapter_name": self.config.adapter_name})
        self.config.adapter.save_pretrained(path.parent)
        if self.learned_token:
            save_file(self.learned_token.state_dict(), str(path.parent / EMBEDS_FILE))

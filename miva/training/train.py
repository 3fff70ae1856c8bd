"""Few-shot MIVA adapter training with accelerate: one GPU, a node of GPUs (DDP), or CPU processes (gloo).

    python -m miva.training.train --config train.yaml [--resume latest] [--set key=value ...]
    accelerate launch -m miva.training.train --config train.yaml
    python -m miva.training.train --tiny --set output_dir=outputs/tiny      # offline smoke run, synthetic clips

The objective, what trains and the defaults follow the research trainer (docs/research.md#training). Exact
resume: every random draw of a step comes from a generator seeded by `(seed, micro-batch counter, process)`, the
data order from `(seed, epoch)` and each clip's sampling from `(seed, epoch, index)`; a checkpoint restores the
adapter, the optimiser and the global step, and the data loader skips the batches already seen.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..attention_processors import add_miva_adapter, install_miva_processors, miva_call, set_miva_adapters
from . import checkpointing as ckpt
from .checkpointing import LOG_FILE  # noqa: F401  (public name)
from .mask_trainer import MaskBranchMixin
from .outputs import ADAPTER_FOLDER, FULL_UNET_FILE, TrainerOutputsMixin  # noqa: F401  (public names)
from .train_config import TrainConfig
from .trainer_parts import (
    LearnedToken,
    SeededShuffleSampler,
    check_prompts_contain,
    checkpoint_motion_modules,
    encode_frames,
    encode_prompts,
    i2v_epsilon_loss,
    load_components,
    select_trainable,
    step_generator,
    to_unet_motion,
)

__all__ = ["MIVATrainer", "SeededShuffleSampler", "main", "train"]

class MIVATrainer(ckpt.CheckpointMixin, TrainerOutputsMixin, MaskBranchMixin):
    """One training run. `MIVATrainer(config).train()` returns the saved adapter folder (or full UNet file).

    `components` may hold ready base components (`unet` (2-D + `motion_adapter`, or a `UNetMotionModel`), `vae`,
    `text_encoder`, `tokenizer`, `scheduler`, optional `noise_scheduler`) instead of loading them from the config.
    After `setup()`, `unet` (unwrapped), `trainable` (`{name: parameter}`) and `learned_token` are inspectable.
    """

    def __init__(self, config: TrainConfig, components: dict | None = None):
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._components = components
        self.global_step = 0
        self.last_gif: Path | None = None
        self.last_gif_step: int | None = None
        self._is_setup = False

    # --------------------------------------------------------------------------------------------------- setup
    def _make_accelerator(self) -> None:
        """The run's `Accelerator`: precision (fp16 falls back to float32 without a GPU), trackers, project dir."""
        from accelerate import Accelerator
        from accelerate.logging import get_logger
        from accelerate.state import AcceleratorState
        from accelerate.utils import ProjectConfiguration, is_tensorboard_available

        config = self.config
        mixed = config.mixed_precision
        notes = []
        if mixed == "fp16" and not torch.cuda.is_available():
            notes.append("mixed_precision='fp16' needs a GPU; training in float32 (mixed_precision='no')")
            mixed = "no"
        log_with = config.report_to
        if log_with == "auto":
            log_with = "tensorboard" if is_tensorboard_available() else None
        elif log_with == "none":
            log_with = None
        elif log_with == "tensorboard" and not is_tensorboard_available():
            raise ValueError(
                "report_to='tensorboard' but tensorboard is not installed: pip install tensorboard, or "
                "set report_to: none"
            )
        state = AcceleratorState._shared_state
        if state.get("_mixed_precision") not in (None, mixed):
            # An earlier run in this process (a notebook, tests) fixed the global precision; the process group
            # (PartialState) is kept.
            AcceleratorState._reset_state(reset_partial_state=False)
        project = ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs"))
        # Under torchrun (`accelerate launch --multi_gpu`) on a machine without an accelerator, accelerate would run
        # N independent single processes unless told to use the CPU: then the processes train together over gloo.
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        has_accelerator = (
            torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
        )
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=mixed,
            log_with=log_with,
            project_config=project,
            cpu=world_size > 1 and not has_accelerator,
        )
        if world_size > 1 and self.accelerator.num_processes != world_size:
            raise RuntimeError(
                f"launched as {world_size} processes but accelerate set up "
                f"{self.accelerator.num_processes}; check the accelerate launch options"
            )
        self.logger = get_logger("miva.training", log_level="INFO")
        for note in notes:
            self.logger.warning(note)

    def setup(self) -> None:
        """Build models, data, optimiser; prepare them with accelerate; restore a checkpoint when resuming."""
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        config = self.config
        self._make_accelerator()
        acc = self.accelerator
        set_seed(config.seed)  # adapter initialisation (LoRA `down`) is then identical on every process and run
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config.to_yaml(self.output_dir / "train_config.yaml")

        parts = dict(self._components) if self._components is not None else self._load_components()
        self.vae, self.text_encoder, self.tokenizer = parts["vae"], parts["text_encoder"], parts["tokenizer"]
        self.noise_scheduler = parts.get("noise_scheduler") or DDPMScheduler.from_config(parts["scheduler"].config)
        self.scheduler = parts["scheduler"]
        unet = self._build_model(parts)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.learned_token = None
        if config.word_to_learn:
            self.learned_token = LearnedToken(
                self.tokenizer, self.text_encoder, config.word_to_learn, config.initializer_token
            )
        self.trainable = self._select_trainable(unet) if config.parts else {}
        if config.oa_bin_id is not None:
            self._apply_orthogonal_bins(unet)
        self.trainable = {k: p for k, p in self.trainable.items() if p.requires_grad}

        # Frozen weights in the compute dtype, trainable ones in float32 (diffusers' LoRA-training convention).
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        unet.to(acc.device, dtype=self.weight_dtype)
        for param in self.trainable.values():
            param.data = param.data.float()
        self.vae.to(acc.device, dtype=self.weight_dtype).eval()
        te_dtype = torch.float32 if self.learned_token else self.weight_dtype
        self.text_encoder.to(acc.device, dtype=te_dtype).eval()
        if config.gradient_checkpointing:
            self._checkpoint_activations(unet)
        unet.train()
        self.unet = unet

        self._setup_data()
        params = list(self.trainable.values()) + ([self.learned_token.weight] if self.learned_token else [])
        self.params = params
        self.optimizer = self._make_optimizer(params)
        from diffusers.optimization import get_scheduler

        # As diffusers' scripts: the prepared scheduler steps once per process, so the step counts scale with them.
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=self.optimizer,
                                     num_warmup_steps=config.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=config.max_train_steps * acc.num_processes,
                                     num_cycles=config.lr_num_cycles)
        models = [unet] + ([self.text_encoder] if self.learned_token else [])
        prepared = acc.prepare(*models, self.optimizer, self.dataloader, lr_scheduler)
        self.unet_model = prepared[0]
        self.text_model = prepared[1] if self.learned_token else self.text_encoder
        self.optimizer, self.dataloader, self.lr_scheduler = prepared[-3], prepared[-2], prepared[-1]
        self.models = prepared[: len(models)]
        acc.register_save_state_pre_hook(self._save_model_hook)
        acc.register_load_state_pre_hook(self._load_model_hook)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._resume()
        if acc.is_main_process:
            flat = {
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in config.to_dict().items()
            }
            acc.init_trackers("miva-train", config=flat)
        self._is_setup = True

    # What differs per backbone (`miva.backbones.wan.trainer.WanTrainer` overrides these four and `prompt_embeds`).
    def _load_components(self) -> dict:
        return load_components(self.config)

    def _build_model(self, parts: dict):
        """The denoiser with the adapter being trained installed and active."""
        unet = to_unet_motion(parts["unet"], parts.get("motion_adapter"))
        install_miva_processors(unet)
        add_miva_adapter(unet, self.config.adapter_name, self.config.adapter)
        set_miva_adapters(unet, [self.config.adapter_name])
        return unet

    def _select_trainable(self, unet) -> dict:
        return select_trainable(unet, self.config.adapter_name, self.config.parts)

    def _checkpoint_activations(self, unet) -> None:
        unet.enable_gradient_checkpointing()
        checkpoint_motion_modules(unet)

    def step_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """One micro-batch's loss: the research epsilon objective on the prepared (wrapped) UNet."""
        if self.mask_guidance is not None:  # the mask branch's step (mask_trainer.py)
            return self.mask_step_loss(batch, generator)
        latents = encode_frames(self.vae, batch["pixel_values"], generator)
        return i2v_epsilon_loss(self.unet_model, latents, self.prompt_embeds(batch["prompts"]), self.noise_scheduler,
                                generator, self.config.timestep_range)

    def _apply_orthogonal_bins(self, unet) -> None:
        """LoRA `up` := the bin's orthonormal columns, frozen; `down` := 0 (trains only if its part was selected)."""
        from .orthogonal import apply_orthogonal_bins, load_bases_library

        bases = load_bases_library(self.config.oa_bases_path)
        apply_orthogonal_bins(unet, self.config.adapter_name, bases, self.config.oa_bin_id)
        for name, param in unet.named_parameters():
            if param.requires_grad and name not in self.trainable:
                param.requires_grad_(False)

    def _setup_data(self) -> None:
        config, acc = self.config, self.accelerator
        root = config.video_root
        if root is None:  # only reachable with tiny: true
            root = self._synthetic_clips()
        rate = (
            tuple(config.sample_frame_rate) if isinstance(config.sample_frame_rate, list) else config.sample_frame_rate
        )
        dataset_class, collate, extra = self.mask_data()  # the plain ClipDataset without a mask branch
        self.dataset = dataset_class(
            root,
            prompt=config.prompt,
            num_frames=config.num_frames,
            sample_frame_rate=rate,
            width=config.width,
            height=config.height,
            random_flip=config.random_flip,
            seed=config.seed,
            **extra,
        )
        if self.learned_token:
            check_prompts_contain(self.tokenizer, self.dataset.prompts, config.word_to_learn)
        self.sampler = SeededShuffleSampler(len(self.dataset), config.seed)
        self.dataloader = DataLoader(
            self.dataset,
            **self.batching(self.sampler),
            collate_fn=collate,
            num_workers=config.dataloader_num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        acc.wait_for_everyone()

    def _synthetic_clips(self) -> Path:
        from ..atomic import atomic_folder
        from .synthetic import write_synthetic_dataset

        folder = self.output_dir / "synthetic_clips"
        rate = self.config.sample_frame_rate
        needed = (self.config.num_frames - 1) * (max(rate) if isinstance(rate, list) else rate) + 1
        if self.accelerator.is_main_process and not folder.is_dir():
            self.logger.info(f"video_root is not set: writing 10 synthetic clips to {folder}")
            with atomic_folder(folder) as tmp:  # a run killed while writing must not leave a partial dataset
                write_synthetic_dataset(
                    tmp,
                    num_clips=10,
                    num_frames=max(24, needed),
                    height=self.config.height,
                    width=self.config.width,
                    prompt=self.config.prompt or "a photo of clouds moving",
                    fmt="gif",
                    seed=self.config.seed,
                )
        self.accelerator.wait_for_everyone()
        return folder

    def _make_optimizer(self, params):
        config, acc = self.config, self.accelerator
        optimizer_class = torch.optim.AdamW
        if config.use_8bit_adam:
            if acc.device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
                import bitsandbytes as bnb

                optimizer_class = bnb.optim.AdamW8bit
            else:
                self.logger.info("use_8bit_adam: bitsandbytes with CUDA is not available; using torch.optim.AdamW")
        return optimizer_class(
            params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )

    # ---------------------------------------------------------------------------------------------- training
    def prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        """`(B, tokens, D)`; re-encoded with gradients when a word is learned, else cached per prompt."""
        device = self.accelerator.device
        if self.learned_token:
            return encode_prompts(self.tokenizer, self.text_model, prompts, device)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                embeds = encode_prompts(self.tokenizer, self.text_encoder, missing, device)
            self._prompt_cache.update(zip(missing, embeds[:, None]))
        return torch.cat([self._prompt_cache[p] for p in prompts])

    def train(self) -> Path:
        """Run to `max_train_steps`; save the adapter (and validation GIFs); return the adapter path."""
        if not self._is_setup:
            self.setup()
        from accelerate.data_loader import skip_first_batches
        from tqdm.auto import tqdm

        config, acc = self.config, self.accelerator
        batches = len(self.dataloader)
        steps_per_epoch = math.ceil(batches / config.gradient_accumulation_steps)
        num_epochs = math.ceil(config.max_train_steps / steps_per_epoch)
        first_epoch = self.global_step // steps_per_epoch
        skip = (self.global_step % steps_per_epoch) * config.gradient_accumulation_steps
        progress = tqdm(
            total=config.max_train_steps, initial=self.global_step, desc="Steps", disable=not acc.is_local_main_process
        )
        running, epoch, tick = 0.0, first_epoch, time.perf_counter()
        for epoch in range(first_epoch, num_epochs):
            if self.global_step >= config.max_train_steps:
                break
            self.dataset.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            self.dataloader.set_epoch(epoch)
            start = skip if epoch == first_epoch else 0
            loader = skip_first_batches(self.dataloader, start) if start else self.dataloader
            for index, batch in enumerate(loader, start=start):
                with acc.accumulate(*self.models), miva_call(self.unet, mask_guidance=self.mask_guidance):  # through backward
                    generator = step_generator(config.seed, epoch * batches + index, acc.process_index, acc.device)
                    with acc.autocast():
                        loss = self.step_loss(batch, generator)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(self.params, config.max_grad_norm)
                    step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (logged)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.learned_token and acc.sync_gradients:
                        self.learned_token.restore_frozen_rows()
                running += acc.gather(loss.detach().reshape(1)).mean().item() / config.gradient_accumulation_steps
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                now = time.perf_counter()
                self._log_step(epoch, running, now - tick, step_lr)
                progress.update(1)
                progress.set_postfix(loss=f"{running:.4f}")
                running, tick = 0.0, now
                if config.checkpointing_steps and self.global_step % config.checkpointing_steps == 0:
                    self.save_checkpoint(epoch)
                if config.validation_steps and self.global_step % config.validation_steps == 0:
                    self.validate()
                if self.global_step >= config.max_train_steps:
                    break
        progress.close()
        if config.validation_steps and self.last_gif_step != self.global_step:
            self.validate()
        path = self.save_final()
        acc.end_training()
        return path

def train(config: TrainConfig, components: dict | None = None) -> Path:
    """Train one MIVA adapter as `config` says; returns the adapter folder (or the full UNet file). The base decides
    the trainer: the one its backbone declares (`miva.backbones.declared`; a Wan2.1 base: `WanTrainer`)."""
    from ..backbones.declared import UNET, WAN

    module, _, name = (WAN if config.is_wan else UNET).trainer.partition(":")
    trainer_class = getattr(importlib.import_module(module), name)
    return trainer_class(config, components=components).train()


# --------------------------------------------------------------------------------------------------------- CLI
if __name__ == "__main__":  # `python -m miva.training.train` / `accelerate launch -m ...`: the CLI is training.command
    from miva.training.command import main

    sys.exit(main())

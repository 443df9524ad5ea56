"""Callbacks decide when and where images go; the module knows how to make them (log_images)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from rich.progress import ProgressColumn
from rich.text import Text

from spurgen.files import save_png_atomic
from spurgen.pipeline import image_grid


class SampleImages(L.Callback):
    """Every `every_n_steps` steps (0: never) and at the end of training: sample from the instance prompt
    with fixed seeds, save a grid to samples/, and send it to W&B when that logger is on."""

    def __init__(
        self,
        out_dir: str | Path,
        prompt: str,
        every_n_steps: int,
        sampling: dict | None = None,
        negative_prompt: str | None = None,
        seed: int = 0,
    ):
        """sampling: num_samples, steps, guidance (and resolution; null: the model's, read at fit start)."""
        sampling = dict(sampling or {})
        self.out_dir = Path(out_dir)
        self.prompt, self.every_n_steps = prompt, int(every_n_steps)
        self.num_samples = int(sampling.get("num_samples", 4))
        self.steps, self.guidance = int(sampling.get("steps", 25)), float(sampling.get("guidance", 7.5))
        self.resolution = sampling.get("resolution")
        self.negative_prompt = negative_prompt
        self.seeds = [seed * 10_000 + i for i in range(self.num_samples)]  # validation has its own seeds
        self.meta: dict = {}

    def setup(self, trainer, module, stage: str) -> None:
        self.resolution = int(self.resolution or module.parts.resolution)
        self.meta = {"model_is_tiny_random": bool(module.parts.is_tiny_random)}

    def _sample(self, trainer: L.Trainer, module, name: str) -> None:
        if self.num_samples == 0 or not trainer.is_global_zero:
            return
        images = module.log_images(
            [self.prompt] * self.num_samples,
            self.seeds,
            self.steps,
            self.guidance,
            self.resolution,
            self.negative_prompt,
        )
        grid = image_grid(images)
        save_png_atomic(grid, self.out_dir / f"{name}.png", {**self.meta, "prompt": self.prompt})
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    "samples/instance_prompt",
                    [grid],
                    step=trainer.global_step,
                    caption=[f"{name}: {self.prompt}"],
                )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step > 0:
            self._sample(trainer, module, f"step_{step:06d}")

    def on_train_end(self, trainer, module) -> None:
        self._sample(trainer, module, "final_grid")


class StepProgressBar(RichProgressBar):
    """Lightning's Rich progress bar labelled for a run that ends after trainer.max_steps: "train" where
    Lightning writes "Epoch 0/-2" (max_epochs is -1 then), and the rate in optimiser steps per second (the
    bar counts batches: with trainer.accumulate_grad_batches=a, a batches make one step)."""

    def _get_train_description(self, current_epoch: int) -> str:  # noqa: ARG002 - one pass, no epochs
        return "train"

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        columns[-1] = StepRateColumn(self.theme.processing_speed, int(trainer.accumulate_grad_batches or 1))
        return columns


class StepRateColumn(ProgressColumn):
    """`<rate> steps/s` from the bar's batch rate."""

    def __init__(self, style, batches_per_step: int = 1):
        self.style, self.batches_per_step = style, max(1, batches_per_step)
        super().__init__()

    def render(self, task) -> Text:
        speed = (task.speed or 0.0) / self.batches_per_step
        return Text(f"{speed:.2f} steps/s", style=self.style)

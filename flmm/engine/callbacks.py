"""Callbacks: overlays of a few validation samples every epoch (PNG, TensorBoard); plain progress lines."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from flmm.data.overlay import draw_overlay
from flmm.engine.metrics import binarize
from flmm.progress import ProgressLine, format_duration, plain_lines


class ValidationOverlays(pl.Callback):
    """Draw prediction (filled) and ground truth (white outline) for the first `n_samples` validation samples
    that rank 0 scores of the first validation split (under DDP its shard: samples 0, W, 2W, ... of W
    ranks); write `out_dir/epoch_NNN/K.png` and log them to TensorBoard."""

    def __init__(self, out_dir: str | Path, n_samples: int = 4):
        self.out_dir = Path(out_dir)
        self.n_samples = n_samples
        self._drawn = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn = 0

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if (
            dataloader_idx != 0
            or self._drawn >= self.n_samples
            or not trainer.is_global_zero
            or outputs is None
        ):
            return
        predictions = [binarize(p.detach()).cpu() for p in outputs.predictions]
        offset = 0
        for image, masks, queries in zip(batch["images"], batch["masks"], batch["queries"]):
            count = len(queries)
            if self._drawn < self.n_samples:
                overlay = draw_overlay(
                    image.permute(1, 2, 0).cpu().numpy(),
                    [p.numpy() for p in predictions[offset : offset + count]],
                    [q["expression"] for q in queries],
                    outlines=[m.cpu().numpy() for m in masks],
                )
                self._save(trainer, overlay, self._drawn)
                self._drawn += 1
            offset += count

    def _save(self, trainer: pl.Trainer, overlay, index: int) -> None:
        folder = self.out_dir / f"epoch_{trainer.current_epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        overlay.save(folder / f"{index}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                array = torch.from_numpy(np.array(overlay)).permute(2, 0, 1)
                logger.experiment.add_image(f"val_overlay/{index}", array, trainer.global_step)


class PlainProgress(pl.Callback):
    """Progress as plain lines (for runs logged to a file, see `flmm.progress`), on global rank 0 only.

    Training: a line every `every_n_steps` optimizer steps and at the last one (epoch, step / total, loss,
    samples/s, elapsed, ETA), one at every epoch end with the epoch's mean loss, and one after each
    validation with its main score per split (cIoU; AR on PNG). Evaluation (`trainer.test`): a line every
    `every_n_steps` batches.
    """

    def __init__(self, every_n_steps: int):
        self.every_n_steps = int(every_n_steps)
        self._line: ProgressLine | None = None
        self._epoch_losses: list[float] = []
        self._done = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        self._line = ProgressLine("train", total, self.every_n_steps, start_step=trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        self._epoch_losses.append(loss)
        if trainer.is_global_zero and self._line is not None:
            detail = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} loss {loss:.4f}"
            self._line.update(trainer.global_step, len(batch["images"]) * trainer.world_size, detail)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self._epoch_losses and self._line is not None:
            mean = sum(self._epoch_losses) / len(self._epoch_losses)
            elapsed = format_duration(time.perf_counter() - self._line.start_time)
            print(
                f"train epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done | mean loss {mean:.4f} "
                f"| step {trainer.global_step}/{self._line.total} | elapsed {elapsed}",
                flush=True,
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        scores = [
            f"{key.removeprefix('val/')} {float(value):.2f}"
            for key, value in sorted(trainer.callback_metrics.items())
            if key.startswith("val/") and key.endswith(("/cIoU", "/AR"))
        ]
        if scores:
            print(f"val epoch {trainer.current_epoch + 1}: " + ", ".join(scores), flush=True)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(sum(trainer.num_test_batches))
        self._line = ProgressLine("evaluate", total, self.every_n_steps)
        self._done = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._done += 1
        if trainer.is_global_zero and self._line is not None:
            self._line.update(self._done)


def progress_reporting(progress_bar: bool, every_n_steps: int) -> tuple[bool, list[pl.Callback]]:
    """(enable_progress_bar, callbacks) of a Trainer: bars on a terminal (when `progress_bar`), plain lines
    every `every_n_steps` steps when stdout is not a terminal (0: none)."""
    if plain_lines():
        return False, [PlainProgress(every_n_steps)] if every_n_steps > 0 else []
    return bool(progress_bar), []

"""Callbacks: mask overlays of a few validation samples every epoch, saved as PNG and sent to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from flmm.data.overlay import draw_overlay
from flmm.engine.metrics import binarize


class ValidationOverlays(pl.Callback):
    """Draw prediction (filled) and ground truth (white outline) for the first `n_samples` validation samples
    of the first validation split; write `out_dir/epoch_NNN/K.png` and log them to TensorBoard."""

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

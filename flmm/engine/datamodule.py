"""Lightning DataModule: the config's train and validation splits, batched for the frozen LMM."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from flmm.data.collate import collate_grounding
from flmm.data.datasets import GroundingDataset, Skipped
from flmm.data.splits import build_split_dataset
from flmm.engine.sampling import EpochMixture, EpochSampler, ShardSampler


class GroundingDataModule(pl.LightningDataModule):
    """Train: every split of `data.train_splits` under the `train` protocol, concatenated and shuffled.
    Validation: one loader per split of `data.val_splits` under `data.protocol`.

    `transform` turns an RGB image into the LMM's inputs (see `LMMAdapter.image_transform`).
    Samplers are made here, not by Lightning (run the Trainer with `use_distributed_sampler=False`): under
    DDP training shards with `EpochSampler` (fresh sentences every epoch; its position is saved in
    checkpoints by `state_dict`, so a resume continues exactly where the run stopped), evaluation with
    `ShardSampler`, which never repeats a query.
    """

    def __init__(self, data_cfg, transform: Callable[[np.ndarray], dict]):
        super().__init__()
        self.data_cfg = data_cfg
        self.transform = transform
        self.train_parts: list[GroundingDataset] = []
        self.val_sets: list[GroundingDataset] = []
        self._resume_at: tuple[int, int] | None = None

    @property
    def val_split_names(self) -> list[str]:
        return list(self.data_cfg.val_splits)

    def dataset_sizes(self) -> dict[str, int]:
        """{records name: records} of every dataset set up (those dropped when it was built included), for
        the run's skip budget (`flmm.engine.skips`)."""
        return {d.records_name: len(d) + len(d.load_skips) for d in (*self.train_parts, *self.val_sets)}

    def load_skips(self) -> list[Skipped]:
        """The records every dataset set up dropped when it was built (missing image files)."""
        return [record for d in (*self.train_parts, *self.val_sets) for record in d.load_skips]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.train_parts:
            self.train_parts = [
                build_split_dataset(self.data_cfg, s, "train", self.transform)
                for s in self.data_cfg.train_splits
            ]
        if stage in (None, "fit", "validate") and not self.val_sets:
            self.val_sets = [
                build_split_dataset(self.data_cfg, s, self.data_cfg.protocol, self.transform)
                for s in self.data_cfg.val_splits
            ]

    def _loader(self, dataset, sampler) -> DataLoader:
        workers = int(self.data_cfg.num_workers)
        return DataLoader(
            dataset,
            batch_size=int(self.data_cfg.batch_size),
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_grounding,
            persistent_workers=workers > 0,
            # A worker stuck on a file (a hung network filesystem) fails the run instead of hanging it.
            timeout=float(self.data_cfg.timeout_s) if workers > 0 else 0.0,
        )

    def train_dataloader(self) -> DataLoader:
        mixture = EpochMixture(self.train_parts)
        sampler = EpochSampler(len(mixture), seed=int(self.data_cfg.seed))
        if self._resume_at is not None:
            epoch, batches_done = self._resume_at
            sampler.set_epoch(epoch)
            sampler.resume(epoch, batches_done * int(self.data_cfg.batch_size))
        return self._loader(mixture, sampler)

    def state_dict(self) -> dict[str, int]:
        """Where the training data stands, saved in every checkpoint: `epoch` and `batches_done`, the
        batches the trainer has trained on in it (the next epoch and 0 once an epoch is done). Counted from
        the trainer's progress, not by the loader: the trainer fetches a batch ahead, workers further."""
        trainer = self.trainer
        # During a fit, whatever stage writes the checkpoint (validation, an exception included).
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "batches_done": 0}
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the training data at a checkpoint's position. Lightning restores the datamodule before it
        first asks for the train loader (and before it sets the sampler's epoch, which it does after making
        the first iterator: the epoch is set here, or a resumed run would replay epoch 0's order)."""
        if state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(dataset, ShardSampler(len(dataset))) for dataset in self.val_sets]

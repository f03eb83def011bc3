"""Lightning DataModule: the config's train and validation splits, batched for the frozen LMM."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from flmm.data.collate import collate_grounding
from flmm.data.datasets import GroundingDataset
from flmm.data.splits import build_split_dataset
from flmm.engine.sampling import EpochMixture, EpochSampler, ShardSampler


class GroundingDataModule(pl.LightningDataModule):
    """Train: every split of `data.train_splits` under the `train` protocol, concatenated and shuffled.
    Validation: one loader per split of `data.val_splits` under `data.protocol`.

    `transform` turns an RGB image into the LMM's inputs (see `LMMAdapter.image_transform`).
    Samplers are made here, not by Lightning (run the Trainer with `use_distributed_sampler=False`): under
    DDP training shards with `EpochSampler` (fresh sentences every epoch), evaluation with `ShardSampler`,
    which never repeats a query.
    """

    def __init__(self, data_cfg, transform: Callable[[np.ndarray], dict]):
        super().__init__()
        self.data_cfg = data_cfg
        self.transform = transform
        self.train_parts: list[GroundingDataset] = []
        self.val_sets: list[GroundingDataset] = []

    @property
    def val_split_names(self) -> list[str]:
        return list(self.data_cfg.val_splits)

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
        return DataLoader(
            dataset,
            batch_size=int(self.data_cfg.batch_size),
            sampler=sampler,
            num_workers=int(self.data_cfg.num_workers),
            collate_fn=collate_grounding,
            persistent_workers=int(self.data_cfg.num_workers) > 0,
        )

    def train_dataloader(self) -> DataLoader:
        mixture = EpochMixture(self.train_parts)
        return self._loader(mixture, EpochSampler(len(mixture), seed=int(self.data_cfg.seed)))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(dataset, ShardSampler(len(dataset))) for dataset in self.val_sets]

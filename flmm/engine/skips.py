"""One skip budget for a whole run: the broken records that every data worker and rank met, counted once.

Datasets run in data worker processes, on every rank, each seeing a share of the data; a budget kept there
would let each worker lose `data.max_skip_fraction` of the whole dataset (about workers x ranks times the
cap). Here the records a batch stands in for (`batch["skipped"]`, see `flmm.data.datasets.Skipped`) are
gathered from every rank in the training process, counted once per record (a broken record is met again
every epoch) against the size of its dataset, and logged as `train/skipped_records`; past the cap the run
stops with one DataError listing the first problems (and the checkpoint callbacks save where it stopped).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from flmm.data.datasets import Skipped
from flmm.data.skips import SkipBudget


def gather_skips(skipped: list[Skipped]) -> list[Skipped]:
    """Every rank's `skipped` on every rank (rank order); a collective: all ranks call it at every step.

    A count goes first, so that a step without skips (nearly all of them) costs one scalar all-reduce.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(skipped)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    count = torch.tensor([len(skipped)], device=backend_device)
    dist.all_reduce(count)
    if int(count) == 0:
        return []
    gathered: list[list[Skipped] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(skipped))
    return [record for part in gathered for record in part or []]


class RunSkipBudget:
    """Skipped records of several datasets, each capped at `max_fraction` of its size (`sizes[name]`)."""

    def __init__(self, sizes: dict[str, int], max_fraction: float):
        self.budgets = {name: SkipBudget(name, size, max_fraction) for name, size in sizes.items()}

    def add(self, skipped: list[Skipped], enforce: bool = True) -> None:
        """Count new records (a record already counted is ignored); DataError past a dataset's cap, unless
        not `enforce` (then `check()` later)."""
        for record in skipped:
            self.budgets[record.dataset].skip(record.reason, key=record.index, enforce=enforce)

    def check(self) -> None:
        for budget in self.budgets.values():
            budget.check()

    @property
    def count(self) -> int:
        return sum(budget.count for budget in self.budgets.values())

    def by_dataset(self) -> dict[str, int]:
        return {name: budget.count for name, budget in self.budgets.items()}

    def state_dict(self) -> dict:
        return {name: budget.state_dict() for name, budget in self.budgets.items()}

    def load_state_dict(self, state: dict) -> None:
        """Each dataset's count from a resumed run's `state` (a dataset it did not have starts at 0)."""
        for name, budget_state in state.items():
            if name in self.budgets:
                self.budgets[name].load_state_dict(budget_state)


class SkipCounter(pl.Callback):
    """Count the broken records of training and validation batches across workers and ranks.

    The datamodule gives `dataset_sizes()` ({name: records}) and `load_skips()` (records dropped when the
    datasets were built, counted from the start); the count is logged as `train/skipped_records`
    (0 included, so the log says that nothing was lost) and printed on rank 0 when it grows. The count is
    saved in checkpoints, so a resumed run goes on with the whole run's budget, not a fresh one.
    """

    def __init__(self, max_fraction: float):
        self.max_fraction = float(max_fraction)
        self.budget: RunSkipBudget | None = None
        self._pending: list[Skipped] = []
        self._load_skips: list[Skipped] = []
        self._restored: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        self.budget = RunSkipBudget(datamodule.dataset_sizes(), self.max_fraction)
        # Every rank built the same datasets and dropped the same records: no gather.
        self._load_skips = datamodule.load_skips()
        self.budget.add(self._load_skips)
        self._restore()

    def state_dict(self) -> dict:
        return {} if self.budget is None else {"budgets": self.budget.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict.get("budgets")
        self._restore()

    def _restore(self) -> None:
        """Apply a checkpoint's count once both it and the budget exist (Lightning may give either first);
        records dropped at load time that the resumed run did not know are counted on top."""
        if self.budget is None or self._restored is None:
            return
        self.budget.load_state_dict(self._restored)
        self.budget.add(self._load_skips)
        self._restored = None

    def _count(self, trainer: pl.Trainer, skipped: list[Skipped]) -> None:
        before = self.budget.count
        self.budget.add(gather_skips(skipped))
        if self.budget.count > before and trainer.is_global_zero:
            counts = ", ".join(f"{name} {n}" for name, n in self.budget.by_dataset().items() if n)
            print(f"skipped records so far: {counts} (see the warnings for why)", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Every rank runs the same number of training steps, so the per-step gather is matched.
        self._count(trainer, batch["skipped"])
        pl_module.log("train/skipped_records", float(self.budget.count), rank_zero_only=True)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._pending: list[Skipped] = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        # Ranks may get one validation batch fewer than others: gather once, at the epoch's end.
        self._pending += batch["skipped"]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._count(trainer, self._pending)

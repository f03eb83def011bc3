"""Samplers: epoch-aware training shards, and evaluation shards that never repeat a sample.

Training: `EpochSampler` yields `(epoch, index)` pairs into an `EpochMixture` of datasets, so that every
epoch draws fresh sentences, and can start an epoch part-way, so that a mid-epoch resume continues with
the next untrained batch. Evaluation: torch's DistributedSampler pads the index list
by repeating samples so that every rank gets the same count; a repeated query would be counted twice in the
metrics.
`ShardSampler` gives rank r the indices r, r + W, r + 2W, ... and nothing more: ranks may get one sample
fewer, which evaluation tolerates because metrics are only reduced once, at the end.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """Indices `rank::world_size` of a dataset of `length` samples, in order, without padding."""

    def __init__(self, length: int, rank: int | None = None, world_size: int | None = None):
        default_rank, default_world = world()
        self.length = length
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class EpochMixture(Dataset):
    """Several grounding datasets as one, indexed by `(epoch, index)` pairs from `EpochSampler`.

    The epoch travels with every index, so each sample's sentence draw follows the sampler's epoch even in
    worker processes that hold a stale copy of the datasets.
    """

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = list(itertools.accumulate(len(p) for p in parts))

    def __len__(self) -> int:
        return self.offsets[-1] if self.offsets else 0

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        part = bisect.bisect_right(self.offsets, index)
        start = self.offsets[part - 1] if part else 0
        return self.parts[part].sample(index - start, epoch)


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled, rank-sharded `(epoch, index)` pairs; Lightning calls `set_epoch` before each epoch.

    `resume(epoch, skip)` makes the iteration of `epoch` start after its first `skip` indices (this rank's),
    so a run resumed from a mid-epoch checkpoint trains the rest of the epoch and nothing twice.
    """

    def __init__(self, length: int, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        default_rank, default_world = world()
        self.inner = DistributedSampler(
            range(length),
            num_replicas=default_world if world_size is None else world_size,
            rank=default_rank if rank is None else rank,
            shuffle=True,
            seed=seed,
        )
        self.epoch = 0
        self._resume_epoch, self._resume_skip = -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        """Skip the first `skip` indices of epoch `epoch` (once: a later pass over that epoch is whole)."""
        self._resume_epoch, self._resume_skip = int(epoch), int(skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip = 0
        if self.epoch == self._resume_epoch:
            skip, self._resume_epoch = self._resume_skip, -1
        return ((self.epoch, index) for index in itertools.islice(self.inner, skip, None))

    def __len__(self) -> int:
        return len(self.inner)

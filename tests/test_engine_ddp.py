"""DDP on CPU (gloo): a global batch split over 2 processes trains and validates exactly like 1 process.

The 2-process run launches tools/train.py in a subprocess with `train.strategy=ddp`: Lightning re-runs the
script for rank 1 (plain ddp inside pytest would re-run the test session). `ddp_spawn` is not used: a
transformers model unpickled in a spawned process has lost its output-capture registration (transformers
fills that registry in the model's `__init__`), so the LMM returns no hidden states there.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flmm.engine.sampling import EpochSampler, ShardSampler
from tests.conftest import (
    REPO_ROOT,
    TOY_CONFIG,
    TRAIN_STEPS,
    ToyWorld,
    build_toy_world,
    load_tool,
    logged,
    read_metrics,
    toy_overrides,
)

LOSSES = ("loss", "loss_coarse_bce", "loss_coarse_dice", "loss_refined_bce", "loss_refined_dice")
VAL_METRICS = ("cIoU", "gIoU", "P@0.5", "coarse_cIoU", "n_queries")
VAL_QUERIES = 5  # refcoco:val of the toy world: odd, so the 2 ranks get 3 and 2 queries


def batches(sampler, batch_size: int) -> list[list[tuple[int, int]]]:
    items = list(sampler)
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


@pytest.mark.parametrize("world_size,per_rank", [(2, 1), (2, 2), (3, 2)])
def test_epoch_sampler_splits_each_global_batch_over_the_ranks(world_size: int, per_rank: int):
    length = world_size * per_rank * 4
    for epoch in (0, 1):
        single = EpochSampler(length, seed=3, rank=0, world_size=1)
        ranks = [EpochSampler(length, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        global_batches = batches(single, world_size * per_rank)
        rank_batches = [batches(sampler, per_rank) for sampler in ranks]
        assert all(len(b) == len(global_batches) for b in rank_batches)
        for step, expected in enumerate(global_batches):
            split = [pair for r in range(world_size) for pair in rank_batches[r][step]]
            assert sorted(split) == sorted(expected)
            assert all(pair[0] == epoch for pair in split)
            if per_rank == 1:
                # Rank r of step k holds what one process holds at position r of step k.
                assert split == expected


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_shard_sampler_gives_every_query_to_exactly_one_rank(world_size: int):
    shards = [list(ShardSampler(VAL_QUERIES, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(VAL_QUERIES))
    assert [len(ShardSampler(VAL_QUERIES, rank=r, world_size=world_size)) for r in range(world_size)] == [
        len(s) for s in shards
    ]


@pytest.fixture(scope="module")
def ddp_world(tmp_path_factory) -> ToyWorld:
    return build_toy_world(tmp_path_factory.mktemp("ddp_world"))


def ddp_overrides(world: ToyWorld, output_dir: Path, batch_size: int) -> list[str]:
    """The toy run of tests/test_engine_train.py, validating on the whole refcoco:val split."""
    return toy_overrides(world, output_dir, f"data.batch_size={batch_size}", "train.limit_val_batches=1.0")


def test_two_processes_follow_the_one_process_trajectory(ddp_world: ToyWorld, tmp_path: Path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    assert load_tool("train").main([str(TOY_CONFIG), *ddp_overrides(ddp_world, single_dir, 2)]) == 0
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "train.py"),
        str(TOY_CONFIG),
        *ddp_overrides(ddp_world, ddp_dir, 1),
        "train.devices=2",
        "train.strategy=ddp",
        "train.accelerator=cpu",
    ]
    # One thread per process: two processes share the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr

    single, ddp = read_metrics(single_dir), read_metrics(ddp_dir)
    for name in LOSSES:
        expected, got = logged(single, f"train/{name}"), logged(ddp, f"train/{name}")
        assert [s for s, _ in got] == [s for s, _ in expected] == list(range(TRAIN_STEPS))
        np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-4, err_msg=name)
    for name in VAL_METRICS:
        [(_, expected)] = logged(single, f"val/refcoco:val/{name}")
        [(_, got)] = logged(ddp, f"val/refcoco:val/{name}")
        assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6), name
    [(_, queries)] = logged(ddp, "val/refcoco:val/n_queries")
    assert queries == VAL_QUERIES

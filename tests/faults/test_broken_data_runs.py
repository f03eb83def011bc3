"""Training over a data root with every kind of broken image file (tests/faults/conftest.py), with data
workers and under 2-process DDP: no crash mid-epoch, each broken record counted once for the whole run
(not once per worker or rank), the count in the logs, and past `data.max_skip_fraction` one clear error
with a resumable checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flmm.engine.module import read_checkpoint
from tests.conftest import REPO_ROOT, TOY_CONFIG, ToyWorld, load_tool, logged, read_metrics, toy_overrides
from tests.faults.conftest import KINDS, BadInput, break_records


@pytest.fixture(scope="module")
def broken_world(toy_world: ToyWorld, tmp_path_factory) -> tuple[ToyWorld, list[BadInput]]:
    """The toy world with one refcoco:train image file broken (or odd) per kind of the catalogue."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(toy_world.data_root, root / "data")
    records = break_records(root / "data", list(KINDS))
    return ToyWorld(root / "data", toy_world.lmm, toy_world.sam), records


def one_epoch(world: ToyWorld, output_dir: Path, *extra: str) -> list[str]:
    """One whole epoch over refcoco:train, two data workers, every step logged."""
    return toy_overrides(
        world, output_dir, "train.limit_train_batches=1.0", "data.num_workers=2", "data.timeout_s=60", *extra
    )


def broken(records: list[BadInput]) -> int:
    return sum(record.outcome == "skip" for record in records)


@pytest.fixture(scope="module")
def broken_run(broken_world, tmp_path_factory) -> Path:
    """One epoch over the broken world with two data workers; its output_dir."""
    world, _ = broken_world
    output_dir = tmp_path_factory.mktemp("broken_run") / "run"
    overrides = one_epoch(world, output_dir, "data.max_skip_fraction=0.6")
    assert load_tool("train").main([str(TOY_CONFIG), *overrides]) == 0
    return output_dir


def test_an_epoch_with_data_workers_counts_every_broken_record_once(broken_world, broken_run: Path):
    _, records = broken_world
    counts = [value for _, value in logged(read_metrics(broken_run), "train/skipped_records")]
    assert counts[-1] == broken(records) == 7
    assert counts == sorted(counts)


def test_a_resumed_run_goes_on_with_the_whole_runs_skip_count(broken_world, broken_run: Path, tmp_path):
    world, records = broken_world
    output_dir = tmp_path / "run"
    shutil.copytree(broken_run, output_dir)
    overrides = one_epoch(world, output_dir, "data.max_skip_fraction=0.6", "train.epochs=2")
    resume = ["--resume", str(output_dir / "checkpoints" / "last.ckpt"), "--allow-config-change"]
    assert load_tool("train").main([str(TOY_CONFIG), *overrides, *resume]) == 0
    counts = {value for _, value in logged(read_metrics(output_dir, version=1), "train/skipped_records")}
    assert counts == {broken(records)}  # from its first step on: the same records, counted once


def test_an_evaluation_reports_the_broken_records_of_each_split(broken_world, broken_run: Path, tmp_path):
    _, records = broken_world
    argv = ["--ckpt", str(broken_run / "checkpoints" / "last.ckpt"), "--splits", "refcoco:train"]
    argv += ["--protocol", "all-sentences", "--out", str(tmp_path / "eval"), "data.num_workers=2"]
    assert load_tool("test").main(argv) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    skipped = results["skipped"]["refcoco:train (all-sentences)"]
    # One all-sentences query per sentence on a broken image, missing files and directories included.
    assert skipped["count"] == sum(r.affects["refcoco:train"] for r in records if r.outcome == "skip")
    paths = [str(r.path) for r in records if r.outcome == "skip"]
    assert skipped["first"] and all(any(p in reason for p in paths) for reason in skipped["first"])


def test_past_the_skip_budget_the_run_stops_with_one_error_and_a_checkpoint(broken_world, tmp_path, capsys):
    world, _ = broken_world
    output_dir = tmp_path / "run"
    code = load_tool("train").main(
        [str(TOY_CONFIG), *one_epoch(world, output_dir, "data.max_skip_fraction=0.2")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "records are broken, more than data.max_skip_fraction=0.2" in err
    assert "Traceback" not in err
    stored = read_checkpoint(output_dir / "checkpoints" / "last.ckpt")  # the steps done are not lost
    assert stored["global_step"] > 0


def test_two_ddp_processes_count_the_broken_records_of_both_ranks_once(broken_world, tmp_path: Path):
    world, records = broken_world
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "train.py"),
        str(TOY_CONFIG),
        *one_epoch(world, output_dir, "data.max_skip_fraction=0.6", "data.num_workers=1"),
        "train.devices=2",
        "train.strategy=ddp",
        "train.accelerator=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [(_, count)] = logged(read_metrics(output_dir), "train/skipped_records")[-1:]
    assert count == broken(records)
    assert "skipped records so far: refcoco:train (train) 7" in result.stdout


def test_browsing_a_broken_split_counts_its_broken_records(broken_world, tmp_path: Path, capsys):
    world, records = broken_world
    argv = [str(TOY_CONFIG), "--split", "refcoco:train", "--out", str(tmp_path), "--overlays", "0"]
    argv += [f"data.root={world.data_root}", "data.synthetic=null", "data.max_skip_fraction=0.6"]
    assert load_tool("browse_data").main(argv) == 0
    expected = sum(r.affects["refcoco:train"] for r in records if r.outcome == "skip")
    assert f"{expected} broken records skipped" in capsys.readouterr().out

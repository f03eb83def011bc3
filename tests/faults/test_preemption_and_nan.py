"""Preemption and poisoned steps: a scheduler's SIGTERM writes a resumable checkpoint; an injected NaN loss
skips its step (counted), K in a row stop the run, and no checkpoint ever holds non-finite weights."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flmm.config import load_config
from flmm.engine.build import config_to_dict
from flmm.engine.datamodule import GroundingDataModule
from flmm.engine.module import GroundingModule
from flmm.errors import FlmmError
from tests.conftest import (
    REPO_ROOT,
    TOY_CONFIG,
    TRAIN_STEPS,
    ToyWorld,
    load_checkpoint,
    load_tool,
    logged,
    read_metrics,
    toy_overrides,
)


def test_sigterm_writes_a_checkpoint_the_run_resumes_from(toy_world: ToyWorld, tmp_path: Path):
    """A scheduler's preemption (SIGTERM) mid-epoch: the run saves where it is, and --resume continues."""
    output_dir = tmp_path / "run"
    overrides = toy_overrides(toy_world, output_dir, "train.epochs=20", "train.limit_train_batches=1.0")
    command = [sys.executable, str(REPO_ROOT / "tools" / "train.py"), str(TOY_CONFIG), *overrides]
    process = subprocess.Popen(
        [*command, "train.progress_every_n_steps=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("train epoch 1/20 loss") and " step 2/" in line:
            process.send_signal(signal.SIGTERM)
            break
    process.communicate(timeout=120)
    checkpoint = load_checkpoint(output_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] >= 2 and checkpoint["epoch"] == 0
    resumed = load_tool("train").main(
        [
            *command[2:],
            "train.epochs=1",
            "--resume",
            str(output_dir / "checkpoints" / "last.ckpt"),
            "--allow-config-change",
        ]
    )
    assert resumed == 0


def _train_with_nan_losses(toy_world: ToyWorld, output_dir: Path, nan_steps: set[int], *extra: str):
    """Fit the toy config in-process, its loss replaced by NaN at `nan_steps`; returns the module."""
    cfg = load_config(TOY_CONFIG, toy_overrides(toy_world, output_dir, "train.limit_val_batches=0", *extra))
    module = GroundingModule(config_to_dict(cfg))
    losses = module.image_averaged_losses

    def poisoned(*args):
        out = losses(*args)
        if module.global_step in nan_steps:
            out["loss"] = out["loss"] * float("nan")
        return out

    module.image_averaged_losses = poisoned
    trainer = load_tool("train").build_trainer(cfg, output_dir)
    trainer.fit(module, datamodule=GroundingDataModule(cfg.data, module.adapter.image_transform()))
    return module


def test_a_nan_loss_skips_its_step_and_no_weight_or_checkpoint_is_poisoned(
    toy_world: ToyWorld, tmp_path: Path
):
    module = _train_with_nan_losses(toy_world, tmp_path / "run", {1})
    assert module.global_step == TRAIN_STEPS and module._nonfinite_total == 1
    assert all(torch.isfinite(p).all() for p in module.trainable_parameters())
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    counts = logged(read_metrics(tmp_path / "run"), "train/nonfinite_steps")
    assert counts[0] == (1, 1.0) and {value for _, value in counts} == {1.0}  # first at step 1, one in all


def test_a_resumed_run_goes_on_counting_its_non_finite_steps(toy_world: ToyWorld, tmp_path: Path):
    cfg = load_config(TOY_CONFIG, toy_overrides(toy_world, tmp_path / "run"))
    stopped = GroundingModule(config_to_dict(cfg))
    stopped._nonfinite_total, stopped._nonfinite_in_a_row = 5, 2
    checkpoint = {"state_dict": stopped.state_dict()}
    stopped.on_save_checkpoint(checkpoint)
    resumed = GroundingModule(config_to_dict(cfg))
    resumed.on_load_checkpoint(checkpoint)
    assert (resumed._nonfinite_total, resumed._nonfinite_in_a_row) == (5, 2)


def test_non_finite_steps_in_a_row_stop_the_run_with_a_clear_message(toy_world: ToyWorld, tmp_path: Path):
    with pytest.raises(FlmmError, match=r"2 training steps in a row had non-finite gradients"):
        _train_with_nan_losses(toy_world, tmp_path / "run", {0, 1, 2}, "train.max_nonfinite_in_a_row=2")

"""Killed runs resume exactly: SIGKILL at several moments, then `--resume`, ends bit-identical on CPU.

One run of the toy config (3 epochs of 6 steps, checkpoints every 4 steps and at epoch ends, validation
after each epoch) is trained once without interruption and once as a chain of launches, each killed by
SIGKILL at a moment drawn from a seeded generator: in the middle of an epoch, inside a checkpoint write
at a random byte, at an epoch boundary, and by the parent at a random progress line; every relaunch is
`--resume last.ckpt`. After each kill `last.ckpt` must be readable, and at the end the trainable weights,
the optimizer state and the step count must equal the uninterrupted run's exactly. The killed chain uses a
data worker and the reference none, so the data worker's prefetching is part of what is tested.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flmm.engine.module import read_checkpoint
from tests.conftest import REPO_ROOT, TOY_CONFIG, ToyWorld, toy_overrides

EPOCHS, STEPS_PER_EPOCH, EVERY = 3, 6, 4
TOTAL = EPOCHS * STEPS_PER_EPOCH
SEED = 20261201
# One thread in every launch: the kernels then reduce in one fixed order, so results compare bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def run_overrides(world: ToyWorld, output_dir: Path, workers: int) -> list[str]:
    return toy_overrides(
        world,
        output_dir,
        f"train.epochs={EPOCHS}",
        f"train.limit_train_batches={STEPS_PER_EPOCH}",
        "train.limit_val_batches=1",
        f"train.checkpoint_every_n_steps={EVERY}",
        "train.progress_every_n_steps=1",
        f"data.num_workers={workers}",
    )


def launch(spec: str, overrides: list[str], resume: Path | None) -> subprocess.Popen:
    """tools/train.py through tests/faults/train_until_killed.py, its output piped."""
    command = [sys.executable, "-m", "tests.faults.train_until_killed", spec, str(TOY_CONFIG), *overrides]
    if resume is not None:
        command += ["--resume", str(resume)]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def kill_at_progress_line(process: subprocess.Popen, step: int) -> tuple[int, str]:
    """SIGKILL from outside as soon as the run prints its progress line of `step`."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("train epoch") and f" step {step}/" in line:
            process.send_signal(signal.SIGKILL)
            break
    code, rest = finish(process)
    return code, "".join(lines) + rest


def trainable_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in checkpoint["state_dict"].items() if isinstance(v, torch.Tensor)}


def optimizer_tensors(checkpoint: dict) -> list[torch.Tensor]:
    states = checkpoint["optimizer_states"][0]["state"]
    return [states[i][key] for i in sorted(states) for key in sorted(states[i])]


@pytest.fixture(scope="module")
def reference(toy_world: ToyWorld, tmp_path_factory) -> dict:
    """The uninterrupted run's last checkpoint."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    code, output = finish(launch("none", run_overrides(toy_world, output_dir, workers=0), None))
    assert code == 0, output[-3000:]
    return read_checkpoint(output_dir / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def killed_chain(toy_world: ToyWorld, tmp_path_factory) -> dict:
    """The same run as a chain of SIGKILLed launches; returns the kills made and the last checkpoint."""
    rng = random.Random(SEED)
    output_dir = tmp_path_factory.mktemp("killed") / "run"
    last = output_dir / "checkpoints" / "last.ckpt"
    overrides = run_overrides(toy_world, output_dir, workers=1)
    mid_epoch = rng.choice([s for s in range(EVERY + 1, STEPS_PER_EPOCH)])  # after the step checkpoint
    plan = [
        ("mid-epoch", f"step:{mid_epoch}"),
        ("inside a checkpoint write", f"write:{rng.randint(1, 2)}:{rng.randint(1, 200_000)}"),
        ("at an epoch boundary", f"step:{2 * STEPS_PER_EPOCH}"),
        ("at a random progress line", f"progress:{rng.randint(2 * STEPS_PER_EPOCH + 1, TOTAL - 1)}"),
    ]
    kills = []
    for moment, spec in plan:
        resume = last if last.is_file() else None
        if spec.startswith("progress:"):
            code, output = kill_at_progress_line(launch("none", overrides, resume), int(spec.split(":")[1]))
        else:
            code, output = finish(launch(spec, overrides, resume))
        assert code == -signal.SIGKILL, f"{moment} ({spec}): exit {code}\n{output[-3000:]}"
        stored = read_checkpoint(last)  # readable after every kill: no checkpoint is ever lost
        kills.append({"moment": moment, "spec": spec, "resumable_step": int(stored["global_step"])})
    code, output = finish(launch("none", overrides, last))
    assert code == 0, output[-3000:]
    return {"kills": kills, "last": read_checkpoint(last)}


def test_every_kill_leaves_a_resumable_last_checkpoint(killed_chain: dict):
    steps = [kill["resumable_step"] for kill in killed_chain["kills"]]
    assert len(steps) == 4 and all(0 < step < TOTAL for step in steps)
    assert steps == sorted(steps)  # each launch went on from where the previous one stopped
    assert killed_chain["kills"][2]["resumable_step"] == 2 * STEPS_PER_EPOCH  # the epoch-end checkpoint


def test_the_killed_chain_ends_bit_identical_to_the_uninterrupted_run(killed_chain: dict, reference: dict):
    last = killed_chain["last"]
    assert last["global_step"] == reference["global_step"] == TOTAL
    mine, theirs = trainable_state(last), trainable_state(reference)
    assert mine.keys() == theirs.keys()
    different = [name for name in mine if not torch.equal(mine[name], theirs[name])]
    assert different == [], f"{len(different)} of {len(mine)} tensors differ, e.g. {different[:3]}"
    assert all(torch.equal(a, b) for a, b in zip(optimizer_tensors(last), optimizer_tensors(reference)))

"""Run tools/train.py in this process and SIGKILL it at a chosen moment: a fault-injection helper.

    python -m tests.faults.train_until_killed SPEC [tools/train.py arguments ...]

SPEC is `none`, `step:N` (die just before step N starts: N optimizer steps done and every checkpoint they call
for written) or `write:K:B` (die inside the K-th checkpoint write of this process, after B bytes of it
reached the file). Without a kill the run ends normally, with tools/train.py's exit code.
"""

from __future__ import annotations

import os
import signal
import sys

import pytorch_lightning as pl

from flmm.engine import checkpoint_io
from tests.conftest import load_tool


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillBeforeStep(pl.Callback):
    """SIGKILL at the start of the batch that would make optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            die()


class DyingFile:
    """A binary file that SIGKILLs its process once `limit` bytes have been written to it."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data) -> int:
        room = self.limit - self.written
        if len(data) >= room:
            self.handle.write(bytes(data[:room]))
            self.handle.flush()
            die()
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def kill_in_write(nth: int, after_bytes: int) -> None:
    """Make the `nth` checkpoint file opened by SameFolderAtomicIO die after `after_bytes` bytes."""
    opened = 0

    def dying_open(path, mode="r", *args, **kwargs):
        nonlocal opened
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller's `with` closes it)
        opened += 1
        return DyingFile(handle, after_bytes) if opened == nth else handle

    checkpoint_io.open = dying_open


def main(argv: list[str]) -> int:
    spec, train_argv = argv[0], argv[1:]
    kind, *numbers = spec.split(":")
    train = load_tool("train")
    if kind == "step":
        build_trainer = train.build_trainer

        def with_kill(cfg, output_dir):
            trainer = build_trainer(cfg, output_dir)
            trainer.callbacks.append(KillBeforeStep(int(numbers[0])))
            return trainer

        train.build_trainer = with_kill
    elif kind == "write":
        kill_in_write(int(numbers[0]), int(numbers[1]))
    elif kind != "none":
        raise SystemExit(f"unknown SPEC {spec!r}")
    return train.main(train_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

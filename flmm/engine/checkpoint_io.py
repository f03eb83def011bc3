"""Checkpoint files that an interrupted write can never leave broken.

Lightning's default writer saves through a temporary file it then moves into place; on clusters whose
temporary folder is on another filesystem than the run (node-local /tmp, runs/ on NFS or Lustre) that move
is a copy, and a kill during it truncates `last.ckpt`. `SameFolderAtomicIO` writes the new file beside the
target, flushes it to disk (fsync) and renames it over the target in one step: the previous checkpoint
stays whole until the new one is complete, whatever byte the write is interrupted at.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class SameFolderAtomicIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose writes are temp file in the same folder + fsync + `os.replace`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        # What a killed write left behind (SIGKILL skips the clean-up below); one process writes a run's
        # checkpoints (global rank 0), so no other write of this name is in progress.
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
            stale.unlink(missing_ok=True)
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        # The rename itself reaches the disk with the folder's entry.
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
